//! A plain HTTP/1.1 endpoint: `GET /metrics` in the Prometheus text format, and the
//! health paths for probes that cannot speak gRPC over TLS: `GET /healthz` (the process
//! answers: 200) and `GET /readyz` (200 while the gRPC health service reports SERVING for
//! the whole server, else 503).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Readiness;

async fn respond(
    registry: Arc<Registry>,
    readiness: Readiness,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        Ok(response)
    };
    match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            let mut text = String::new();
            match encode(&mut text, &registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        (&http::Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&http::Method::GET, "/readyz") if readiness.is_ready() => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        (&http::Method::GET, "/readyz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics, /healthz and /readyz are here\n".into(),
        ),
    }
}

/// Binds `addr` and serves the registry and `readiness` until `shutdown`; returns the
/// bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let registry = registry.clone();
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    respond(registry.clone(), readiness.clone(), request)
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %error, "metrics connection ended");
                }
            });
        }
    });
    Ok(bound)
}
