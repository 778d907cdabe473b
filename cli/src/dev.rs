//! The embedded default: a local PostgreSQL server (data kept under `--data-dir`), the
//! control plane on it, and demo tenants onboarded through the real ControlPlane API.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use silo_auth::{Algorithm, StandardClaims, TokenSigner};
use silo_control_plane::{ControlPlaneConfig, Hooks};
use silo_pg_server::{PgServer, PgServerOptions};
use silo_proto::controlplane::v1::{self as pb, control_plane_client::ControlPlaneClient};
use silo_telemetry::LogFormat;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

const ISSUER: &str = "silo-dev";
const AUDIENCE: &str = "silo";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the local PostgreSQL server keeps its data (reused when present).
    #[arg(long, env = "SILO_DEV_DATA_DIR", default_value = ".silo-dev")]
    data_dir: PathBuf,
    /// Control-plane gRPC address.
    #[arg(
        long,
        env = "SILO_DEV_CONTROL_PLANE_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    control_plane_listen: String,
    /// Demo tenants onboarded at start.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    tenants: Vec<String>,
    /// Log format: `human` or `json`.
    #[arg(long, env = "SILO_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
}

/// Dev-only secrets, kept beside the data so tokens and sealed credentials survive restarts.
fn dev_secret(
    dir: &std::path::Path,
    name: &str,
    make: impl FnOnce() -> String,
) -> anyhow::Result<SecretString> {
    let path = dir.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    let value = make();
    std::fs::write(&path, &value).with_context(|| format!("writing {}", path.display()))?;
    Ok(SecretString::from(value))
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    silo_telemetry::init_logs(args.log_format);
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let secrets_dir = data_dir.join("secrets");
    std::fs::create_dir_all(&secrets_dir)?;
    let credentials_key = dev_secret(&secrets_dir, "credentials.key", || {
        silo_control_plane::crypto::CredentialCipher::generate_key()
            .expose_secret()
            .to_owned()
    })?;
    let jwt_secret = dev_secret(&secrets_dir, "jwt.secret", || {
        silo_control_plane::crypto::generate_password()
            .expose_secret()
            .to_owned()
    })?;

    let server = PgServer::start(PgServerOptions::persistent(data_dir.join("postgres")))
        .await
        .context("starting the local PostgreSQL server")?;
    let admin = server.connect("postgres").await?;
    let has_catalog = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = 'silo_catalog'",
            &[],
        )
        .await?
        .is_some();
    if !has_catalog {
        admin.batch_execute("CREATE DATABASE silo_catalog").await?;
    }

    let config = <ControlPlaneConfig as clap::Parser>::try_parse_from([
        "silo-control-plane".to_owned(),
        format!("--listen={}", args.control_plane_listen),
        format!("--catalog-url={}", server.dsn("silo_catalog")),
        format!("--credentials-key={}", credentials_key.expose_secret()),
        format!("--postgres-server=local={}", server.dsn("postgres")),
        "--jwt-algorithms=HS256".to_owned(),
        format!("--jwt-hmac-secret={}", jwt_secret.expose_secret()),
        format!("--jwt-issuer={ISSUER}"),
        format!("--jwt-audience={AUDIENCE}"),
    ])?;
    let shutdown = CancellationToken::new();
    let control_plane =
        silo_control_plane::start(config, Hooks::default(), shutdown.clone()).await?;
    let endpoint = format!("http://{}", control_plane.local_addr());

    let signer = TokenSigner::from_hmac_secret(&jwt_secret, Algorithm::HS256)?;
    let admin_token = signer.sign(
        &StandardClaims::new("silo-dev-admin", Duration::from_secs(7 * 24 * 3600))
            .issuer(ISSUER)
            .audience(AUDIENCE)
            .claim("role", "admin"),
    )?;
    let mut client = ControlPlaneClient::connect(endpoint.clone()).await?;
    for tenant in &args.tenants {
        onboard(&mut client, &admin_token, tenant).await?;
    }

    println!();
    println!("silo dev is ready");
    println!(
        "  PostgreSQL     {}  (data in {})",
        server.dsn("postgres"),
        data_dir.display()
    );
    println!("  control plane  {endpoint}");
    println!("  admin token    {admin_token}");
    println!("  tenants        {}", args.tenants.join(", "));
    println!();
    println!(
        "  try: grpcurl -plaintext -import-path proto -proto silo/controlplane/v1/controlplane.proto \\"
    );
    println!("         -H 'authorization: Bearer {admin_token}' \\");
    println!(
        "         {} silo.controlplane.v1.ControlPlane/ListTenants",
        control_plane.local_addr()
    );
    println!();
    println!("Ctrl-C stops everything.");

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping");
    control_plane.stop().await;
    server.stop().await?;
    Ok(())
}

async fn onboard(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
    token: &str,
    tenant: &str,
) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(pb::CreateTenantRequest {
        tenant_id: tenant.to_owned(),
        display_name: tenant.to_owned(),
        tier: String::new(),
        request_id: format!("silo-dev-{tenant}"),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let operation = match client.create_tenant(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(status) => anyhow::bail!("creating {tenant}: {}", status.message()),
    };
    loop {
        let mut get = tonic::Request::new(pb::GetOperationRequest {
            operation_id: operation.operation_id.clone(),
        });
        get.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let current = client.get_operation(get).await?.into_inner();
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
