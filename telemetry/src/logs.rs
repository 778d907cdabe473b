//! Log and trace set-up for the binaries: human or JSON lines, `RUST_LOG` to filter, and
//! spans exported over OTLP/gRPC when an endpoint is configured.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, layer::SubscriberExt as _};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event (colour only on a terminal).
    Human,
    /// One JSON object per event, with the current span's fields.
    Json,
}

/// Where spans go: OpenTelemetry over OTLP/gRPC, off unless an endpoint is set.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TraceArgs {
    /// OTLP/gRPC endpoint spans are exported to, e.g. `http://otel-collector:4317`
    /// (OpenTelemetry's standard variable). Unset: spans are not exported. The service
    /// name is `OTEL_SERVICE_NAME` or the binary's.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// The installed exporter; dropping it exports the spans still buffered.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Exports every finished span now (a test, or before a planned exit).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The OTLP exporter could not be built (a malformed endpoint).
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// The endpoint configured.
        endpoint: String,
        /// What the exporter said.
        message: String,
    },
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info`. The database
/// driver's own debug logs (statement texts) stay off unless `RUST_LOG` names them.
pub fn init_logs(format: LogFormat) {
    let _ = init(format, &TraceArgs::default(), "silo");
}

/// Installs the global subscriber as [`init_logs`] does and, with `traces.otlp_endpoint`,
/// an OpenTelemetry layer exporting spans over OTLP/gRPC in batches as `service`. W3C
/// trace context (`traceparent`) is the propagation format either way. Must run inside
/// the tokio runtime (the exporter's channel lives on it).
///
/// Errors: the exporter cannot be built from the endpoint.
pub fn init(
    format: LogFormat,
    traces: &TraceArgs,
    service: &'static str,
) -> Result<Tracing, TracingError> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = traces
        .otlp_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.is_empty())
        .map(|endpoint| exporter(endpoint, service))
        .transpose()?;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    // Colour only for a person at a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Human => fmt::layer().with_target(false).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_target(false)
            .boxed(),
    };
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let subscriber = Registry::default().with(lines).with(otel).with(filter);
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(Tracing { provider })
}

fn exporter(endpoint: &str, service: &'static str) -> Result<SdkTracerProvider, TracingError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TracingError::Exporter {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build())
}
