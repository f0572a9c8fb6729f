//! `flowline-auth`: development tokens and API keys.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use flowline_access::dev::{Claims, SigningKey};
use flowline_access::{ApiKeyStore, Role};

/// Makes development signing keys and tokens, and creates, lists and revokes API keys.
///
/// Tokens are signed with the HS256 key of a JWKS file (the one the services read through
/// AUTH_JWKS_FILE); API key commands write to the database of DATABASE_URL directly, so the
/// first admin key can be made before any credential exists (an admin can also use
/// `POST /v1/api-keys` on the command service).
#[derive(Parser)]
#[command(name = "flowline-auth", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates `<dir>/jwks.json` (a random HS256 key) unless it exists, and writes a token
    /// for `--tenant` with `--role` to `<dir>/token`.
    DevSetup {
        /// Where the key and token go.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// The token's tenant.
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// The token's role.
        #[arg(long, default_value = "admin")]
        role: Role,
        /// The token's subject.
        #[arg(long, default_value = "developer")]
        subject: String,
        /// How long the token is valid (`30d`, `12h`, `90m`).
        #[arg(long, default_value = "30d")]
        ttl: String,
    },
    /// Prints a token signed with the HS256 key of `--jwks`.
    Token {
        /// The JWKS file holding the signing key.
        #[arg(long, env = "AUTH_JWKS_FILE", default_value = ".dev/jwks.json")]
        jwks: PathBuf,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Role.
        #[arg(long)]
        role: Role,
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Validity (`1h`, `30m`, `7d`).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// `iss`.
        #[arg(long, env = "AUTH_ISSUER")]
        issuer: Option<String>,
        /// `aud`.
        #[arg(long, env = "AUTH_AUDIENCE")]
        audience: Option<String>,
    },
    /// API keys in the database of DATABASE_URL.
    Keys {
        /// PostgreSQL URL.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/flowline",
            hide_env_values = true
        )]
        database_url: String,
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Creates a key and prints it once.
    Create {
        /// The tenant it acts in.
        #[arg(long)]
        tenant: String,
        /// Its role.
        #[arg(long)]
        role: Role,
        /// What it is for.
        #[arg(long)]
        name: String,
        /// Validity (`90d`); never expires when omitted.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Lists a tenant's keys (never their secrets).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Revokes a key: refused from the next request on.
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The key's id (the part after `flk_`, before the second `_`).
        id: String,
    },
}

/// `30d`, `12h`, `90m`, `45s`.
fn ttl(text: &str) -> anyhow::Result<chrono::Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("{text:?}: write a number and a unit (s, m, h, d)"))?;
    let (amount, unit) = text.split_at(split);
    let amount: i64 = amount
        .parse()
        .with_context(|| format!("{text:?}: write a number and a unit (s, m, h, d)"))?;
    Ok(match unit {
        "s" => chrono::Duration::seconds(amount),
        "m" => chrono::Duration::minutes(amount),
        "h" => chrono::Duration::hours(amount),
        "d" => chrono::Duration::days(amount),
        _ => bail!("{text:?}: the unit is one of s, m, h, d"),
    })
}

fn tenant_name(tenant: &str) -> anyhow::Result<()> {
    if !flowline_service_kit::request::is_tenant_name(tenant) {
        bail!("--tenant {tenant:?}: 1-64 ASCII letters, digits, '_', '-' or '.'");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::DevSetup {
            dir,
            tenant,
            role,
            subject,
            ttl: validity,
        } => {
            tenant_name(&tenant)?;
            let jwks = dir.join("jwks.json");
            let key = if jwks.exists() {
                SigningKey::read(&jwks)?
            } else {
                let key = SigningKey::generate("dev");
                key.write(&jwks)?;
                key
            };
            let token = key.sign(&Claims::new(&subject, &tenant, role, ttl(&validity)?))?;
            let path = dir.join("token");
            std::fs::write(&path, &token).with_context(|| path.display().to_string())?;
            // A credential: its owner's only, like the key beside it.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| path.display().to_string())?;
            }
            eprintln!(
                "development token for tenant {tenant} ({role}) in {}: \
                 curl -H \"Authorization: Bearer $(cat {})\" …",
                path.display(),
                path.display()
            );
        }
        Command::Token {
            jwks,
            tenant,
            role,
            subject,
            ttl: validity,
            issuer,
            audience,
        } => {
            tenant_name(&tenant)?;
            let key = SigningKey::read(&jwks)?;
            let mut claims = Claims::new(&subject, &tenant, role, ttl(&validity)?);
            claims.iss = issuer;
            claims.aud = audience;
            println!("{}", key.sign(&claims)?);
        }
        Command::Keys {
            database_url,
            action,
        } => {
            let pool = flowline_service_kit::db::prepare(&database_url, 1)
                .await
                .context("opening the database of DATABASE_URL")?;
            let keys = ApiKeyStore::new(pool);
            match action {
                KeyAction::Create {
                    tenant,
                    role,
                    name,
                    expires_in,
                } => {
                    tenant_name(&tenant)?;
                    let expires_at = expires_in
                        .map(|text| ttl(&text).map(|ttl| chrono::Utc::now() + ttl))
                        .transpose()?;
                    let created = keys
                        .create(&tenant, &name, role, "flowline-auth", expires_at)
                        .await?;
                    eprintln!(
                        "key {} for tenant {tenant} ({role}); it is shown only now:",
                        created.stored.id
                    );
                    println!("{}", created.key);
                }
                KeyAction::List { tenant } => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&keys.list(&tenant).await?)?
                    );
                }
                KeyAction::Revoke { tenant, id } => {
                    if !keys.revoke(&tenant, &id).await? {
                        bail!("tenant {tenant} has no key {id}");
                    }
                    eprintln!("key {id} revoked");
                }
            }
        }
    }
    Ok(())
}
