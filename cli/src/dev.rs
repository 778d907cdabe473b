//! The embedded default: a local PostgreSQL server (data kept under `--data-dir`), the
//! control plane and the router on it, and demo tenants onboarded through the real
//! ControlPlane API; a banner with endpoints, tokens and a call to paste; Ctrl-C or
//! SIGTERM stops everything.

mod banner;
mod instance;
mod postgres;
mod secrets;
mod tls;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use silo_auth::{Algorithm, StandardClaims, TokenSigner};
use silo_control_plane::{ControlPlaneConfig, Hooks};
use silo_proto::controlplane::v1::{self as pb, control_plane_client::ControlPlaneClient};
use silo_proto::router::v1::{self as rpb, router_client::RouterClient};
use silo_router::RouterConfig;
use silo_telemetry::LogFormat;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// `iss` and `aud` of every dev token; both services accept them.
pub const ISSUER: &str = "silo-dev";
pub const AUDIENCE: &str = "silo";
/// How long the printed tokens (admin, tenants) stay valid.
const USER_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The router's own service token lives as long as any dev session reasonably does.
const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Calls in flight get this long to finish when dev stops.
const SHUTDOWN_GRACE_SECS: &str = "5";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the local PostgreSQL server keeps its data and dev secrets (reused when present).
    #[arg(long, env = "SILO_DEV_DATA_DIR", default_value = ".silo-dev")]
    data_dir: PathBuf,
    /// Router gRPC address (port 0: a free port).
    #[arg(
        long,
        env = "SILO_DEV_ROUTER_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    router_listen: SocketAddr,
    /// Router Prometheus endpoint (port 0: a free port).
    #[arg(
        long,
        env = "SILO_DEV_ROUTER_METRICS_LISTEN",
        default_value = "127.0.0.1:9151"
    )]
    router_metrics_listen: SocketAddr,
    /// Control-plane gRPC address (port 0: a free port).
    #[arg(
        long,
        env = "SILO_DEV_CONTROL_PLANE_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    control_plane_listen: SocketAddr,
    /// Control-plane Prometheus endpoint (port 0: a free port).
    #[arg(
        long,
        env = "SILO_DEV_CONTROL_PLANE_METRICS_LISTEN",
        default_value = "127.0.0.1:9152"
    )]
    control_plane_metrics_listen: SocketAddr,
    /// Demo tenants onboarded at start.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    tenants: Vec<String>,
    /// Log format: `human` or `json`.
    #[arg(long, env = "SILO_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    /// TLS on every hop (clients to both gRPC servers, the router's link to the control
    /// plane, every PostgreSQL connection, all `verify-full`), with a throwaway CA kept in
    /// `<data dir>/tls/ca.pem`; the banner names it. Off: plaintext on loopback.
    #[arg(long, env = "SILO_DEV_TLS")]
    tls: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    silo_telemetry::init_logs(args.log_format);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // Before anything is touched: a second instance on this data dir, or a port in use,
    // must leave the running one alone.
    let mut lock = instance::InstanceLock::acquire(&data_dir)?;
    instance::check_ports(&[
        ("router", args.router_listen),
        ("router-metrics", args.router_metrics_listen),
        ("control-plane", args.control_plane_listen),
        ("control-plane-metrics", args.control_plane_metrics_listen),
    ])?;
    let secrets = secrets::DevSecrets::load_or_create(&data_dir.join("secrets"))?;
    let mut stop_signal = StopSignal::install()?;

    let tls = match args.tls {
        true => Some(tls::DevTls::load_or_create(&data_dir.join("tls"))?),
        false => None,
    };
    let server = postgres::start(&data_dir).await?;
    // silo dev starts no other server: a template cluster it built for this one's first
    // start is not kept in /dev/shm or /tmp.
    silo_pg_server::remove_template_built_here();
    tls::configure_postgres(&server.server, tls.as_ref())
        .await
        .context("configuring TLS on the local PostgreSQL server")?;
    let shutdown = CancellationToken::new();
    let control_plane = silo_control_plane::start(
        control_plane_config(&args, &server.server, &secrets, tls.as_ref())?,
        Hooks::default(),
        shutdown.clone(),
    )
    .await
    .context("starting the control plane")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let control_plane_url = format!("{scheme}://{}", control_plane.local_addr());
    let client_tls = tls
        .as_ref()
        .map(|tls| {
            silo_tls::grpc::ClientTls {
                ca_file: Some(tls.ca.clone()),
                ..Default::default()
            }
            .config()
        })
        .transpose()?;

    let signer = TokenSigner::from_hmac_secret(&secrets.jwt, Algorithm::HS256)?;
    let sign = |subject: &str, ttl: Duration, claim: (&str, &str)| {
        signer.sign(
            &StandardClaims::new(subject, ttl)
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .claim(claim.0, claim.1),
        )
    };
    let admin_token = sign("silo-dev-admin", USER_TOKEN_TTL, ("role", "admin"))?;
    let router_service_token = sign("silo-dev-router", SERVICE_TOKEN_TTL, ("role", "router"))?;
    let tenant_tokens = args
        .tenants
        .iter()
        .map(|tenant| {
            let token = sign(
                &format!("silo-dev-{tenant}"),
                USER_TOKEN_TTL,
                ("tenant_id", tenant),
            )?;
            Ok((tenant.clone(), token))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let router_listen = concrete_port(args.router_listen)?;
    let router_metrics = concrete_port(args.router_metrics_listen)?;
    let router_config = router_config(
        router_listen,
        router_metrics,
        &control_plane_url,
        &router_service_token,
        &secrets.jwt,
        tls.as_ref(),
    )?;
    let router_stop = CancellationToken::new();
    let mut router = tokio::spawn(silo_router::run(router_config, router_stop.clone()));

    let mut endpoint = tonic::transport::Endpoint::from_shared(control_plane_url.clone())?;
    if let Some(config) = &client_tls {
        endpoint = endpoint.tls_config(config.clone())?;
    }
    let mut client = ControlPlaneClient::new(endpoint.connect().await?);
    let started = async {
        for tenant in &args.tenants {
            onboard(&mut client, &admin_token, tenant).await?;
        }
        wait_router_ready(router_listen, client_tls.as_ref(), &tenant_tokens).await
    };
    let outcome = tokio::select! {
        outcome = started => outcome.map(|()| true),
        ended = &mut router => Err(match ended {
            Ok(Err(error)) => error.context("the router stopped"),
            Ok(Ok(())) => anyhow::anyhow!("the router stopped by itself"),
            Err(panic) => anyhow::anyhow!("the router task failed: {panic}"),
        }),
        () = stop_signal.wait() => Ok(false),
    };

    if let Ok(true) = outcome {
        lock.describe(&format!(
            "pid {}, router {router_listen}, control plane {}",
            std::process::id(),
            control_plane.local_addr()
        ))?;
        banner::print(&banner::Banner {
            router: router_listen,
            router_metrics,
            control_plane: control_plane.local_addr(),
            control_plane_metrics: control_plane.metrics_addr(),
            postgres_dsn: match &tls {
                Some(tls) => tls.verified(&server.server.dsn("postgres")),
                None => server.server.dsn("postgres"),
            },
            ca_file: tls.as_ref().map(|tls| tls.ca.as_path()),
            postgres_data: server.server.data_dir(),
            postgres_fallback: server.fallback.as_deref(),
            admin_token: &admin_token,
            tenant_tokens: &tenant_tokens,
        });
        tokio::select! {
            () = stop_signal.wait() => {}
            ended = &mut router => tracing::error!(outcome = ?ended, "the router stopped unexpectedly"),
        }
    }

    tracing::info!("stopping: router, control plane, postgresql");
    router_stop.cancel();
    if !router.is_finished() {
        match router.await {
            Ok(Err(error)) => tracing::warn!(error = %error, "router shutdown"),
            Err(error) => tracing::warn!(error = %error, "router task"),
            Ok(Ok(())) => {}
        }
    }
    control_plane.stop().await;
    server.server.stop().await?;
    tracing::info!("stopped");
    outcome.map(|_| ())
}

/// Ctrl-C and SIGTERM, both meaning "stop everything".
struct StopSignal {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// `addr` itself, or, when its port is 0, the same host with a port free right now: the
/// router reports no bound address, and the banner must name the real one.
fn concrete_port(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(probe.local_addr()?)
}

/// The control plane's configuration, parsed from flags like its binary does.
fn control_plane_config(
    args: &DevArgs,
    server: &silo_pg_server::PgServer,
    secrets: &secrets::DevSecrets,
    tls: Option<&tls::DevTls>,
) -> anyhow::Result<ControlPlaneConfig> {
    let dsn = |database: &str| match tls {
        Some(tls) => tls.verified(&server.dsn(database)),
        None => server.dsn(database),
    };
    let mut config = <ControlPlaneConfig as clap::Parser>::try_parse_from([
        "silo-control-plane".to_owned(),
        format!("--listen={}", args.control_plane_listen),
        format!("--metrics-listen={}", args.control_plane_metrics_listen),
        format!("--catalog-url={}", dsn(postgres::CATALOG_DATABASE)),
        format!(
            "--credentials-key={}",
            secrets.credentials_key.expose_secret()
        ),
        format!("--postgres-server=local={}", dsn("postgres")),
        "--jwt-algorithms=HS256".to_owned(),
        format!("--jwt-hmac-secret={}", secrets.jwt.expose_secret()),
        format!("--jwt-issuer={ISSUER}"),
        format!("--jwt-audience={AUDIENCE}"),
        format!("--shutdown-grace-secs={SHUTDOWN_GRACE_SECS}"),
        // A demo's usage shows database sizes within a minute, not after five.
        "--usage-size-interval-secs=30".to_owned(),
    ])?;
    // TLS is `--tls`'s alone: SILO_TLS_* exported for a real deployment must not turn it
    // on halfway.
    config.tls = server_tls(tls);
    Ok(config)
}

fn server_tls(tls: Option<&tls::DevTls>) -> silo_tls::grpc::ServerTlsArgs {
    silo_tls::grpc::ServerTlsArgs {
        tls_cert_file: tls.map(|tls| tls.cert.clone()),
        tls_key_file: tls.map(|tls| tls.key.clone()),
        tls_client_ca_file: None,
    }
}

/// The router's configuration, parsed from flags like its binary does.
fn router_config(
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    control_plane_url: &str,
    service_token: &str,
    jwt_secret: &SecretString,
    tls: Option<&tls::DevTls>,
) -> anyhow::Result<RouterConfig> {
    let mut config = <RouterConfig as clap::Parser>::try_parse_from([
        "silo-router".to_owned(),
        format!("--listen={listen}"),
        format!("--metrics-listen={metrics_listen}"),
        format!("--control-plane-url={control_plane_url}"),
        format!("--control-plane-token={service_token}"),
        "--jwt-algorithms=HS256".to_owned(),
        format!("--jwt-hmac-secret={}", jwt_secret.expose_secret()),
        format!("--jwt-issuer={ISSUER}"),
        format!("--jwt-audience={AUDIENCE}"),
        format!("--shutdown-grace-secs={SHUTDOWN_GRACE_SECS}"),
    ])?;
    // `--tls`'s alone, whatever SILO_TLS_* / SILO_CONTROL_PLANE_*_FILE say.
    config.tls = server_tls(tls);
    config.control_plane_ca_file = tls.map(|tls| tls.ca.clone());
    config.control_plane_cert_file = None;
    config.control_plane_key_file = None;
    Ok(config)
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn onboard(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
    token: &str,
    tenant: &str,
) -> anyhow::Result<()> {
    let create = pb::CreateTenantRequest {
        tenant_id: tenant.to_owned(),
        display_name: tenant.to_owned(),
        tier: String::new(),
        request_id: format!("silo-dev-{tenant}"),
    };
    let operation = match client.create_tenant(authorized(create, token)?).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(status) => anyhow::bail!("creating {tenant}: {}", status.message()),
    };
    loop {
        let get = pb::GetOperationRequest {
            operation_id: operation.operation_id.clone(),
        };
        let current = client
            .get_operation(authorized(get, token)?)
            .await?
            .into_inner();
        if current.done {
            anyhow::ensure!(
                current.status() == pb::OperationStatus::Succeeded,
                "onboarding {tenant} failed: {}",
                current.error
            );
            tracing::info!(tenant_id = tenant, "demo tenant active");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every demo tenant answers `SELECT 1` through the router: only then is the
/// printed call sure to work.
async fn wait_router_ready(
    router: SocketAddr,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    tenant_tokens: &[(String, String)],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{router}"))?
        .connect_timeout(Duration::from_secs(1));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let channel = endpoint.connect_lazy();
    let mut client = RouterClient::new(channel);
    for (tenant, token) in tenant_tokens {
        loop {
            let query = rpb::QueryRequest {
                statement: Some(rpb::Statement {
                    sql: "SELECT 1".to_owned(),
                    params: Vec::new(),
                }),
                max_rows: 1,
            };
            let error = match client.query(authorized(query, token)?).await {
                Ok(_) => break,
                Err(status) => status,
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the router did not serve {tenant} within 60 s: {:?}: {}",
                    error.code(),
                    error.message()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
