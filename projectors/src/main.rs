//! `projectors`: run `projectors --help` for its settings.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = projectors::Config::parse();
    flowline_service_kit::telemetry::init("projectors");
    let succeeded = match &config.command {
        None => None,
        Some(projectors::config::Command::Dlq { action }) => {
            Some(projectors::cli::dead_letters(&config, action).await?)
        }
        Some(projectors::config::Command::Rebuild {
            projection, from, ..
        }) => Some(projectors::cli::rebuild(&config, projection, from.as_deref()).await?),
    };
    if let Some(succeeded) = succeeded {
        std::process::exit(if succeeded { 0 } else { 1 });
    }
    let app = projectors::Application::build(config).await?;
    tracing::info!(port = app.port(), "projectors admin listening");
    app.run_until(flowline_service_kit::shutdown::signal())
        .await?;
    flowline_service_kit::telemetry::shutdown();
    Ok(())
}
