//! gRPC over TLS and mutual TLS: both servers started from their TLS flags with
//! certificates made here, called by grpcio from Python (an independent TLS stack,
//! tests/python/tls_client.py) and by the router itself; refusals of clients without a
//! trusted certificate and of servers the client does not trust; a certificate rotated in
//! place reaching new connections without a restart.
//!
//! The Python comes from `SILO_TEST_PYTHON`, else the repository's `.venv`; without one
//! that has grpcio and grpcio-tools the Python checks are skipped (failed when `CI` is set).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use silo_control_plane::Hooks;
use silo_proto::router::v1 as rpb;
use silo_tests::{
    TestControlPlane, TestEnv, eventually, http_get,
    router::{RouterTls, TestRouter, call, statement, tenant_token},
    token,
};
use silo_tls::grpc::{ClientTls, ServerTls, ServerTlsFiles};
use silo_tls::testing::TestCa;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use silo_tests::{grpc_python as python, repository};

/// Runs tests/python/tls_client.py against `target` with `args`; its output on failure.
async fn python_client(
    python: &Path,
    target: std::net::SocketAddr,
    args: &[&str],
) -> Result<String, String> {
    let output = tokio::process::Command::new(python)
        .arg(repository().join("tests/python/tls_client.py"))
        .arg(repository().join("proto"))
        .arg(target.to_string())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("python starts");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The certificates of one test, written to the environment's scratch directory: a server
/// CA and the servers' certificate (for 127.0.0.1 and localhost), a client CA and a
/// client certificate, and a stranger CA with a certificate of its own.
struct Pki {
    server_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_ca: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

impl Pki {
    fn write(env: &TestEnv) -> Self {
        let dir = env.scratch_file("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let server_ca = TestCa::new("silo test server CA");
        let client_ca = TestCa::new("silo test client CA");
        let stranger_ca = TestCa::new("stranger CA");
        let (server_cert, server_key) = server_ca
            .issue(&["127.0.0.1", "localhost"])
            .write(&dir, "server");
        let (client_cert, client_key) = client_ca.issue(&["silo-router"]).write(&dir, "client");
        let (stranger_cert, stranger_key) = stranger_ca
            .issue(&["127.0.0.1", "localhost"])
            .write(&dir, "stranger");
        Self {
            server_ca: server_ca.write(&dir.join("server-ca.crt")),
            server_cert,
            server_key,
            client_ca: client_ca.write(&dir.join("client-ca.crt")),
            client_cert,
            client_key,
            stranger_ca: stranger_ca.write(&dir.join("stranger-ca.crt")),
            stranger_cert,
            stranger_key,
        }
    }

    /// The servers' TLS flags; with `mutual`, client certificates signed by the client CA
    /// are required.
    fn server_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            format!("--tls-cert-file={}", self.server_cert.display()),
            format!("--tls-key-file={}", self.server_key.display()),
        ];
        if mutual {
            flags.push(format!("--tls-client-ca-file={}", self.client_ca.display()));
        }
        flags
    }

    fn server_tls(&self, mutual: bool) -> Arc<ServerTls> {
        Arc::new(
            ServerTls::load(ServerTlsFiles {
                cert: self.server_cert.clone(),
                key: self.server_key.clone(),
                client_ca: mutual.then(|| self.client_ca.clone()),
            })
            .unwrap(),
        )
    }

    /// A client trusting the server CA, presenting the client certificate when `identity`.
    fn client(&self, identity: bool) -> ClientTlsConfig {
        ClientTls {
            ca_file: Some(self.server_ca.clone()),
            cert_file: identity.then(|| self.client_cert.clone()),
            key_file: identity.then(|| self.client_key.clone()),
        }
        .config()
        .unwrap()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A control plane started from its TLS flags, with `acme` onboarded.
async fn control_plane(env: &TestEnv, pki: &Pki, mutual: bool) -> TestControlPlane {
    let flags = pki.server_flags(mutual);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cp = env
        .control_plane_over(
            env.config(&flags),
            Hooks::default(),
            Some(pki.client(mutual)),
        )
        .await;
    cp.onboard(&["acme"]).await;
    cp
}

/// A router whose server and control-plane link use TLS (mutual when `mutual`); the link's
/// TLS comes from the router's own flags.
async fn router(cp: &TestControlPlane, pki: &Pki, mutual: bool) -> TestRouter {
    let mut flags = vec![
        "silo-router".to_owned(),
        "--control-plane-token=unused".to_owned(),
        format!("--control-plane-url=https://{}", cp.address()),
        format!("--control-plane-ca-file={}", pki.server_ca.display()),
    ];
    if mutual {
        flags.push(format!(
            "--control-plane-cert-file={}",
            pki.client_cert.display()
        ));
        flags.push(format!(
            "--control-plane-key-file={}",
            pki.client_key.display()
        ));
    }
    let config = <silo_router::RouterConfig as clap::Parser>::try_parse_from(flags).unwrap();
    TestRouter::start_tls(
        cp,
        RouterTls {
            server: Some(pki.server_tls(mutual)),
            control_plane: config.control_plane_tls().unwrap(),
            client: Some(pki.client(mutual)),
        },
    )
    .await
}

async fn query(router: &TestRouter, tenant: &str) -> Result<(), tonic::Status> {
    let request = rpb::QueryRequest {
        statement: statement("SELECT current_database()", vec![]),
        max_rows: 0,
    };
    router
        .client
        .clone()
        .query(call(request, &tenant_token(tenant), None))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_reaches_both_servers_over_tls_and_refuses_an_untrusted_server() {
    let env = TestEnv::start(1).await;
    let pki = Pki::write(&env);
    let cp = control_plane(&env, &pki, false).await;
    let router = router(&cp, &pki, false).await;
    query(&router, "acme").await.unwrap();

    // The plaintext metrics endpoint answers the probes a TLS server cannot.
    assert_eq!(http_get(cp.metrics_address(), "/healthz").await, "ok\n");
    assert_eq!(http_get(cp.metrics_address(), "/readyz").await, "ready\n");

    let Some(python) = python() else { return };
    let ca = path(&pki.server_ca);
    let admin = token("admin");
    let acme = tenant_token("acme");
    let cp_checks = python_client(
        &python,
        cp.address(),
        &["--ca", ca, "--control-plane", "acme", &admin],
    )
    .await
    .unwrap_or_else(|output| panic!("control plane over TLS:\n{output}"));
    assert!(cp_checks.contains("all checks passed"), "{cp_checks}");
    let router_checks = python_client(
        &python,
        router.address,
        &["--ca", ca, "--router", "acme", &acme],
    )
    .await
    .unwrap_or_else(|output| panic!("router over TLS:\n{output}"));
    assert!(
        router_checks.contains("all checks passed"),
        "{router_checks}"
    );

    for target in [cp.address(), router.address] {
        let refused = python_client(
            &python,
            target,
            &["--ca", path(&pki.stranger_ca), "--expect-refused"],
        )
        .await;
        assert!(refused.is_ok(), "a client trusting another CA: {refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_trusted_client_certificates_only() {
    let env = TestEnv::start(1).await;
    let pki = Pki::write(&env);
    let cp = control_plane(&env, &pki, true).await;
    // The router reaches the control plane with its client certificate: routes arrive.
    let router = router(&cp, &pki, true).await;
    query(&router, "acme").await.unwrap();

    // A router whose link presents no certificate never gets a route.
    let config = ClientTls {
        ca_file: Some(pki.server_ca.clone()),
        ..ClientTls::default()
    };
    let anonymous = TestRouter::start_tls(
        &cp,
        RouterTls {
            control_plane: Some(config.config().unwrap()),
            ..RouterTls::default()
        },
    )
    .await;
    let error = query(&anonymous, "acme").await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");

    let Some(python) = python() else { return };
    let (ca, cert, key) = (
        path(&pki.server_ca),
        path(&pki.client_cert),
        path(&pki.client_key),
    );
    let admin = token("admin");
    let acme = tenant_token("acme");
    for (target, call) in [
        (cp.address(), ["--control-plane", "acme", admin.as_str()]),
        (router.address, ["--router", "acme", acme.as_str()]),
    ] {
        let checks = python_client(
            &python,
            target,
            &[&["--ca", ca, "--cert", cert, "--key", key][..], &call].concat(),
        )
        .await
        .unwrap_or_else(|output| panic!("{target} over mutual TLS:\n{output}"));
        assert!(checks.contains("all checks passed"), "{checks}");

        let refused = python_client(&python, target, &["--ca", ca, "--expect-refused"]).await;
        assert!(
            refused.is_ok(),
            "{target}: a client without a certificate: {refused:?}"
        );
        let refused = python_client(
            &python,
            target,
            &[
                "--ca",
                ca,
                "--cert",
                path(&pki.stranger_cert),
                "--key",
                path(&pki.stranger_key),
                "--expect-refused",
            ],
        )
        .await;
        assert!(
            refused.is_ok(),
            "{target}: a client certificate from another CA: {refused:?}"
        );
    }
}

/// The health status over a new TLS connection to `address` trusting `ca` only; `Err`
/// with the reason when the connection fails.
async fn health_over_tls(
    address: std::net::SocketAddr,
    ca: &Path,
) -> Result<ServingStatus, String> {
    let tls = ClientTls {
        ca_file: Some(ca.to_owned()),
        ..ClientTls::default()
    }
    .config()
    .unwrap();
    let channel = Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|response| response.into_inner().status())
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_in_place_reaches_new_connections_without_a_restart() {
    let env = TestEnv::start(1).await;
    let pki = Pki::write(&env);
    let cp = control_plane(&env, &pki, false).await;
    assert_eq!(
        health_over_tls(cp.address(), &pki.server_ca).await,
        Ok(ServingStatus::Serving)
    );
    assert!(
        health_over_tls(cp.address(), &pki.stranger_ca)
            .await
            .is_err()
    );

    // The stranger CA's certificate (another CA, another serial) over the served files.
    std::fs::copy(&pki.stranger_cert, &pki.server_cert).unwrap();
    std::fs::copy(&pki.stranger_key, &pki.server_key).unwrap();
    eventually(
        Duration::from_secs(15),
        "the new certificate is served",
        || async {
            (health_over_tls(cp.address(), &pki.stranger_ca).await == Ok(ServingStatus::Serving))
                .then_some(())
        },
    )
    .await;
    assert!(
        health_over_tls(cp.address(), &pki.server_ca).await.is_err(),
        "the old certificate is no longer served"
    );
    // The test's own client connected before the rotation and keeps its connection.
    cp.get_tenant("acme").await.unwrap();
}
