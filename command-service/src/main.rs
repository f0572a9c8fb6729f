//! `command-service`: run `command-service --help` for its settings.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = command_service::Config::parse();
    flowline_service_kit::telemetry::init("command-service");
    let app = command_service::Application::build(config).await?;
    tracing::info!(port = app.port(), "command-service listening");
    app.run_until(flowline_service_kit::shutdown::signal())
        .await?;
    flowline_service_kit::telemetry::shutdown();
    Ok(())
}
