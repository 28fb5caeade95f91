//! `ferry-registry admin ...`: tenants, apps and keys, straight against
//! PostgreSQL.

use clap::Subcommand;
use ferry_release::Name;
use ferry_store::{ApiKey, KeyRole, Meta};

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Creates a tenant (a customer and its private cloud).
    CreateTenant { tenant: String },
    /// Creates an app of a tenant, e.g. `crm`.
    CreateApp { tenant: String, app: String },
    /// Issues an API key and prints it (only the key) on stdout. It is
    /// stored hashed: it cannot be shown again.
    IssueKey {
        tenant: String,
        /// `agent` publishes and deploys; `client` asks the gateway.
        #[arg(long, value_parser = ["agent", "client"])]
        role: String,
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
    /// Revokes a key, given its id (the 12 hex digits after the role) or the
    /// whole key.
    RevokeKey { key: String },
}

/// What a command produced: a line for stdout (only `issue-key`) and a
/// human message for stderr.
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
        AdminCommand::CreateApp { tenant, app } => {
            let (tenant, app) = (name("tenant", &tenant)?, name("app", &app)?);
            meta.create_app(&tenant, &app).await?;
            format!("created app {tenant}/{app}")
        }
        AdminCommand::IssueKey { tenant, role } => {
            let tenant = name("tenant", &tenant)?;
            let role = KeyRole::parse(&role).expect("clap restricts the role");
            let key = meta.issue_key(&tenant, role).await?;
            return Ok(AdminOutput {
                stdout: Some(key.token()),
                message: format!(
                    "issued {role} key {id} for tenant {tenant}; revoke it with `ferry-registry admin revoke-key {id}`",
                    id = key.id
                ),
            });
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
        AdminCommand::RevokeKey { key } => {
            let id = ApiKey::parse(&key).map(|k| k.id).unwrap_or(key);
            meta.revoke_key(&id).await?;
            format!("revoked key {id}")
        }
    };
    Ok(AdminOutput { stdout: None, message })
}
