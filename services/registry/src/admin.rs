//! `ferry-registry admin ...`: tenants, apps and keys, straight against
//! PostgreSQL.

use clap::Subcommand;
use ferry_release::Name;
use ferry_store::{ApiKey, KeyRole, Meta};

use ferry_store::rfc3339;

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Creates a tenant (a customer and its private cloud).
    CreateTenant { tenant: String },
    /// Creates an app of a tenant, e.g. `crm`.
    CreateApp {
        tenant: String,
        app: String,
        /// How the app's versions are written and ordered, for good:
        /// `semver` (2.4.1, 2.5.0-rc.1), `code` (integer version codes:
        /// 41, 42) or `dotted` (numbers separated by dots, compared one by
        /// one: 1.0, 2024.01.3).
        #[arg(long, default_value = "semver", value_parser = ["semver", "code", "dotted"])]
        versioning: String,
    },
    /// Issues an API key and prints it (only the key) on stdout. It is
    /// stored hashed: it cannot be shown again.
    IssueKey {
        /// The key's tenant; omitted only for `--role admin` and `--role
        /// publisher`.
        tenant: Option<String>,
        /// `agent` publishes and deploys for its tenant; `publisher`
        /// publishes and deploys for the `--tenants` it names (the vendor's
        /// build pipeline, publishing variants); `client` asks the gateway;
        /// `operator` sees its tenant on the dashboard; `admin` sees every
        /// tenant on the dashboard (and names no tenant).
        #[arg(long, value_parser = ["agent", "publisher", "client", "operator", "admin"])]
        role: String,
        /// With `--role publisher`: the tenants it may publish for,
        /// comma-separated (e.g. acme,globex).
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
    },
    /// Places a tenant's files on their own download location (S1-9): the
    /// releases it publishes from now on are assembled in BUCKET (under
    /// PREFIX) and their presigned URLs name PUBLIC_ENDPOINT. Releases
    /// already published keep their location. The registry's S3
    /// credentials must be able to write the bucket, and the gateway's to
    /// read it.
    SetLocation {
        tenant: String,
        /// The bucket (it must exist).
        #[arg(long, required_unless_present = "clear")]
        bucket: Option<String>,
        /// Scheme and host put in the tenant's presigned URLs, e.g.
        /// https://cdn-3.example.com (default: FERRY_S3_PUBLIC_ENDPOINT of
        /// the gateway, else its S3 endpoint).
        #[arg(long)]
        public_endpoint: Option<String>,
        /// A key prefix inside the bucket, ending in '/', e.g. tenants/acme/.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Puts the tenant's new releases back in the registry's bucket.
        #[arg(long, conflicts_with_all = ["bucket", "public_endpoint", "prefix"])]
        clear: bool,
    },
    /// Sets a tenant's rate limit at the access gateway: sustained requests
    /// per second and burst size. Running gateways apply it within seconds.
    SetLimit {
        tenant: String,
        #[arg(long)]
        per_second: f64,
        #[arg(long)]
        burst: u32,
    },
    /// Publishes a transport bundle (`ferry-agent bundle create`) carried
    /// from a private cloud that cannot reach the registry: checked whole
    /// first, nothing visible unless all of it is stored; importing twice
    /// changes nothing. Prints the result as JSON on stdout.
    Import {
        /// The bundle file.
        file: std::path::PathBuf,
        /// Bucket holding chunks and assembled files (as for serve).
        #[arg(long, env = "FERRY_S3_BUCKET")]
        s3_bucket: String,
        /// Path-style S3 addressing; `false` for virtual-hosted style.
        #[arg(long, env = "FERRY_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
        s3_path_style: bool,
    },
    /// Revokes a key, given its id (the 12 hex digits after the role) or the
    /// whole key.
    RevokeKey { key: String },
    /// Sets where a tenant's alerts about failed upgrades go (replacing what
    /// was set). With --webhook, prints the webhook's new signing secret on
    /// stdout: it is shown once.
    SetAlerts {
        tenant: String,
        /// An https:// (or http://) URL that receives signed JSON POSTs.
        #[arg(long)]
        webhook: Option<String>,
        /// An e-mail address; repeat for several.
        #[arg(long = "email")]
        emails: Vec<String>,
        /// Removes every destination (no alerts for this tenant).
        #[arg(long, conflicts_with_all = ["webhook", "emails"])]
        clear: bool,
    },
    /// Lists a tenant's latest alert messages and their delivery state
    /// (pending, delivered, failed with the last error).
    Alerts {
        tenant: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What a command produced: a line for stdout (`issue-key`'s key,
/// `set-alerts`'s secret, `alerts`'s list) and a human message for stderr.
pub struct AdminOutput {
    pub stdout: Option<String>,
    pub message: String,
}

pub async fn run(meta: &Meta, command: AdminCommand) -> anyhow::Result<AdminOutput> {
    let name = |what, s: &str| Name::parse(what, s).map_err(anyhow::Error::from);
    let message = match command {
        AdminCommand::CreateTenant { tenant } => {
            let tenant = name("tenant", &tenant)?;
            meta.create_tenant(&tenant).await?;
            format!("created tenant {tenant}")
        }
        AdminCommand::CreateApp { tenant, app, versioning } => {
            let (tenant, app) = (name("tenant", &tenant)?, name("app", &app)?);
            let versioning: ferry_release::Versioning = versioning.parse().map_err(anyhow::Error::msg)?;
            meta.create_app_with(&tenant, &app, versioning).await?;
            format!("created app {tenant}/{app} ({versioning} versioning)")
        }
        AdminCommand::IssueKey { tenant, role, tenants } => {
            let role = KeyRole::parse(&role).expect("clap restricts the role");
            if role != KeyRole::Publisher && !tenants.is_empty() {
                anyhow::bail!("--tenants is for --role publisher; a key of role {role} has one tenant");
            }
            let (key, whose) = match (role, tenant) {
                (KeyRole::Publisher, Some(tenant)) => {
                    anyhow::bail!("a publisher key names its tenants with --tenants, not {tenant:?}")
                }
                (KeyRole::Publisher, None) => {
                    if tenants.is_empty() {
                        anyhow::bail!("a publisher key needs --tenants (e.g. --tenants acme,globex)");
                    }
                    let mut names = tenants.iter().map(|t| name("tenant", t.trim())).collect::<Result<Vec<_>, _>>()?;
                    names.sort();
                    names.dedup();
                    let key = meta.issue_publisher_key(&names).await?;
                    let list = names.iter().map(Name::as_str).collect::<Vec<_>>().join(", ");
                    (key, format!("tenants {list}"))
                }
                (KeyRole::Admin, None) => (meta.issue_admin_key().await?, "every tenant".to_owned()),
                (KeyRole::Admin, Some(tenant)) => {
                    anyhow::bail!("an admin key sees every tenant and names none: drop {tenant:?}")
                }
                (_, None) => {
                    anyhow::bail!("a key of role {role} belongs to a tenant: name it (issue-key TENANT --role {role})")
                }
                (_, Some(tenant)) => {
                    let tenant = name("tenant", &tenant)?;
                    (meta.issue_key(&tenant, role).await?, format!("tenant {tenant}"))
                }
            };
            return Ok(AdminOutput {
                stdout: Some(key.token()),
                message: format!(
                    "issued {role} key {id} for {whose}; revoke it with `ferry-registry admin revoke-key {id}`",
                    id = key.id
                ),
            });
        }
        AdminCommand::Import { file, s3_bucket, s3_path_style } => {
            let blobs = ferry_store::Blobs::from_env(&s3_bucket, s3_path_style).await.map_err(anyhow::Error::msg)?;
            // No collector, alerts or patch workers of its own: the serving
            // replicas make the new release's patches.
            let settings = crate::RegistrySettings { gc_interval: None, alerts: None, ..Default::default() };
            let registry = crate::Registry::with_settings(meta.clone(), blobs, settings);
            let s = crate::import::import_bundle(&registry, &file).await?;
            let state = match (s.created, s.deployed) {
                (true, true) => "published and deployed",
                (true, false) => "published",
                (false, true) => "already published; deployed",
                (false, false) => "already published; nothing changed",
            };
            let message = format!(
                "imported {}: {}/{} {}: {state}; {} chunk(s) stored ({} bytes)",
                file.display(),
                s.tenant,
                s.app,
                s.version,
                s.chunks_stored,
                s.bytes_stored
            );
            return Ok(AdminOutput { stdout: Some(serde_json::to_string(&s)?), message });
        }
        AdminCommand::SetLimit { tenant, per_second, burst } => {
            let tenant = name("tenant", &tenant)?;
            if !(per_second.is_finite() && per_second > 0.0) {
                anyhow::bail!("--per-second must be a positive number, got {per_second}");
            }
            if burst == 0 {
                anyhow::bail!("--burst must be at least 1");
            }
            meta.set_limit(&tenant, per_second, burst).await?;
            format!("tenant {tenant} may make {per_second} requests per second, bursts of {burst}")
        }
        AdminCommand::SetLocation { tenant, bucket, public_endpoint, prefix, clear } => {
            let tenant = name("tenant", &tenant)?;
            if clear {
                meta.clear_location(&tenant).await?;
                format!("new releases of tenant {tenant} go to the registry's bucket")
            } else {
                let bucket = bucket.expect("clap requires --bucket without --clear");
                // Validated there, naming the flag at fault.
                let at = meta.set_location(&tenant, &bucket, &prefix, public_endpoint.as_deref()).await?;
                format!(
                    "new releases of tenant {tenant} go to s3://{}/{}files/, linked through {}; releases already \
                     published stay where they are",
                    at.bucket,
                    at.prefix,
                    at.public_endpoint.as_deref().unwrap_or("the gateway's public endpoint")
                )
            }
        }
        AdminCommand::RevokeKey { key } => {
            let id = ApiKey::parse(&key).map(|k| k.id).unwrap_or(key);
            meta.revoke_key(&id).await?;
            format!("revoked key {id}")
        }
        AdminCommand::SetAlerts { tenant, webhook, emails, clear } => {
            let tenant = name("tenant", &tenant)?;
            if !clear && webhook.is_none() && emails.is_empty() {
                anyhow::bail!("give --webhook URL and/or --email ADDRESS, or --clear");
            }
            if let Some(url) = &webhook {
                ferry_alerts::validate_webhook_url(url).map_err(|e| anyhow::anyhow!("--webhook: {e}"))?;
            }
            for email in &emails {
                ferry_alerts::validate_email(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            }
            let secret = ferry_alerts::set_targets(meta, &tenant, webhook.as_deref(), &emails, clear).await?;
            if clear {
                format!("tenant {tenant} gets no alerts")
            } else {
                let message = format!(
                    "alerts of tenant {tenant} go to {}{}",
                    webhook.iter().chain(&emails).cloned().collect::<Vec<_>>().join(", "),
                    if secret.is_some() { "; the webhook signing secret is on stdout, shown once" } else { "" }
                );
                return Ok(AdminOutput { stdout: secret, message });
            }
        }
        AdminCommand::Alerts { tenant, limit, json } => {
            let tenant = name("tenant", &tenant)?;
            let rows = ferry_alerts::deliveries(meta, &tenant, limit.clamp(1, 10_000)).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(if json {
                    serde_json::json!({
                        "id": r.id, "app": r.app, "version": r.version, "kind": r.kind, "channel": r.channel,
                        "destination": r.destination, "status": r.status, "attempts": r.attempts,
                        "last_error": r.last_error, "created_at": rfc3339(r.created_at),
                        "delivered_at": r.delivered_at.map(rfc3339),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}\t{}\t{}/{}\t{}\t{} {}\t{} after {} attempt(s){}",
                        r.id,
                        rfc3339(r.created_at),
                        r.app,
                        r.version,
                        r.kind,
                        r.channel,
                        r.destination,
                        r.status,
                        r.attempts,
                        r.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                });
            }
            return Ok(AdminOutput {
                stdout: (!out.is_empty()).then(|| out.join("\n")),
                message: format!("{} alert message(s) of tenant {tenant}", rows.len()),
            });
        }
    };
    Ok(AdminOutput { stdout: None, message })
}
