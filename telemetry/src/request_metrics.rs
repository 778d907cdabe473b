//! Per-method call counts by gRPC code and latency histograms, as a tower layer around the
//! gRPC server, plus the request span every call's log lines carry.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tower::{Layer, Service};
use tracing::Instrument as _;

/// `method`, then `code` (call counts only), then `tenant_id` only on a server that labels
/// tenants: a label that is always empty would only cost the scrape.
type Labels = Vec<(&'static str, String)>;

/// The tenant a call acted for, set by the handler once it authenticated the call; the
/// request layer puts an empty one into every request's extensions and reads it back.
#[derive(Clone, Debug, Default)]
pub struct CallTenant(Arc<OnceLock<String>>);

impl CallTenant {
    pub fn set(&self, tenant: &str) {
        let _ = self.0.set(tenant.to_owned());
    }
}

/// The label value for a tenant: its id for the first `max` tenants seen, then `_other`,
/// so a hundred thousand tenants cannot blow up a scrape.
struct TenantLabels {
    max: usize,
    seen: RwLock<HashSet<String>>,
}

impl TenantLabels {
    fn label(&self, tenant: Option<&String>) -> String {
        let Some(tenant) = tenant else {
            return String::new();
        };
        // Almost every call is of a tenant already seen: a shared read lock serves it.
        if self.seen.read().is_ok_and(|seen| seen.contains(tenant)) {
            return tenant.clone();
        }
        let Ok(mut seen) = self.seen.write() else {
            return OTHER_TENANTS.to_owned();
        };
        if seen.contains(tenant) || (seen.len() < self.max && seen.insert(tenant.clone())) {
            tenant.clone()
        } else {
            OTHER_TENANTS.to_owned()
        }
    }
}

const OTHER_TENANTS: &str = "_other";

/// The request metrics of one server.
#[derive(Clone)]
pub struct GrpcMetrics {
    calls: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    tenants: Arc<TenantLabels>,
}

impl GrpcMetrics {
    fn labels(&self, method: &str, code: Option<String>, tenant: Option<&String>) -> Labels {
        let mut labels = vec![("method", method.to_owned())];
        if let Some(code) = code {
            labels.push(("code", code));
        }
        if self.tenants.max > 0 {
            labels.push(("tenant_id", self.tenants.label(tenant)));
        }
        labels
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl GrpcMetrics {
    /// Registers `<prefix>_grpc_calls` and `<prefix>_grpc_call_duration_seconds`, labelled
    /// by method, code and tenant (at most `max_tenant_labels` distinct tenants; 0: no
    /// tenant label at all).
    pub fn register(registry: &mut Registry, prefix: &str, max_tenant_labels: usize) -> Self {
        let metrics = Self {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            tenants: Arc::new(TenantLabels {
                max: max_tenant_labels,
                seen: RwLock::new(HashSet::new()),
            }),
        };
        registry.register(
            format!("{prefix}_grpc_calls"),
            "gRPC calls by method and status code",
            metrics.calls.clone(),
        );
        registry.register(
            format!("{prefix}_grpc_call_duration_seconds"),
            "time to the response headers of a gRPC call, by method",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics: Arc::new(self.clone()),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

/// A gRPC code's name from the `grpc-status` header (trailers-only responses carry it in
/// the headers; a stream that starts well counts as OK).
fn code_name(headers: &http::HeaderMap) -> String {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    format!("{code:?}")
}

/// Reads W3C trace context from gRPC metadata (HTTP/2 headers).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let tenant = CallTenant::default();
        request.extensions_mut().insert(tenant.clone());
        let metrics = self.metrics.clone();
        // The request span: handlers and the auth step add fields (tenant_id, rows, pool
        // wait) to it. It joins the caller's trace when the call carries W3C trace context
        // (`traceparent`), so an exported span sits under the calling service's.
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            method = %method,
            tenant_id = tracing::field::Empty,
            rows = tracing::field::Empty,
            pool_wait_us = tracing::field::Empty,
            move_hold_us = tracing::field::Empty,
        );
        // Only calls that carry trace context pay for reading it.
        if request.headers().contains_key("traceparent") {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&HeaderExtractor(request.headers()))
            });
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        }
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let started = Instant::now();
                let result = future.await;
                let code = match &result {
                    Ok(response) => code_name(response.headers()),
                    Err(_) => "Unknown".to_owned(),
                };
                let tenant_id = tenant.0.get();
                metrics
                    .latency
                    .get_or_create(&metrics.labels(&method, None, tenant_id))
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .calls
                    .get_or_create(&metrics.labels(&method, Some(code), tenant_id))
                    .inc();
                result
            }
            .instrument(span),
        )
    }
}
