//! The control plane as its own process, for tests that kill it with SIGKILL: the same
//! configuration and start as `silo-control-plane`, built with the test suite so the tests
//! find it (`CARGO_BIN_EXE_control-plane-under-test`).

use clap::Parser;
use silo_control_plane::{ControlPlaneConfig, Hooks};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ControlPlaneConfig::parse();
    silo_telemetry::init_logs(config.log_format);
    let running =
        silo_control_plane::start(config, Hooks::default(), CancellationToken::new()).await?;
    // Runs until killed.
    std::future::pending::<()>().await;
    drop(running);
    Ok(())
}
