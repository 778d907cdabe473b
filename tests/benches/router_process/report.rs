//! The printed table: one line per path at each client count, then the router's ratios
//! to PgBouncer and to PostgreSQL straight.

use std::time::Duration;

use crate::load::Measured;

pub const LEGEND: &str = "\
legend: calls = calls that ended in the measuring window; qps = calls / window length;
  mean, p99 = per-call latency from the generator's own log (pgbench --log: per
  transaction; h2load --log-file: per request); proxy, postgres, client = CPU time per
  call (user + system from /proc, in the window / calls) of the router process or
  PgBouncer, of PostgreSQL (postmaster and every server process, exited ones too) and of
  the load generator. Ratios are router / other: qps above 1 is faster; mean, p99 and
  cpu above 1 is dearer, `cpu` being proxy + postgres per call. Every path shares the
  machine (nproc above) with its load generator and PostgreSQL.";

pub fn header() {
    println!(
        "{:>7}  {:<10} {:>7} {:>8} {:>9} {:>9}   {:>8} {:>8} {:>8}",
        "clients", "path", "calls", "qps", "mean", "p99", "proxy", "postgres", "client"
    );
}

pub fn line(clients: usize, path: &str, measured: &Measured) {
    let proxy = if path == "direct" {
        "-".to_owned()
    } else {
        micros(measured.cpu.proxy)
    };
    println!(
        "{clients:>7}  {path:<10} {:>7} {:>8.0} {:>9} {:>9}   {proxy:>8} {:>8} {:>8}",
        measured.calls,
        measured.qps,
        millis(measured.mean),
        millis(measured.p99),
        micros(measured.cpu.postgres),
        micros(measured.cpu.client),
    );
}

/// `router / other` for qps, mean, p99 and server-side CPU per call.
pub fn ratios(router: &Measured, other: &Measured, name: &str) {
    let server_cpu = |m: &Measured| (m.cpu.proxy + m.cpu.postgres).as_secs_f64();
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".to_owned()
        }
    };
    println!(
        "{:>7}  router/{name:<13} qps {}  mean {}  p99 {}  cpu {}",
        "",
        ratio(router.qps, other.qps),
        ratio(router.mean.as_secs_f64(), other.mean.as_secs_f64()),
        ratio(router.p99.as_secs_f64(), other.p99.as_secs_f64()),
        ratio(server_cpu(router), server_cpu(other)),
    );
}

fn millis(duration: Duration) -> String {
    format!("{:.3}ms", duration.as_secs_f64() * 1e3)
}

fn micros(duration: Duration) -> String {
    format!("{:.0}µs", duration.as_secs_f64() * 1e6)
}
