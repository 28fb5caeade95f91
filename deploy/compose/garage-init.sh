#!/bin/sh
# One-shot set-up of the compose stack's Garage node (garage-init service):
# gives the single node its role in the layout, creates the bucket `ferry`,
# imports the fixed dev access key and lets it read and write the bucket.
# Safe to run again: each step is skipped when already done.
#
# Runs the garage CLI against the `garage` service over RPC: the node id is
# read from the shared metadata volume, the address is rpc_public_addr and
# the secret comes from GARAGE_RPC_SECRET_FILE (see garage.toml).
set -eu

key_id=$(cat /run/secrets/s3_access_key_id)
secret=$(cat /run/secrets/s3_secret_access_key)

# The garage service is healthy (its health check is `garage status`), but
# allow for a slow first start anyway.
tries=0
until garage status >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "garage-init: garage does not answer: $(garage status 2>&1 | tail -n 1)" >&2
    exit 1
  fi
  sleep 1
done

if garage status | grep -q "NO ROLE ASSIGNED"; then
  node=$(garage node id -q | cut -d@ -f1)
  garage layout assign -z dc1 -c 1G "$node"
  garage layout apply --version 1
fi
garage bucket info ferry >/dev/null 2>&1 || garage bucket create ferry
garage key info "$key_id" >/dev/null 2>&1 || garage key import --yes -n ferry-dev "$key_id" "$secret"
garage bucket allow --read --write --owner ferry --key "$key_id"
echo "garage-init: bucket ferry ready for key $key_id"
