//! The end-to-end harness: real PostgreSQL servers started here, the control plane started
//! in-process through the same `start` its binary calls, and gRPC over loopback.

pub mod calls;
pub mod fake_rds;
mod logs;
pub mod moto;
pub mod processes;
pub mod proxy;
pub mod rds;
pub mod router;
pub mod tls;

use std::{path::PathBuf, sync::Arc, time::Duration};

use silo_auth::{Algorithm, StandardClaims, TokenSigner};
use silo_control_plane::{ControlPlaneConfig, Hooks, RunningControlPlane};
use silo_pg_server::{PgServer, PgServerOptions};
use silo_proto::controlplane::v1::{self as pb, control_plane_client::ControlPlaneClient};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

pub use logs::LogCapture;

pub const ISSUER: &str = "silo-tests";
pub const AUDIENCE: &str = "silo-control-plane";
/// A password put into the fleet DSNs: the servers trust loopback logins, so it is never
/// checked, but it must never show up in a log line or an error message.
pub const FLEET_PASSWORD: &str = "fleet-admin-pw-7f3a9c";

/// The repository's root.
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Python with grpcio and grpcio-tools (`SILO_TEST_PYTHON`, else the repository's
/// `.venv`, which scripts/test.sh fills), or None after saying why when the test may skip;
/// under CI (`CI` set) a missing one fails the test instead.
pub fn grpc_python() -> Option<PathBuf> {
    let python = std::env::var_os("SILO_TEST_PYTHON")
        .map_or_else(|| repository().join(".venv/bin/python"), PathBuf::from);
    let usable = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if usable {
        return Some(python);
    }
    let why = format!(
        "{} with grpcio and grpcio-tools is missing: run scripts/test.sh (it installs them \
         into .venv) or set SILO_TEST_PYTHON",
        python.display()
    );
    assert!(
        std::env::var_os("CI").is_none_or(|ci| ci.is_empty()),
        "CI is set and {why}"
    );
    eprintln!("skipped: {why}");
    None
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/keys")
        .join(name)
}

/// Signs tokens with the fixture RSA key the control plane under test trusts.
pub fn signer() -> TokenSigner {
    TokenSigner::from_pem_file(fixture("rsa_private.pem"), Algorithm::RS256)
        .expect("fixture key loads")
}

pub fn token(role: &str) -> String {
    let claims = StandardClaims::new(format!("test-{role}"), Duration::from_secs(600))
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .claim("role", role);
    signer().sign(&claims).expect("token signs")
}

pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii header"),
    );
    request
}

/// `GET path` over plain HTTP/1.1; returns the body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The `grpc.health.v1` status of `service` on the server at `address` (`None`: no answer,
/// or a name the server does not know).
pub async fn health_status(
    address: std::net::SocketAddr,
    service: &str,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = Channel::from_shared(format!("http://{address}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|response| response.into_inner().status())
        .ok()
}

/// Polls `check` until it returns Some, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_reporting(timeout, what, || {
        let looked = check();
        async move { looked.await.ok_or_else(String::new) }
    })
    .await
}

/// Polls `check` until it returns Ok; panics after `timeout` naming `what` and the last
/// thing `check` saw (its last Err), so a timeout says why the condition never held.
pub async fn eventually_reporting<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            if last.is_empty() {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A tenant-migrations directory for one test: the repository's `migrations/tenant` plus
/// whatever the test adds (a control plane started with `--tenant-migrations-dir` uses it).
pub struct TenantMigrations {
    dir: tempfile::TempDir,
}

impl TenantMigrations {
    pub fn from_repository() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations/tenant");
        for entry in std::fs::read_dir(source).expect("migrations/tenant") {
            let path = entry.expect("entry").path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, dir.path().join(name)).expect("copy migration");
            }
        }
        Self { dir }
    }

    /// Writes (or overwrites) `file` with `sql`.
    pub fn write(&self, file: &str, sql: &str) {
        std::fs::write(self.dir.path().join(file), sql).expect("write migration");
    }

    pub fn flag(&self) -> String {
        format!("--tenant-migrations-dir={}", self.dir.path().display())
    }
}

/// Client authentication of the test servers: the superuser is trusted on loopback (the
/// harness and the fleet log in as it), every other role needs its password (SCRAM), as
/// in production, so a wrong or rotated password is really refused.
const PG_HBA: &str = "local all postgres trust\n\
     host all postgres 127.0.0.1/32 trust\n\
     local all all scram-sha-256\n\
     host all all 127.0.0.1/32 scram-sha-256\n";

/// Client authentication of TLS-only test servers: every login over TCP must use TLS,
/// except the harness's own superuser (`postgres`, which silo's fleet and catalog logins
/// never use in a TLS environment: they log in as `silo_admin`; an `rds` tier's master
/// user is `postgres` over TLS).
const PG_HBA_TLS_ONLY: &str = "local all postgres trust\n\
     hostnossl all postgres 127.0.0.1/32 trust\n\
     hostssl all postgres 127.0.0.1/32 trust\n\
     local all all scram-sha-256\n\
     hostssl all all 127.0.0.1/32 scram-sha-256\n";

/// The superuser silo's control plane logs in as on TLS-only test servers.
pub const TLS_ADMIN: &str = "silo_admin";

/// The certificates of a TLS-only test environment.
pub struct EnvTls {
    /// The CA that signed the servers' certificate (for `localhost` only).
    pub ca: tls::TestCa,
    /// `ca`'s certificate, PEM.
    pub ca_file: PathBuf,
}

/// PostgreSQL servers for one test: the first also holds the catalog database; all of
/// them form the `postgres` provisioner's fleet.
pub struct TestEnv {
    pub servers: Vec<Arc<PgServer>>,
    pub catalog_database: String,
    pub credentials_key: String,
    /// Set when the servers take TLS connections only (`start_tls`).
    pub tls: Option<EnvTls>,
    /// The test's own files (the servers' `pg_hba.conf`, tiers files), removed with it.
    scratch: tempfile::TempDir,
}

impl TestEnv {
    /// `fleet_size` servers with `wal_level = logical` (tenant moves by replication need it).
    pub async fn start(fleet_size: usize) -> Self {
        Self::start_with(fleet_size, false, &[]).await
    }

    /// The same with further server settings, e.g. `wal_level = replica` for a source that
    /// cannot be replicated from.
    pub async fn start_with_settings(fleet_size: usize, settings: &[(&str, &str)]) -> Self {
        Self::start_with(fleet_size, false, settings).await
    }

    /// Servers with `ssl = on` and a certificate for `localhost` signed by a CA made here,
    /// whose `pg_hba.conf` admits TCP logins over TLS only (`hostssl`). The fleet and
    /// catalog DSNs use `sslmode=verify-full` with that CA, as `silo_admin`.
    pub async fn start_tls(fleet_size: usize) -> Self {
        Self::start_with(fleet_size, true, &[]).await
    }

    async fn start_with(fleet_size: usize, tls: bool, settings: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let scratch = tempfile::tempdir().expect("scratch dir");
        // The servers run as `postgres` when the tests run as root: they must read it.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
            .expect("scratch dir readable");
        let hba = scratch.path().join("pg_hba.conf");
        std::fs::write(&hba, if tls { PG_HBA_TLS_ONLY } else { PG_HBA })
            .expect("pg_hba file written");
        std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644))
            .expect("pg_hba readable");
        let mut options = PgServerOptions::for_tests()
            .with_setting("hba_file", hba.display().to_string())
            .with_setting("wal_level", "logical");
        for (name, value) in settings {
            options = options.with_setting(*name, *value);
        }
        let env_tls = tls.then(|| {
            let ca = tls::TestCa::new("silo test CA");
            let ca_file = ca.write(&scratch.path().join("ca.pem"));
            let (cert, key) = ca.issue(&["localhost"]).write(scratch.path(), "server");
            silo_pg_server::give_to_server_user(&key).expect("server key handed over");
            for (name, value) in [
                ("ssl", "on".to_owned()),
                ("ssl_cert_file", cert.display().to_string()),
                ("ssl_key_file", key.display().to_string()),
            ] {
                options.settings.push((name.to_owned(), value));
            }
            EnvTls { ca, ca_file }
        });
        let servers = silo_pg_server::start_many(fleet_size.max(1), options)
            .await
            .expect("PostgreSQL servers start");
        let servers: Vec<Arc<PgServer>> = servers.into_iter().map(Arc::new).collect();
        if tls {
            for server in &servers {
                server
                    .connect("postgres")
                    .await
                    .expect("harness login")
                    .batch_execute(&format!(
                        "CREATE ROLE {TLS_ADMIN} SUPERUSER LOGIN PASSWORD '{FLEET_PASSWORD}'"
                    ))
                    .await
                    .expect("silo_admin made");
            }
        }
        let catalog_database = servers[0]
            .create_unique_database("catalog")
            .await
            .expect("catalog database");
        Self {
            servers,
            catalog_database,
            tls: env_tls,
            scratch,
            credentials_key: {
                use secrecy::ExposeSecret;
                silo_control_plane::crypto::CredentialCipher::generate_key()
                    .expose_secret()
                    .to_owned()
            },
        }
    }

    /// A path for a file of this test's own, removed when the environment is dropped.
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    pub fn fleet_dsn(&self, index: usize) -> String {
        self.silo_dsn(index, "postgres") + "&connect_timeout=2"
    }

    /// The DSN silo uses for `database` on server `index`: as `postgres` in plaintext, or in
    /// a TLS environment as `silo_admin` at `localhost` with `sslmode=verify-full`.
    pub fn silo_dsn(&self, index: usize, database: &str) -> String {
        let server = &self.servers[index];
        match &self.tls {
            None => format!(
                "postgres://postgres:{FLEET_PASSWORD}@{}:{}/{database}?application_name=silo",
                server.host(),
                server.port()
            ),
            Some(tls) => format!(
                "postgres://{TLS_ADMIN}:{FLEET_PASSWORD}@localhost:{}/{database}\
                 ?application_name=silo&sslmode=verify-full&sslrootcert={}",
                server.port(),
                tls.ca_file.display()
            ),
        }
    }

    /// The host tenant databases are reached at: `localhost` in a TLS environment (the
    /// name in the servers' certificate), else the servers' address.
    pub fn tenant_host(&self) -> &str {
        match &self.tls {
            Some(_) => "localhost",
            None => self.servers[0].host(),
        }
    }

    /// The `sslmode` / `sslrootcert` lines of a tier whose databases are this environment's
    /// servers (for the `rds` tier, which verifies by default).
    pub fn tenant_tls_toml(&self) -> String {
        match &self.tls {
            Some(tls) => format!(
                "sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
                tls.ca_file.display()
            ),
            None => "sslmode = \"prefer\"\n".into(),
        }
    }

    /// The control plane's configuration, parsed from flags like the binary does.
    pub fn config(&self, extra: &[&str]) -> ControlPlaneConfig {
        let mut args = vec!["silo-control-plane".to_owned()];
        args.extend(self.args(extra));
        <ControlPlaneConfig as clap::Parser>::try_parse_from(args).expect("test config parses")
    }

    /// The control plane's flags for this environment, then `extra` (for the binary).
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--listen=127.0.0.1:0".into(),
            "--metrics-listen=127.0.0.1:0".into(),
            format!("--catalog-url={}", self.silo_dsn(0, &self.catalog_database)),
            format!("--credentials-key={}", self.credentials_key),
            "--jwt-algorithms=RS256".into(),
            format!(
                "--jwt-public-key-file={}",
                fixture("rsa_public.pem").display()
            ),
            format!("--jwt-issuer={ISSUER}"),
            format!("--jwt-audience={AUDIENCE}"),
        ];
        for (index, server) in self.servers.iter().enumerate() {
            let _ = server;
            args.push(format!(
                "--postgres-server=pg{index}={}",
                self.fleet_dsn(index)
            ));
        }
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }

    /// A control plane whose tiers are `tiers_toml` (written to a scratch tiers file).
    pub async fn control_plane_with_tiers(&self, tiers_toml: &str) -> TestControlPlane {
        let file = self.scratch_file("tiers.toml");
        std::fs::write(&file, tiers_toml).expect("tiers file written");
        let flag = format!("--tiers-file={}", file.display());
        self.control_plane_with(self.config(&[&flag]), Hooks::default())
            .await
    }

    pub async fn control_plane(&self, hooks: Hooks) -> TestControlPlane {
        self.control_plane_with(self.config(&[]), hooks).await
    }

    pub async fn control_plane_with(
        &self,
        config: ControlPlaneConfig,
        hooks: Hooks,
    ) -> TestControlPlane {
        self.control_plane_over(config, hooks, None).await
    }

    /// A control plane started with `config`; the test's client reaches it over TLS with
    /// `client_tls` when set (`https://127.0.0.1:<port>`), else in plaintext.
    pub async fn control_plane_over(
        &self,
        config: ControlPlaneConfig,
        hooks: Hooks,
        client_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> TestControlPlane {
        let running = silo_control_plane::start(config, hooks, CancellationToken::new())
            .await
            .expect("control plane starts");
        let address = running.local_addr();
        let metrics_address = running.metrics_addr();
        let channel = match client_tls {
            Some(tls) => Channel::from_shared(format!("https://{address}"))
                .expect("uri")
                .tls_config(tls)
                .expect("tls config"),
            None => Channel::from_shared(format!("http://{address}")).expect("uri"),
        }
        .connect()
        .await
        .expect("control plane reachable");
        TestControlPlane {
            running: Some(running),
            address,
            metrics_address,
            client: ControlPlaneClient::new(channel),
        }
    }

    /// Connects to a database of fleet server `index` as the superuser.
    pub async fn admin_client(&self, index: usize, database: &str) -> tokio_postgres::Client {
        self.servers[index]
            .connect(database)
            .await
            .expect("admin connection")
    }
}

pub struct TestControlPlane {
    running: Option<RunningControlPlane>,
    address: std::net::SocketAddr,
    metrics_address: std::net::SocketAddr,
    pub client: ControlPlaneClient<Channel>,
}

impl TestControlPlane {
    /// The gRPC address the control plane listens on.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// The Prometheus endpoint's address.
    pub fn metrics_address(&self) -> std::net::SocketAddr {
        self.metrics_address
    }

    pub fn client(&self) -> ControlPlaneClient<Channel> {
        self.client.clone()
    }

    /// Ends the control plane as a crash would.
    pub fn abort(mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    pub async fn create_tenant(
        &self,
        tenant: &str,
        request_id: &str,
    ) -> Result<pb::Operation, tonic::Status> {
        let request = pb::CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: format!("{tenant} inc"),
            tier: String::new(),
            request_id: request_id.into(),
        };
        self.client()
            .create_tenant(with_token(request, &token("admin")))
            .await
            .map(tonic::Response::into_inner)
    }

    /// StartMigration as an admin (what `siloctl migrate` sends).
    pub async fn start_migration(
        &self,
        request: pb::StartMigrationRequest,
    ) -> Result<pb::Operation, tonic::Status> {
        self.client()
            .start_migration(with_token(request, &token("admin")))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get_tenant(&self, tenant: &str) -> Result<pb::Tenant, tonic::Status> {
        let request = pb::GetTenantRequest {
            tenant_id: tenant.into(),
        };
        self.client()
            .get_tenant(with_token(request, &token("admin")))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get_operation(&self, id: &str) -> Result<pb::Operation, tonic::Status> {
        let request = pb::GetOperationRequest {
            operation_id: id.into(),
        };
        self.client()
            .get_operation(with_token(request, &token("admin")))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn resolve(&self, tenant: &str) -> Result<pb::TenantRoute, tonic::Status> {
        let request = pb::ResolveTenantRequest {
            tenant_id: tenant.into(),
        };
        self.client()
            .resolve_tenant(with_token(request, &token("router")))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until the operation is done, asserts it succeeded, and returns it.
    pub async fn wait_succeeded(&self, operation_id: &str) -> pb::Operation {
        let done = self.wait_done(operation_id, Duration::from_secs(120)).await;
        assert_eq!(
            done.status(),
            pb::OperationStatus::Succeeded,
            "{}",
            done.error
        );
        done
    }

    /// Onboards these tenants concurrently and waits until every one is ACTIVE.
    pub async fn onboard(&self, tenants: &[&str]) {
        let operations = futures::future::join_all(
            tenants
                .iter()
                .map(|tenant| self.create_tenant(tenant, "onboard")),
        )
        .await;
        for operation in operations {
            self.wait_succeeded(&operation.expect("create accepted").operation_id)
                .await;
        }
    }

    /// Onboards `tenant` in `tier` (request id `req-<tenant>`) and waits until it is ACTIVE.
    pub async fn onboard_in_tier(&self, tenant: &str, tier: &str) {
        let created = self
            .client()
            .create_tenant(with_token(
                pb::CreateTenantRequest {
                    tenant_id: tenant.into(),
                    display_name: format!("{tenant} inc"),
                    tier: tier.into(),
                    request_id: format!("req-{tenant}"),
                },
                &token("admin"),
            ))
            .await
            .expect("create accepted")
            .into_inner();
        self.wait_succeeded(&created.operation_id).await;
    }

    /// Waits until the operation is done and returns it. A GetOperation error fails at
    /// once with its status (UNAVAILABLE, a control plane between restarts, is retried);
    /// a timeout says where the operation stood.
    pub async fn wait_done(&self, operation_id: &str, timeout: Duration) -> pb::Operation {
        let what = format!("operation {operation_id} to finish");
        eventually_reporting(timeout, &what, || async {
            match self.get_operation(operation_id).await {
                Ok(operation) if operation.done => Ok(operation),
                Ok(operation) => Err(format!(
                    "{:?}, steps {:?}, error {:?}",
                    operation.status(),
                    operation
                        .steps
                        .iter()
                        .map(|s| (s.name.as_str(), s.status(), s.detail.as_str()))
                        .collect::<Vec<_>>(),
                    operation.error
                )),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    Err(format!("GetOperation: {status}"))
                }
                Err(status) => panic!("GetOperation({operation_id}) failed: {status}"),
            }
        })
        .await
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }
}
