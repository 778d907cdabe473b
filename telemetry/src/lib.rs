//! What both silo services share to be observed: log set-up, the Prometheus endpoint,
//! gRPC health and reflection, and per-method request metrics.

mod grpc;
mod logs;
mod metrics_http;
mod request_metrics;
mod throttle;

pub use grpc::{Health, Readiness, reflection};
pub use logs::{LogFormat, TraceArgs, Tracing, TracingError, init, init_logs};
pub use metrics_http::serve_metrics;
pub use request_metrics::{CallTenant, GrpcMetrics, GrpcMetricsLayer};
pub use throttle::Throttle;
