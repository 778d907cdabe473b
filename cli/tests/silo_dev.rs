//! The acceptance test of the main job: the real `silo dev` binary as a subprocess (temp
//! data dir, free ports), driven by an independent client — Python grpcio stubs generated
//! from proto/ (tests/python/silo_dev_client.py) — then stopped with SIGTERM: exit 0 and
//! no PostgreSQL or silo process left.
//!
//! The Python comes from `SILO_TEST_PYTHON`, else the repository's `.venv` (scripts/test.sh
//! installs grpcio and grpcio-tools there). Without it the test is skipped, except under CI
//! (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use silo_tests::{grpc_python as python, repository};

/// The running `silo dev`; dropping it (a failed test) stops it with SIGTERM so its
/// PostgreSQL server does not outlive the test.
struct SiloDev {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl SiloDev {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id().expect("running")).unwrap())
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for SiloDev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(id) = self.child.id()
        {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(id).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..200 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
    }
}

/// The value after `label` on a banner line (`  <label>   <value>`).
fn banner_value(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|line| {
            let rest = line.strip_prefix("  ")?.strip_prefix(label)?;
            rest.starts_with("  ").then(|| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{}", lines.join("\n")))
}

/// Where a `silo dev` started by [`start_silo_dev`] on `data_dir` keeps its temporary
/// PostgreSQL files (`SILO_PG_TMPDIR`): its own, so the test can see what stays there.
fn pg_tmpdir(data_dir: &Path) -> PathBuf {
    data_dir.with_extension("pg-tmp")
}

async fn start_silo_dev(data_dir: &Path, extra: &[&str]) -> (SiloDev, Vec<String>) {
    let pg_tmp = pg_tmpdir(data_dir);
    std::fs::create_dir_all(&pg_tmp).unwrap();
    std::fs::set_permissions(&pg_tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_silo"))
        .env(silo_pg_server::PG_TMPDIR_ENV, &pg_tmp)
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .args([
            "--router-listen=127.0.0.1:0",
            "--router-metrics-listen=127.0.0.1:0",
            "--control-plane-listen=127.0.0.1:0",
            "--control-plane-metrics-listen=127.0.0.1:0",
            "--log-format=json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("silo dev starts");
    let output = Arc::new(Mutex::new(Vec::new()));
    // stderr is drained in the background for the failure message, and so that a full
    // pipe never blocks silo.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let errors = output.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            errors.lock().unwrap().push(line);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let dev = SiloDev {
        child,
        output: output.clone(),
    };
    let mut banner = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = stdout.next_line().await.expect("read silo dev output") {
            output.lock().unwrap().push(line.clone());
            let done = line.starts_with("silo dev is ready");
            banner.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "silo dev did not print its readiness line ({ready:?}):\n{}",
        dev.output()
    );
    let rest = output.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            rest.lock().unwrap().push(line);
        }
    });
    (dev, banner)
}

/// PIDs of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Live (not zombie) processes that are `pid` or have it as parent, as `pid state`.
fn process_and_children(pid: i32) -> Vec<String> {
    let pid = pid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the `)`.
            let (head, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            let (state, ppid) = (fields.next()?, fields.next()?);
            let own = head.split_whitespace().next()?;
            ((own == pid || ppid == pid) && state != "Z").then(|| format!("{own} {state}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silo_dev_serves_two_isolated_tenants_and_stops_cleanly_on_sigterm() {
    let Some(python) = python() else { return };
    let started = std::time::Instant::now();
    let temp = tempfile::tempdir().unwrap();
    // As root, PostgreSQL runs as `postgres`, which must be able to traverse to its data.
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data_dir = temp.path().join("silo-dev");
    let (mut dev, banner) = start_silo_dev(&data_dir, &[]).await;
    let ready_after = started.elapsed();

    let router = banner_value(&banner, "router");
    let metrics = banner_value(&banner, "router metrics");
    let acme = banner_value(&banner, "token acme");
    let globex = banner_value(&banner, "token globex");
    let text = banner.join("\n");
    assert!(
        text.contains(&format!("{router} silo.router.v1.Router/Query"))
            && text.contains(r#"-d '{"statement": {"sql": "#)
            && text.contains("grpcurl -plaintext -H 'authorization: Bearer ")
            && text.contains(&banner_value(&banner, "admin token")),
        "the banner shows a call to paste and the tokens:\n{text}"
    );
    // A second `silo dev` on the same data dir refuses at once, naming the first, and
    // touches nothing; one on a port in use refuses before starting anything.
    let (refused, stderr) = run_to_end(&data_dir, &[]).await;
    assert!(
        !refused.success(),
        "a second instance must not start:\n{stderr}"
    );
    assert!(
        stderr.contains("silo dev is already running on")
            && stderr.contains(&format!("pid {}", dev.pid()))
            && stderr.contains(&format!("router {router}")),
        "the refusal names the running instance:\n{stderr}"
    );
    let other_dir = temp.path().join("other");
    let (refused, stderr) = run_to_end(&other_dir, &[&format!("--router-listen={router}")]).await;
    assert!(!refused.success(), "a busy port must stop it:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {router} (router)")),
        "{stderr}"
    );
    assert!(
        !other_dir.join("postgres").exists(),
        "nothing was started for the refused instance"
    );

    // The template cluster silo dev built for its server's first start is gone.
    let kept: Vec<_> = std::fs::read_dir(pg_tmpdir(&data_dir))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("silo-pg-template"))
        .collect();
    assert!(kept.is_empty(), "silo dev kept its template: {kept:?}");

    let postmaster_pid: i32 = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid"))
        .expect("postgresql runs on the data dir")
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let client = Command::new(&python)
        .arg(repository().join("tests/python/silo_dev_client.py"))
        .arg(repository().join("proto"))
        .arg(&router)
        .arg(&metrics)
        .arg(format!("acme={acme}"))
        .arg(format!("globex={globex}"))
        .output();
    let client = tokio::time::timeout(Duration::from_secs(120), client)
        .await
        .expect("the Python client finishes")
        .expect("the Python client runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(
        client.status.success(),
        "Python client failed:\n{report}\n--- silo dev ---\n{}",
        dev.output()
    );
    assert!(report.contains("all checks passed"), "{report}");
    println!("{report}");

    let stopping = std::time::Instant::now();
    nix::sys::signal::kill(dev.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), dev.child.wait())
        .await
        .expect("silo dev stops within a minute of SIGTERM")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "silo dev exits 0 on SIGTERM:\n{}",
        dev.output()
    );
    let stopped_after = stopping.elapsed();

    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "postgresql's pid file is gone"
    );
    // pg_ctl returns once the pid file is gone; the postmaster may take a moment more.
    silo_tests::eventually_reporting(
        Duration::from_secs(5),
        &format!("the postmaster ({postmaster_pid}) and its children to be gone"),
        || async {
            let alive = process_and_children(postmaster_pid);
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {alive:?}"))
            }
        },
    )
    .await;
    let files_left: Vec<_> = std::fs::read_dir(pg_tmpdir(&data_dir))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(files_left.is_empty(), "left behind: {files_left:?}");
    let left = processes_mentioning(&temp.path().to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:?}");
    println!("silo dev ready after {ready_after:?}, stopped {stopped_after:?} after SIGTERM");
}

/// Runs `silo dev` on `data_dir` (free ports unless `extra` says otherwise) expecting it to
/// refuse: its exit status and stderr, within 30 s.
async fn run_to_end(data_dir: &Path, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let mut args = vec![
        "dev".to_owned(),
        format!("--data-dir={}", data_dir.display()),
        "--router-metrics-listen=127.0.0.1:0".to_owned(),
        "--control-plane-listen=127.0.0.1:0".to_owned(),
        "--control-plane-metrics-listen=127.0.0.1:0".to_owned(),
    ];
    if !extra.iter().any(|arg| arg.starts_with("--router-listen")) {
        args.push("--router-listen=127.0.0.1:0".to_owned());
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let output = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("a refused silo dev ends at once")
        .expect("silo dev runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Stops `dev` with SIGTERM and checks it exits 0.
async fn stop(mut dev: SiloDev) {
    nix::sys::signal::kill(dev.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), dev.child.wait())
        .await
        .expect("silo dev stops within a minute of SIGTERM")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "silo dev exits 0:\n{}",
        dev.output()
    );
}

/// `silo dev --tls`: the same Python client over TLS trusting only the printed CA, every
/// PostgreSQL session silo opened encrypted; the same data dir then runs plaintext again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silo_dev_tls_puts_every_hop_on_tls_with_the_printed_ca() {
    let Some(python) = python() else { return };
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data_dir = temp.path().join("silo-dev");
    let (dev, banner) = start_silo_dev(&data_dir, &["--tls"]).await;
    let ca = banner_value(&banner, "TLS CA");
    assert_eq!(
        Path::new(&ca),
        data_dir.join("tls/ca.pem").canonicalize().unwrap()
    );
    let text = banner.join("\n");
    assert!(
        text.contains(&format!("grpcurl -cacert {ca} -H"))
            && text.contains(&format!("SILO_CA_FILE={ca}"))
            && text.contains("SILO_ROUTER=https://")
            && !text.contains("-plaintext"),
        "the banner's calls use the CA:\n{text}"
    );
    let router = banner_value(&banner, "router");
    let client = Command::new(&python)
        .arg(repository().join("tests/python/silo_dev_client.py"))
        .arg(repository().join("proto"))
        .arg(&router)
        .arg(banner_value(&banner, "router metrics"))
        .arg(format!("acme={}", banner_value(&banner, "token acme")))
        .arg(format!("globex={}", banner_value(&banner, "token globex")))
        .env("SILO_CA_FILE", &ca)
        .output();
    let client = tokio::time::timeout(Duration::from_secs(120), client)
        .await
        .expect("the Python client finishes")
        .expect("the Python client runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(
        client.status.success() && report.contains("all checks passed"),
        "Python client over TLS failed:\n{report}\n--- silo dev ---\n{}",
        dev.output()
    );

    // A plaintext client is refused by the TLS router.
    let plaintext = Command::new(&python)
        .arg(repository().join("tests/python/silo_dev_client.py"))
        .arg(repository().join("proto"))
        .arg(&router)
        .arg(banner_value(&banner, "router metrics"))
        .arg(format!("acme={}", banner_value(&banner, "token acme")))
        .arg(format!("globex={}", banner_value(&banner, "token globex")))
        .output();
    let plaintext = tokio::time::timeout(Duration::from_secs(60), plaintext)
        .await
        .expect("the plaintext client gives up")
        .expect("runs");
    assert!(
        !plaintext.status.success(),
        "plaintext gRPC must not be served"
    );

    // Every session silo holds on PostgreSQL is encrypted.
    let dsn = banner_value(&banner, "PostgreSQL");
    let port: u16 = dsn
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {dsn}"));
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres");
    let (admin, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = admin
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (sessions, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(
        sessions > 0 && all_tls,
        "{sessions} sessions, all TLS: {all_tls}"
    );
    drop(admin);
    stop(dev).await;

    // The same data dir without --tls: plaintext again, tenants still served.
    let (dev, banner) = start_silo_dev(&data_dir, &[]).await;
    let text = banner.join("\n");
    assert!(
        text.contains("-plaintext") && !text.contains("TLS CA"),
        "{text}"
    );
    stop(dev).await;
}

/// The README's siloctl block (and below, its Python block), run as written against a
/// `silo dev` this test starts, from a directory laid out as the README assumes
/// (`.silo-dev` beside the commands). Only what cannot be the same in a test changes: `scripts/siloctl` is the siloctl built for
/// the tests (building it again from a test would take minutes), and the addresses are
/// the ports this `silo dev` got. A README change that breaks a command fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_siloctl_and_python_blocks_run_as_written() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (dev, banner) = start_silo_dev(&temp.path().join(".silo-dev"), &[]).await;
    let router = banner_value(&banner, "router");
    let control_plane = banner_value(&banner, "control plane");

    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let section = &readme[readme.find("\n## siloctl\n").expect("a siloctl section")..];
    let start = section.find("```sh\n").expect("a shell block") + "```sh\n".len();
    let block = &section[start..start + section[start..].find("```").expect("block end")];
    assert!(
        block.contains("scripts/siloctl tenants create") && block.contains("127.0.0.1:50052"),
        "the block this test replays changed shape:\n{block}"
    );
    let script = block
        .replace("scripts/siloctl", env!("CARGO_BIN_EXE_siloctl"))
        .replace("127.0.0.1:50052", &control_plane);
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(temp.path())
        // The block relies on siloctl's default router address; this one's port differs.
        .env("SILO_ROUTER", format!("http://{router}"))
        .env_remove("SILO_TOKEN")
        .env_remove("SILO_ADMIN_TOKEN")
        .env_remove("SILO_OUTPUT")
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the README's block failed:\n{said}"
    );
    assert!(
        said.contains("first note") && said.contains("initech"),
        "the block did not do what it says:\n{said}"
    );

    // The Python block below the banner: every line as written but for its directory
    // (`/tmp/silo-py`, here the test's own) and the router's address. The venv the block
    // creates is made beforehand with a `.pth` naming the test's grpcio, so its
    // `pip install` finds grpcio and grpcio-tools installed and needs no network
    // (`PIP_NO_INDEX`).
    let Some(grpc_python) = python() else {
        stop(dev).await;
        return;
    };
    let start = readme
        .find("stubs come from `proto/`")
        .expect("the Python paragraph");
    let start = start + readme[start..].find("```sh\n").expect("its block") + "```sh\n".len();
    let block = &readme[start..start + readme[start..].find("```").expect("block end")];
    assert!(
        block.contains("/tmp/silo-py") && block.contains("127.0.0.1:50051"),
        "the block this test replays changed shape:\n{block}"
    );
    let venv = temp.path().join("py");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .await
        .unwrap();
    assert!(made.success(), "python3 -m venv");
    let site_packages = |python: &Path| {
        let output = std::process::Command::new(python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .unwrap();
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    };
    let own = site_packages(&venv.join("bin/python"));
    std::fs::write(
        own.join("silo-test-grpcio.pth"),
        format!("{}\n", site_packages(&grpc_python).display()),
    )
    .unwrap();
    // grpcio-tools needs a newer setuptools than the one `venv` puts in; the test's
    // grpcio comes with one.
    for entry in std::fs::read_dir(&own).unwrap() {
        let entry = entry.unwrap();
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("setuptools")
        {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    let script = block
        .replace("/tmp/silo-py", venv.to_str().unwrap())
        .replace("127.0.0.1:50051", &router);
    let token = banner_value(&banner, "token acme");
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(repository())
        .env("SILO_TOKEN", token)
        .env("PIP_NO_INDEX", "1")
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.contains("string_value: \"s_"),
        "the README's Python block failed:\n{said}"
    );
    stop(dev).await;
}
