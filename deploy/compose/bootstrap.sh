#!/bin/bash
# One-shot set-up of the compose stack's demo data (bootstrap service), run
# once the registry is healthy (so the schema is migrated): tenant `demo`,
# its app `crm`, and three keys written to the ferry-keys volume:
#   /var/lib/ferry/keys/agent.key    for `docker compose --profile agent run --rm agent`
#   /var/lib/ferry/keys/client.key   for the gateway (/v1/check ...)
#   /var/lib/ferry/keys/admin.key    for the operator dashboard (http://localhost:9090)
# Keys are stored hashed in PostgreSQL and shown only once, so they are
# written to files (mode 0600, owner 65532), never to the log.
# Safe to run again: with all three files present it does nothing.
set -euo pipefail

keys=/var/lib/ferry/keys
if [ -s "$keys/agent.key" ] && [ -s "$keys/client.key" ] && [ -s "$keys/admin.key" ]; then
  echo "bootstrap: demo tenant and keys already exist in $keys"
  exit 0
fi
umask 077
mkdir -p "$keys"

# Runs an admin command; a name that already exists is not an error.
once() {
  local out
  if ! out=$("$@" 2>&1); then
    if grep -q "already exists" <<<"$out"; then
      echo "bootstrap: $out"
      return 0
    fi
    echo "$out" >&2
    return 1
  fi
  echo "bootstrap: $out"
}

# Writes the key an issue-key command prints (stdout only) to a file.
issue() {
  local file=$1
  shift
  local key
  key=$("$@")
  printf '%s' "$key" >"$keys/$file.tmp"
  mv "$keys/$file.tmp" "$keys/$file"
}

once ferry-registry admin create-tenant demo
once ferry-registry admin create-app demo crm
issue agent.key ferry-registry admin issue-key demo --role agent
issue client.key ferry-registry admin issue-key demo --role client
issue admin.key ferry-registry admin issue-key --role admin
echo "bootstrap: tenant demo, app crm; keys in $keys (agent.key, client.key, admin.key)"
