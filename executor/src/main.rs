//! `executor`: run `executor --help` for its settings.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = executor::Config::parse();
    flowline_service_kit::telemetry::init("executor");
    let app = executor::Application::build(config).await?;
    tracing::info!(port = app.port(), "executor admin listening");
    app.run_until(flowline_service_kit::shutdown::signal())
        .await?;
    flowline_service_kit::telemetry::shutdown();
    Ok(())
}
