//! PostgreSQL pools, database creation and the embedded migrations in `migrations/`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use tracing::log::LevelFilter;

use crate::Result;

/// The engine's schema, compiled in so a fresh database needs nothing but a URL.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Opens a pool on `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    connect_with(connect_options(url)?, max_connections).await
}

fn connect_options(url: &str) -> Result<PgConnectOptions> {
    // Statements log at trace level only (`RUST_LOG=sqlx::query=trace` shows them, and
    // tests count them); no slow-statement warnings, since rebuild batches are slow by design.
    Ok(PgConnectOptions::from_str(url)?
        .log_statements(LevelFilter::Trace)
        .log_slow_statements(LevelFilter::Off, Duration::from_secs(1)))
}

async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// Creates the database named in `url` if it does not exist yet, connecting to the
/// server's `postgres` maintenance database to do it.
pub async fn create_database_if_missing(url: &str) -> Result<()> {
    let target = PgConnectOptions::from_str(url)?;
    let name = target
        .get_database()
        .ok_or_else(|| crate::Error::Config("DATABASE_URL names no database".into()))?
        .to_owned();
    let mut admin = target.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(error) = admin.execute(sqlx::AssertSqlSafe(statement)).await {
            // Another process may have created it between our check and our create.
            let raced = error
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == "42P04");
            if !raced {
                return Err(error.into());
            }
        }
    }
    admin.close().await?;
    Ok(())
}

/// Creates the database if needed, applies every pending migration, and returns a pool.
pub async fn prepare(url: &str, max_connections: u32) -> Result<PgPool> {
    create_database_if_missing(url).await?;
    let pool = connect(url, max_connections).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).map_err(|e| crate::Error::Config(e.to_string()))?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// Connection settings for PostgreSQL, shared by every binary's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; the database is created and migrated at start if missing.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flowline"
    )]
    pub url: String,
    /// Most pooled connections of this process.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

impl DatabaseSettings {
    /// Creates/migrates the database and opens the pool.
    pub async fn prepare(&self) -> Result<PgPool> {
        prepare(&self.url, self.max_connections).await
    }

    /// Creates/migrates the database (without a timeout: migrations may be long), then
    /// opens a pool whose every statement PostgreSQL cancels after `statement_timeout`
    /// (its `statement_timeout`, set at connect; zero disables it).
    pub async fn prepare_with_statement_timeout(
        &self,
        statement_timeout: Duration,
    ) -> Result<PgPool> {
        prepare(&self.url, 1).await?.close().await;
        let timeout = statement_timeout.as_millis().to_string();
        let options = connect_options(&self.url)?.options([("statement_timeout", timeout)]);
        connect_with(options, self.max_connections).await
    }
}
