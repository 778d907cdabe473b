use clap::Parser;
use silo_control_plane::{ControlPlaneConfig, Hooks};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ControlPlaneConfig::parse();
    let _tracing = silo_telemetry::init(config.log_format, &config.traces, "silo-control-plane")?;
    let shutdown = CancellationToken::new();
    let running = silo_control_plane::start(config, Hooks::default(), shutdown.clone()).await?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
