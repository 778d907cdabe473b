//! The router's configuration: every flag has a `SILO_*` environment variable; secrets are
//! held in types that do not print them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use secrecy::SecretString;

use crate::core::CallLimits;
use crate::pool::PoolConfig;
use crate::routes::{LinkConfig, RouteCacheConfig};

/// A configuration the router cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Values that contradict each other or cannot be used; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// TLS files that cannot be used.
    #[error("tls: {0}")]
    Tls(#[from] silo_tls::grpc::GrpcTlsError),
}

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "silo-router",
    version,
    about = "silo router: SQL calls to each tenant's own database"
)]
/// The router's whole configuration: every flag also reads a `SILO_...` environment variable.
pub struct RouterConfig {
    /// Address the gRPC API listens on.
    #[arg(long, env = "SILO_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// The control plane's gRPC endpoint.
    #[arg(
        long,
        env = "SILO_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub control_plane_url: String,

    /// PEM CA certificates the control plane's certificate must chain to, with an
    /// `https://` control-plane URL. Unset: the system's CA certificates.
    #[arg(long, env = "SILO_CONTROL_PLANE_CA_FILE")]
    pub control_plane_ca_file: Option<PathBuf>,

    /// PEM certificate the router presents to the control plane (mutual TLS).
    #[arg(
        long,
        env = "SILO_CONTROL_PLANE_CERT_FILE",
        requires = "control_plane_key_file"
    )]
    pub control_plane_cert_file: Option<PathBuf>,

    /// PEM private key of the certificate presented to the control plane.
    #[arg(
        long,
        env = "SILO_CONTROL_PLANE_KEY_FILE",
        requires = "control_plane_cert_file"
    )]
    pub control_plane_key_file: Option<PathBuf>,

    /// Service token (role `router`) for ResolveTenant and WatchTenants.
    #[arg(long, env = "SILO_CONTROL_PLANE_TOKEN", value_parser = secret, hide_env_values = true)]
    pub control_plane_token: SecretString,

    /// Longest wait for a ResolveTenant answer or a connection to the control plane, in
    /// milliseconds.
    #[arg(long, env = "SILO_RESOLVE_TIMEOUT_MS", default_value_t = 2000)]
    pub resolve_timeout_ms: u64,

    /// HTTP/2 keepalive ping interval on the control-plane connection, in seconds.
    #[arg(long, env = "SILO_CONTROL_PLANE_KEEPALIVE_SECS", default_value_t = 2)]
    pub control_plane_keepalive_secs: u64,

    /// A keepalive ping unanswered this long drops the control-plane connection, in
    /// seconds.
    #[arg(
        long,
        env = "SILO_CONTROL_PLANE_KEEPALIVE_TIMEOUT_SECS",
        default_value_t = 3
    )]
    pub control_plane_keepalive_timeout_secs: u64,

    /// The tenant-event stream silent this long (it carries a heartbeat every 2 s) is
    /// reconnected, in seconds.
    #[arg(long, env = "SILO_CONTROL_PLANE_SILENCE_SECS", default_value_t = 6)]
    pub control_plane_silence_secs: u64,

    /// TLS of the gRPC API (`--tls-cert-file`, `--tls-key-file`, `--tls-client-ca-file`).
    #[command(flatten)]
    pub tls: silo_tls::grpc::ServerTlsArgs,

    /// How callers' JWTs are verified (algorithms, keys, issuer, audience, tenant claim).
    #[command(flatten)]
    pub jwt: JwtArgs,

    /// Claim holding a token's tenant.
    #[arg(long, env = "SILO_TENANT_CLAIM", default_value = crate::identity::DEFAULT_TENANT_CLAIM)]
    pub tenant_claim: String,

    /// Routes trusted without an event for this long (fallback only), in seconds.
    #[arg(long, env = "SILO_ROUTE_TTL_SECS", default_value_t = 300)]
    pub route_ttl_secs: u64,

    /// "Unknown tenant" remembered for this long, in milliseconds.
    #[arg(long, env = "SILO_ROUTE_NEGATIVE_TTL_MS", default_value_t = 2000)]
    pub route_negative_ttl_ms: u64,

    /// A route the control plane has not confirmed for this long is no longer served
    /// (its calls get UNAVAILABLE until it can be resolved), in seconds; 0 serves it for
    /// as long as the control plane cannot be asked (availability first).
    #[arg(long, env = "SILO_ROUTE_MAX_STALE_SECS", default_value_t = 0)]
    pub route_max_stale_secs: u64,

    /// Most tenant pools open at once (least recently used closed first).
    #[arg(long, env = "SILO_POOL_CAPACITY", default_value_t = 1000)]
    pub pool_capacity: u64,

    /// A tenant pool unused this long is closed, in seconds.
    #[arg(long, env = "SILO_POOL_IDLE_SECS", default_value_t = 300)]
    pub pool_idle_secs: u64,

    /// Connect timeout to a tenant database, in milliseconds.
    #[arg(long, env = "SILO_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    pub connect_timeout_ms: u64,

    /// Upper bound on any tenant's pool, whatever its tier says.
    #[arg(long, env = "SILO_MAX_CONNECTIONS_PER_TENANT", default_value_t = 64)]
    pub max_connections_per_tenant: u32,

    /// Ping each connection before lending it (one extra round trip per call, about
    /// 0.1 ms locally). Off by default: every connection is already checked by the reset
    /// that runs after each call, and one whose socket closed is never lent.
    #[arg(long, env = "SILO_POOL_TEST_ON_CHECKOUT", default_value_t = false, action = clap::ArgAction::Set)]
    pub pool_test_on_checkout: bool,

    /// Most connections over all tenants (0: no global cap).
    #[arg(long, env = "SILO_CONNECTION_BUDGET", default_value_t = 0)]
    pub connection_budget: u32,

    /// Rows a Query returns when the request sets no max_rows.
    #[arg(long, env = "SILO_DEFAULT_MAX_ROWS", default_value_t = 1000)]
    pub default_max_rows: usize,

    /// Most bytes (about) of rows in one response: a Query beyond it fails with
    /// RESOURCE_EXHAUSTED, QueryStream sends smaller batches. Keep it under the clients'
    /// gRPC message limit (4 MiB by default).
    #[arg(long, env = "SILO_MAX_RESPONSE_BYTES", default_value_t = crate::core::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,

    /// While a tenant's silo is moving (state MOVING), its new calls wait this long for the
    /// new route, in milliseconds; then UNAVAILABLE (to be retried). A call's own shorter
    /// deadline ends its wait with DEADLINE_EXCEEDED.
    #[arg(long, env = "SILO_MOVE_HOLD_MS", default_value_t = crate::core::DEFAULT_MOVE_HOLD.as_millis() as u64)]
    pub move_hold_ms: u64,

    /// An interactive transaction with no message for this long is rolled back, in seconds.
    #[arg(long, env = "SILO_TRANSACTION_IDLE_SECS", default_value_t = 30)]
    pub transaction_idle_secs: u64,

    /// Address of the Prometheus endpoint (`GET /metrics`).
    #[arg(long, env = "SILO_METRICS_LISTEN", default_value = "127.0.0.1:9151")]
    pub metrics_listen: SocketAddr,

    /// Tenants that get their own label value in call metrics; calls of later tenants are
    /// counted under `_other`, so a large fleet cannot blow up a scrape.
    #[arg(long, env = "SILO_MAX_TENANT_LABELS", default_value_t = 1000)]
    pub max_tenant_labels: usize,

    /// How often per-tenant usage records go to the control plane, in seconds; 0 turns
    /// usage metering off.
    #[arg(long, env = "SILO_USAGE_FLUSH_SECS", default_value_t = 10)]
    pub usage_flush_secs: u64,

    /// Most usage records (tenant, minute, method, code) held in memory while the control
    /// plane has not stored them; calls past it are not metered (and counted in
    /// `silo_router_usage_dropped_calls`).
    #[arg(long, env = "SILO_USAGE_MAX_RECORDS", default_value_t = 100_000)]
    pub usage_max_records: usize,

    /// On SIGTERM, how long calls in flight may take to finish before the router exits.
    #[arg(long, env = "SILO_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Log format: `human` or `json`.
    #[arg(long, env = "SILO_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,

    /// Span export (OpenTelemetry over OTLP/gRPC).
    #[command(flatten)]
    pub traces: silo_telemetry::TraceArgs,
}

pub use silo_telemetry::LogFormat;

impl RouterConfig {
    /// The route cache's sizes and lifetimes from these flags.
    pub fn route_cache(&self) -> RouteCacheConfig {
        RouteCacheConfig {
            ttl: Duration::from_secs(self.route_ttl_secs),
            negative_ttl: Duration::from_millis(self.route_negative_ttl_ms),
            max_stale: (self.route_max_stale_secs > 0)
                .then(|| Duration::from_secs(self.route_max_stale_secs)),
            ..RouteCacheConfig::default()
        }
    }

    /// The control-plane link's timeouts from these flags.
    pub fn link(&self) -> LinkConfig {
        LinkConfig {
            call_timeout: Duration::from_millis(self.resolve_timeout_ms),
            keepalive_interval: Duration::from_secs(self.control_plane_keepalive_secs),
            keepalive_timeout: Duration::from_secs(self.control_plane_keepalive_timeout_secs),
            silence: Duration::from_secs(self.control_plane_silence_secs),
        }
    }

    /// TLS of the link to the control plane: `Some` for an `https://` URL (the CA file and
    /// client certificate read and checked now), `None` for `http://`. Naming TLS files
    /// with an `http://` URL is an error rather than a silently plaintext link.
    pub fn control_plane_tls(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, ConfigError> {
        let files = silo_tls::grpc::ClientTls {
            ca_file: self.control_plane_ca_file.clone(),
            cert_file: self.control_plane_cert_file.clone(),
            key_file: self.control_plane_key_file.clone(),
        };
        if self.control_plane_url.starts_with("https://") {
            return Ok(Some(files.config()?));
        }
        if files != silo_tls::grpc::ClientTls::default() {
            return Err(ConfigError::Invalid(
                "--control-plane-ca-file, --control-plane-cert-file and --control-plane-key-file \
                 need an https:// --control-plane-url"
                    .into(),
            ));
        }
        Ok(None)
    }

    /// The pool registry's limits from these flags.
    pub fn pools(&self) -> PoolConfig {
        PoolConfig {
            capacity: self.pool_capacity,
            time_to_idle: Duration::from_secs(self.pool_idle_secs),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_connections_per_tenant: self.max_connections_per_tenant,
            test_on_check_out: self.pool_test_on_checkout,
            connection_budget: self.connection_budget,
        }
    }

    /// The usage meter these flags ask for (off with `--usage-flush-secs=0`).
    pub fn usage_meter(&self, metrics: crate::usage::UsageMetrics) -> crate::usage::UsageMeter {
        if self.usage_flush_secs == 0 {
            crate::usage::UsageMeter::off()
        } else {
            crate::usage::UsageMeter::new(self.usage_max_records, metrics)
        }
    }

    /// How often usage is shipped (a second at least).
    pub fn usage_flush(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.usage_flush_secs.max(1))
    }

    /// Per-call limits (rows, bytes) from these flags.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            default_max_rows: self.default_max_rows,
            max_response_bytes: self.max_response_bytes,
            move_hold: std::time::Duration::from_millis(self.move_hold_ms),
            ..CallLimits::default()
        }
    }
}

pub use silo_auth::JwtArgs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_secrets_do_not_print() {
        let config = RouterConfig::try_parse_from([
            "silo-router",
            "--control-plane-token",
            "very-secret-token",
            "--jwt-hmac-secret",
            "another-secret-value-of-32-bytes!!",
            "--jwt-algorithms",
            "HS256",
        ])
        .expect("parses");
        assert!(!config.pools().test_on_check_out);
        assert_eq!(config.tenant_claim, "tenant_id");
        let printed = format!("{config:?}");
        assert!(!printed.contains("very-secret-token"));
        assert!(!printed.contains("another-secret"));
        config.jwt.verifier_config().expect("valid jwt config");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        RouterConfig::command().debug_assert();
    }

    #[test]
    fn control_plane_tls_follows_the_url_scheme() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["silo-router", "--control-plane-token", "t"];
            args.extend_from_slice(extra);
            RouterConfig::try_parse_from(args).expect("parses")
        };
        assert!(parse(&[]).control_plane_tls().expect("plaintext").is_none());
        let error = parse(&["--control-plane-ca-file", "/nonexistent/ca.crt"])
            .control_plane_tls()
            .expect_err("a CA file with http://");
        assert!(error.to_string().contains("https://"), "{error}");
        let error = parse(&[
            "--control-plane-url",
            "https://cp:50052",
            "--control-plane-ca-file",
            "/nonexistent/ca.crt",
        ])
        .control_plane_tls()
        .expect_err("a CA file that is not there");
        assert!(error.to_string().contains("/nonexistent/ca.crt"), "{error}");
        assert!(
            RouterConfig::try_parse_from([
                "silo-router",
                "--control-plane-token",
                "t",
                "--control-plane-cert-file",
                "c.crt",
            ])
            .is_err(),
            "a client certificate without its key"
        );
    }

    #[test]
    fn exactly_one_key_source() {
        let config = RouterConfig::try_parse_from(["silo-router", "--control-plane-token", "t"])
            .expect("parses");
        assert!(config.jwt.verifier_config().is_err());
    }
}
