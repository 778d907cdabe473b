//! The load generators, each its own process: `pgbench` (PostgreSQL's, C) for PostgreSQL
//! straight and through PgBouncer, `h2load` (nghttp2's, C) for the router's gRPC. One
//! run: the generator starts, warms up, then CPU time is read at the start and the end
//! of the measuring window, and the latencies of the calls that ended inside the window
//! come from the generator's per-call log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};

use crate::cpu::{Cpu, Probe};

/// How long one run warms up and measures, with how many clients.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub clients: usize,
    pub warm_up: Duration,
    pub measure: Duration,
}

impl Run {
    /// Whole seconds the generator runs: warm-up, window, and a second of slack so it is
    /// still running when the window ends.
    fn seconds(&self) -> u64 {
        (self.warm_up + self.measure).as_secs_f64().ceil() as u64 + 1
    }
}

/// What one run measured inside its window.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub calls: usize,
    pub qps: f64,
    pub mean: Duration,
    pub p99: Duration,
    /// CPU time per call.
    pub cpu: Cpu,
}

/// The window of one run, in microseconds since the epoch, and the CPU used inside it.
struct Window {
    from_us: u64,
    to_us: u64,
    cpu: Cpu,
}

impl Window {
    fn contains(&self, end_us: u64) -> bool {
        (self.from_us..self.to_us).contains(&end_us)
    }

    /// Figures from the latencies (µs) of the calls that ended in the window.
    fn figures(&self, mut latencies_us: Vec<u64>) -> anyhow::Result<Measured> {
        ensure!(!latencies_us.is_empty(), "no call ended in the window");
        latencies_us.sort_unstable();
        let calls = latencies_us.len();
        let mean = latencies_us.iter().sum::<u64>() / calls as u64;
        let p99 = latencies_us[(calls - 1) * 99 / 100];
        let per_call = |time: Duration| time / calls as u32;
        Ok(Measured {
            calls,
            qps: calls as f64 / Duration::from_micros(self.to_us - self.from_us).as_secs_f64(),
            mean: Duration::from_micros(mean),
            p99: Duration::from_micros(p99),
            cpu: Cpu {
                proxy: per_call(self.cpu.proxy),
                postgres: per_call(self.cpu.postgres),
                client: per_call(self.cpu.client),
            },
        })
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// Runs `command` (killed if this future is dropped); reads CPU time with `probe` (the
/// generator's own pid filled in) at the start and the end of the window. Returns the
/// window and the generator's stdout; fails with its output if it exits unsuccessfully.
async fn observe(
    mut command: tokio::process::Command,
    probe: Probe,
    tick: Duration,
    run: &Run,
) -> anyhow::Result<(Window, String)> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the load generator")?;
    let probe = Probe {
        client: child.id().context("generator pid")?,
        ..probe
    };
    tokio::time::sleep(run.warm_up).await;
    let (from_us, from) = (now_us(), probe.read(tick));
    tokio::time::sleep(run.measure).await;
    let (to_us, to) = (now_us(), probe.read(tick));
    let output = child
        .wait_with_output()
        .await
        .context("wait for the generator")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{:?} exited with {}:\n{stdout}\n{}",
            command.as_std().get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((
        Window {
            from_us,
            to_us,
            cpu: to - from,
        },
        stdout,
    ))
}

/// Finds a program: the first of `candidates` that runs with `--version`.
fn find(candidates: &[&str], install: &str) -> anyhow::Result<PathBuf> {
    candidates
        .iter()
        .find(|program| {
            std::process::Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "{} not found; {install} (scripts/bench-router.sh does)",
                candidates[0]
            )
        })
}

/// Where pgbench connects.
pub struct PgTarget<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub database: &'a str,
}

pub struct Pgbench {
    program: PathBuf,
    /// Where its logs go (removed after each run).
    dir: PathBuf,
}

impl Pgbench {
    /// pgbench next to the server binaries (`SILO_PG_BIN`, else PostgreSQL 15's), else
    /// the one on `PATH`.
    pub fn find(dir: &Path) -> anyhow::Result<Self> {
        let beside_server = std::env::var("SILO_PG_BIN")
            .map(|bin| format!("{bin}/pgbench"))
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pgbench".into());
        Ok(Self {
            program: find(
                &[&beside_server, "pgbench"],
                "it comes with PostgreSQL: apt-get install postgresql",
            )?,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `script` (a pgbench custom script) against `target` with protocol `mode`
    /// (`prepared`, `extended`), one connection and one thread per client.
    pub async fn run(
        &self,
        target: &PgTarget<'_>,
        mode: &str,
        script: &Path,
        run: &Run,
        probe: Probe,
        tick: Duration,
    ) -> anyhow::Result<Measured> {
        let prefix = self.dir.join("pgbench");
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args([
                "--no-vacuum",
                "--host",
                target.host,
                "--username",
                target.user,
            ])
            .arg(format!("--port={}", target.port))
            .arg(format!("--protocol={mode}"))
            .arg("--file")
            .arg(script)
            .arg(format!("--client={}", run.clients))
            .arg(format!("--jobs={}", run.clients))
            .arg(format!("--time={}", run.seconds()))
            .arg("--log")
            .arg(format!("--log-prefix={}", prefix.display()))
            .arg(target.database);
        let (window, stdout) = observe(command, probe, tick, run).await?;
        // Since PostgreSQL 15 pgbench counts failed transactions instead of aborting on
        // some errors: there must be none.
        if let Some(failed) = stdout
            .lines()
            .find_map(|line| line.strip_prefix("number of failed transactions: "))
        {
            ensure!(
                failed.starts_with("0 "),
                "pgbench: {failed} failed\n{stdout}"
            );
        }
        // One log per thread: `pgbench.<pid>` and `pgbench.<pid>.<thread>`, lines of
        // `client transaction latency_us script epoch_s epoch_us`.
        let mut latencies = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("pgbench.") {
                continue;
            }
            let log = std::fs::read_to_string(entry.path())?;
            std::fs::remove_file(entry.path())?;
            for line in log.lines() {
                let fields: Vec<u64> = line
                    .split_whitespace()
                    .map_while(|field| field.parse().ok())
                    .collect();
                if let [_, _, latency, _, seconds, micros, ..] = fields[..]
                    && window.contains(seconds * 1_000_000 + micros)
                {
                    latencies.push(latency);
                }
            }
        }
        window.figures(latencies)
    }
}

/// One gRPC method called with one fixed request.
pub struct GrpcCall<'a> {
    /// `http://127.0.0.1:<port>/silo.router.v1.Router/<Method>`.
    pub url: &'a str,
    /// The request as a gRPC message: the 5-byte frame header and the encoded message.
    pub body: &'a Path,
    pub token: &'a str,
}

/// What h2load says it did over the whole run (warm-up included).
#[derive(Debug, Default)]
pub struct H2loadTotals {
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// Requests started but not done when the run ended.
    pub in_flight: u64,
    /// Bytes of response DATA frames.
    pub data_bytes: u64,
}

pub struct H2load {
    program: PathBuf,
    dir: PathBuf,
}

impl H2load {
    pub fn find(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            program: find(&["h2load"], "apt-get install nghttp2-client")?,
            dir: dir.to_path_buf(),
        })
    }

    /// `clients` HTTP/2 connections with one call in flight each, threads up to the
    /// number of CPUs.
    pub async fn run(
        &self,
        call: &GrpcCall<'_>,
        run: &Run,
        probe: Probe,
        tick: Duration,
    ) -> anyhow::Result<(Measured, H2loadTotals)> {
        let threads = run
            .clients
            .min(std::thread::available_parallelism().map_or(1, usize::from));
        let log = self.dir.join("h2load.log");
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(format!("--clients={}", run.clients))
            .arg("--max-concurrent-streams=1")
            .arg(format!("--threads={threads}"))
            .arg(format!("--duration={}", run.seconds()))
            .arg("--data")
            .arg(call.body)
            .args(["--header", "content-type: application/grpc"])
            .args(["--header", "te: trailers"])
            .arg("--header")
            .arg(format!("authorization: Bearer {}", call.token))
            .arg("--log-file")
            .arg(&log)
            .arg(call.url);
        let (window, stdout) = observe(command, probe, tick, run).await?;
        // Lines of `start_epoch_us status duration_us`.
        let text = std::fs::read_to_string(&log)?;
        std::fs::remove_file(&log)?;
        let mut latencies = Vec::new();
        for line in text.lines() {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map_while(|field| field.parse().ok())
                .collect();
            if let [start, status, duration, ..] = fields[..] {
                ensure!(status == 200, "HTTP status {status} from the router");
                if window.contains(start + duration) {
                    latencies.push(duration);
                }
            }
        }
        Ok((window.figures(latencies)?, totals(&stdout)?))
    }
}

/// The `requests:` and `traffic:` lines of h2load's summary.
fn totals(stdout: &str) -> anyhow::Result<H2loadTotals> {
    let count = |line: &str, what: &str| -> Option<u64> {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(what)?.trim().parse().ok())
    };
    let requests = stdout
        .lines()
        .find_map(|line| line.strip_prefix("requests: "))
        .with_context(|| format!("no requests line in h2load's output:\n{stdout}"))?;
    let traffic = stdout
        .lines()
        .find_map(|line| line.strip_prefix("traffic: "))
        .with_context(|| format!("no traffic line in h2load's output:\n{stdout}"))?;
    // `... headers (space savings 90.00%), 2.67MB (2797200) data`
    let data_bytes = traffic
        .rsplit_once('(')
        .and_then(|(_, tail)| tail.strip_suffix(") data")?.parse().ok())
        .with_context(|| format!("no data bytes in {traffic:?}"))?;
    let field =
        |what: &str| count(requests, what).with_context(|| format!("no {what:?} in {requests:?}"));
    Ok(H2loadTotals {
        succeeded: field("succeeded")?,
        failed: field("failed")?,
        errored: field("errored")?,
        timeout: field("timeout")?,
        in_flight: field("started")? - field("done")?,
        data_bytes,
    })
}
