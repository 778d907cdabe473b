//! `silo-router`: parse the configuration, set up logging, run until Ctrl-C / SIGTERM.

use clap::Parser;
use silo_router::RouterConfig;
use tokio_util::sync::CancellationToken;

/// Every call allocates and frees many small buffers on several threads; glibc's
/// allocator spent about a quarter of the router's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RouterConfig::parse();
    let _tracing = silo_telemetry::init(config.log_format, &config.traces, "silo-router")?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    silo_router::run(config, shutdown).await
}
