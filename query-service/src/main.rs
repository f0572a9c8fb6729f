//! `query-service`: run `query-service --help` for its settings.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = query_service::Config::parse();
    flowline_service_kit::telemetry::init("query-service");
    let app = query_service::Application::build(config).await?;
    tracing::info!(port = app.port(), "query-service listening");
    app.run_until(flowline_service_kit::shutdown::signal())
        .await?;
    flowline_service_kit::telemetry::shutdown();
    Ok(())
}
