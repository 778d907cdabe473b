//! Spans exported over OTLP/gRPC to a collector of the test's own (the OpenTelemetry
//! collector's gRPC service, in-process): a router call's span arrives under the caller's
//! trace (W3C `traceparent`), with the tenant, the rows and the pool wait, and never the
//! statement's parameters.

use std::time::Duration;

use futures::StreamExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use silo_control_plane::Hooks;
use silo_proto::router::v1 as rpb;
use silo_router::pool::PoolConfig;
use silo_tests::{
    TestEnv, eventually,
    router::{TestRouter, call, statement, tenant_token, text},
};
use tokio::sync::mpsc;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_call_is_exported_under_the_callers_trace() {
    let (sender, mut exported) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(sender)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tracing = silo_telemetry::init(
        silo_telemetry::LogFormat::Json,
        &silo_telemetry::TraceArgs {
            otlp_endpoint: Some(format!("http://{address}")),
        },
        "silo-router",
    )
    .expect("exporter");

    let env = TestEnv::start(1).await;
    let cp = env.control_plane(Hooks::default()).await;
    cp.onboard(&["acme"]).await;
    let router = TestRouter::start(&cp, PoolConfig::default()).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = call(
        rpb::QueryRequest {
            statement: statement("SELECT $1::text", vec![text("parameter-never-exported")]),
            max_rows: 0,
        },
        &tenant_token("acme"),
        None,
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    router.client.clone().query(request).await.expect("query");
    let batch = rpb::BatchRequest {
        statements: ["SELECT 1", "SELECT 1 UNION ALL SELECT 2"]
            .into_iter()
            .map(|sql| rpb::Statement {
                sql: sql.into(),
                params: vec![],
            })
            .collect(),
    };
    router
        .client
        .clone()
        .batch(call(batch, &tenant_token("acme"), None))
        .await
        .expect("batch");
    // Streaming calls: their rows flow after the handler has returned.
    let streamed = router
        .client
        .clone()
        .query_stream(call(
            rpb::QueryStreamRequest {
                statement: statement("SELECT generate_series(1, 5)", vec![]),
                batch_size: 2,
            },
            &tenant_token("acme"),
            None,
        ))
        .await
        .expect("query stream")
        .into_inner();
    let batches: Vec<_> = streamed.collect().await;
    assert_eq!(batches.len(), 3, "{batches:?}");
    let messages = [
        rpb::transaction_request::Kind::Begin(rpb::Begin::default()),
        rpb::transaction_request::Kind::Query(rpb::QueryRequest {
            statement: statement("SELECT generate_series(1, 4)", vec![]),
            max_rows: 0,
        }),
        rpb::transaction_request::Kind::Execute(rpb::ExecuteRequest {
            statement: statement(
                "CREATE TEMP TABLE t AS SELECT generate_series(1, 3) AS n",
                vec![],
            ),
        }),
        rpb::transaction_request::Kind::Commit(rpb::Commit {}),
    ]
    .map(|kind| rpb::TransactionRequest { kind: Some(kind) });
    let responses = router
        .client
        .clone()
        .transaction(call(
            futures::stream::iter(messages),
            &tenant_token("acme"),
            None,
        ))
        .await
        .expect("transaction")
        .into_inner();
    let responses: Vec<_> = responses.collect().await;
    assert!(responses.iter().all(Result::is_ok), "{responses:?}");
    tracing.flush();

    let mut spans: Vec<Span> = Vec::new();
    let (span, batch_span, stream_span, transaction_span) = eventually(
        Duration::from_secs(10),
        "the calls' spans at the collector",
        || {
            while let Ok(batch) = exported.try_recv() {
                for resource in batch.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
            }
            let named = |name: &str| spans.iter().find(|span| span.name == name).cloned();
            let found = (|| {
                Some((
                    named("/silo.router.v1.Router/Query")?,
                    named("/silo.router.v1.Router/Batch")?,
                    named("/silo.router.v1.Router/QueryStream")?,
                    named("/silo.router.v1.Router/Transaction")?,
                ))
            })();
            if found.is_none() {
                tracing.flush();
            }
            std::future::ready(found)
        },
    )
    .await;
    assert_eq!(
        attribute(&batch_span, "rows").as_deref(),
        Some("3"),
        "rows of the whole batch"
    );
    assert_eq!(
        attribute(&stream_span, "rows").as_deref(),
        Some("5"),
        "rows of every batch of the stream"
    );
    assert_eq!(
        attribute(&transaction_span, "rows").as_deref(),
        Some("7"),
        "rows returned and affected in the transaction"
    );
    assert_eq!(
        attribute(&transaction_span, "tenant_id").as_deref(),
        Some("acme")
    );
    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, trace_id, "the span joins the caller's trace");
    let parent: String = span
        .parent_span_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(parent, "00f067aa0ba902b7", "under the caller's span");
    assert_eq!(attribute(&span, "tenant_id").as_deref(), Some("acme"));
    assert_eq!(attribute(&span, "rows").as_deref(), Some("1"));
    assert!(attribute(&span, "pool_wait_us").is_some(), "{span:?}");
    let everything = format!("{spans:?}");
    assert!(
        !everything.contains("parameter-never-exported"),
        "a statement parameter was exported"
    );
    cp.stop().await;
}
