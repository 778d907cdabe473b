//! [`ControlPlaneRoutes`] against a real gRPC peer: a scripted ControlPlane server that
//! answers ResolveTenant and WatchTenants and can drop the watch stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use secrecy::SecretString;
use silo_proto::controlplane::v1 as pb;
use silo_router::routes::{ControlPlaneRoutes, LinkConfig, WatchBackoff};
use silo_router::tenant::TenantState;
use silo_router::{Change, Invalidation, RouteError, RouteSource};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::harness::tenant_id;

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

type EventSender = mpsc::Sender<Result<pb::TenantEvent, Status>>;

#[derive(Default)]
struct Scripted {
    /// Each WatchTenants call: its from_sequence and from_head, and the sender feeding its
    /// stream.
    watches: Mutex<Vec<(u64, bool, EventSender)>>,
    /// The answer to the next WatchTenants call instead of a stream.
    refuse_next_watch: Mutex<Option<Status>>,
    tokens: Mutex<Vec<String>>,
}

/// The served side of [`Scripted`]: only ResolveTenant and WatchTenants, routed by hand so
/// that new ControlPlane RPCs do not need stubs here.
#[derive(Clone)]
struct Peer(Arc<Scripted>);

impl NamedService for Peer {
    const NAME: &'static str = "silo.controlplane.v1.ControlPlane";
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for Peer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let scripted = self.0.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/silo.controlplane.v1.ControlPlane/ResolveTenant" => {
                    Grpc::new(ProstCodec::default())
                        .unary(Resolve(scripted), request)
                        .await
                }
                "/silo.controlplane.v1.ControlPlane/WatchTenants" => {
                    Grpc::new(ProstCodec::default())
                        .server_streaming(Watch(scripted), request)
                        .await
                }
                _ => Status::unimplemented("not scripted").into_http(),
            })
        })
    }
}

struct Resolve(Arc<Scripted>);

impl Service<Request<pb::ResolveTenantRequest>> for Resolve {
    type Response = Response<pb::TenantRoute>;
    type Error = Status;
    type Future = BoxFuture<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<pb::ResolveTenantRequest>) -> Self::Future {
        let scripted = self.0.clone();
        Box::pin(async move { scripted.resolve_tenant(request) })
    }
}

struct Watch(Arc<Scripted>);

impl Service<Request<pb::WatchTenantsRequest>> for Watch {
    type Response = Response<Stream<pb::TenantEvent>>;
    type Error = Status;
    type Future = BoxFuture<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<pb::WatchTenantsRequest>) -> Self::Future {
        let scripted = self.0.clone();
        Box::pin(async move { scripted.watch_tenants(request) })
    }
}

impl Scripted {
    fn resolve_tenant(
        &self,
        request: Request<pb::ResolveTenantRequest>,
    ) -> Result<Response<pb::TenantRoute>, Status> {
        if let Some(token) = request.metadata().get("authorization") {
            self.tokens
                .lock()
                .expect("lock")
                .push(token.to_str().unwrap_or_default().to_owned());
        }
        match request.get_ref().tenant_id.as_str() {
            "acme" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "acme".into(),
                state: pb::TenantState::Active.into(),
                tier: "standard".into(),
                host: "127.0.0.1".into(),
                port: 5432,
                database: "silo_acme".into(),
                user: "acme".into(),
                password: "pw".into(),
                credentials_version: 3,
                limits: Some(pb::TierLimits {
                    max_connections: 4,
                    rate_per_second: 10,
                    burst: 20,
                    max_concurrent_calls: 2,
                    statement_timeout: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                }),
                sequence: 17,
                sslmode: "verify-full".into(),
                sslrootcert: "/etc/silo/tenant-ca/ca.pem".into(),
                config: Some(pb::RouteConfig {
                    version: "2-00000000000000ab".into(),
                    settings: [("beta".to_owned(), "true".to_owned())].into(),
                }),
                quota_exhausted: String::new(),
            })),
            "sleepy" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "sleepy".into(),
                state: pb::TenantState::Suspended.into(),
                sequence: 17,
                ..Default::default()
            })),
            // Answers a router cannot use: no state, a state it does not know, an active
            // tenant with nowhere to connect, a port out of range, another tenant's id.
            "unspecified" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "unspecified".into(),
                ..Default::default()
            })),
            "odd-state" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "odd-state".into(),
                state: 99,
                ..Default::default()
            })),
            "nowhere" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "nowhere".into(),
                state: pb::TenantState::Active.into(),
                ..Default::default()
            })),
            "big-port" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "big-port".into(),
                state: pb::TenantState::Active.into(),
                host: "127.0.0.1".into(),
                port: 70_000,
                ..Default::default()
            })),
            "bad-sslmode" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "bad-sslmode".into(),
                state: pb::TenantState::Active.into(),
                host: "127.0.0.1".into(),
                port: 5432,
                sslmode: "allow".into(),
                ..Default::default()
            })),
            "bad-id" => Ok(Response::new(pb::TenantRoute {
                tenant_id: "Not A Tenant".into(),
                state: pb::TenantState::Suspended.into(),
                ..Default::default()
            })),
            _ => Err(Status::not_found("tenant not found")),
        }
    }

    fn watch_tenants(
        &self,
        request: Request<pb::WatchTenantsRequest>,
    ) -> Result<Response<Stream<pb::TenantEvent>>, Status> {
        if let Some(status) = self.refuse_next_watch.lock().expect("lock").take() {
            return Err(status);
        }
        let (tx, rx) = mpsc::channel(16);
        let request = request.get_ref();
        self.watches
            .lock()
            .expect("lock")
            .push((request.from_sequence, request.from_head, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn next(events: &mut futures::stream::BoxStream<'static, Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .expect("in time")
        .expect("a change")
}

fn heartbeat(sequence: u64) -> pb::TenantEvent {
    pb::TenantEvent {
        sequence,
        tenant_id: String::new(),
        kind: pb::TenantEventKind::Heartbeat.into(),
        state: pb::TenantState::Unspecified.into(),
        occurred_at: None,
    }
}

fn event(sequence: u64, tenant: &str) -> pb::TenantEvent {
    pb::TenantEvent {
        sequence,
        tenant_id: tenant.into(),
        kind: pb::TenantEventKind::Suspended.into(),
        state: pb::TenantState::Suspended.into(),
        occurred_at: None,
    }
}

#[tokio::test]
async fn resolves_routes_and_follows_events_across_reconnects() {
    let scripted = Arc::new(Scripted::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Peer(scripted.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_lazy();
    let routes = ControlPlaneRoutes::new(
        channel,
        SecretString::from("svc-token"),
        &LinkConfig::default(),
    )
    .with_backoff(WatchBackoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    });

    let route = routes.resolve(&tenant_id("acme")).await.expect("route");
    assert_eq!(route.state, TenantState::Active);
    assert_eq!(
        (route.host.as_str(), route.port, route.credentials_version),
        ("127.0.0.1", 5432, 3)
    );
    assert_eq!(route.limits.max_concurrent_calls, 2);
    assert_eq!(route.limits.statement_timeout, Duration::from_secs(5));
    assert_eq!(route.config.version, "2-00000000000000ab");
    assert_eq!(route.config.settings["beta"], "true");
    assert_eq!(route.sequence, 17);
    assert_eq!(
        route.tls.to_string(),
        "sslmode=verify-full sslrootcert=/etc/silo/tenant-ca/ca.pem"
    );
    assert_eq!(
        scripted.tokens.lock().expect("lock").as_slice(),
        ["Bearer svc-token"]
    );
    let sleepy = routes.resolve(&tenant_id("sleepy")).await.expect("route");
    assert_eq!(sleepy.state, TenantState::Suspended);
    assert!(matches!(
        routes.resolve(&tenant_id("nobody")).await,
        Err(RouteError::NotFound)
    ));
    for (tenant, detail) in [
        ("unspecified", "state unspecified"),
        ("odd-state", "unknown state 99"),
        ("nowhere", "an active tenant without an endpoint"),
        ("big-port", "port"),
        (
            "bad-sslmode",
            "sslmode \"allow\" is not one of disable, prefer, require, verify-ca, verify-full",
        ),
        ("bad-id", "tenant id"),
    ] {
        match routes.resolve(&tenant_id(tenant)).await {
            Err(RouteError::Invalid(got)) => assert_eq!(got, detail, "{tenant}"),
            other => panic!("{tenant}: expected an invalid route, got {other:?}"),
        }
    }

    let mut events = routes.invalidations(shutdown.clone());
    let watch = |i: usize| {
        let scripted = scripted.clone();
        async move {
            crate::harness::eventually(
                Duration::from_secs(3),
                &format!("watch {i} was opened"),
                || async { scripted.watches.lock().expect("lock").len() > i },
            )
            .await;
            scripted.watches.lock().expect("lock")[i].clone()
        }
    };
    // A router that has just started watches from the head: the first message, a
    // heartbeat with the head's sequence, is a resync point.
    let (_, from_head, sender) = watch(0).await;
    assert!(from_head, "a new router starts at the head");
    sender.send(Ok(heartbeat(17))).await.expect("send");
    assert_eq!(next(&mut events).await, Change::Resync { sequence: 17 });
    sender.send(Ok(heartbeat(17))).await.expect("send");
    sender.send(Ok(event(18, "acme"))).await.expect("send");
    assert_eq!(
        next(&mut events).await,
        Change::Tenant(Invalidation {
            tenant_id: tenant_id("acme"),
            sequence: 18
        }),
        "later heartbeats are not changes"
    );

    // The stream fails: the router reconnects and resumes after the last event it saw.
    sender
        .send(Err(Status::unavailable("control plane restarting")))
        .await
        .expect("send");
    drop(sender);
    let (from, from_head, sender) = watch(1).await;
    assert_eq!((from, from_head), (18, false));
    sender.send(Ok(event(19, "globex"))).await.expect("send");
    assert_eq!(
        next(&mut events).await,
        Change::Tenant(Invalidation {
            tenant_id: tenant_id("globex"),
            sequence: 19
        })
    );

    // Back after a gap the control plane no longer keeps: OUT_OF_RANGE, then the head
    // and a resync instead of a replay.
    *scripted.refuse_next_watch.lock().expect("lock") = Some(Status::out_of_range(
        "events before sequence 500 are no longer kept",
    ));
    sender
        .send(Err(Status::unavailable("control plane restarting")))
        .await
        .expect("send");
    drop(sender);
    let (_, from_head, sender) = watch(2).await;
    assert!(
        from_head,
        "after OUT_OF_RANGE the router starts at the head"
    );
    sender.send(Ok(heartbeat(900))).await.expect("send");
    assert_eq!(next(&mut events).await, Change::Resync { sequence: 900 });
    drop(sender);

    // The control plane goes away entirely: resolution fails as unavailable, fast.
    shutdown.cancel();
    crate::harness::eventually(
        Duration::from_secs(3),
        "resolution to fail as unavailable once the control plane is gone",
        || async {
            matches!(
                routes.resolve(&tenant_id("acme")).await,
                Err(RouteError::Unavailable(_))
            )
        },
    )
    .await;
    let started = std::time::Instant::now();
    let down = routes.resolve(&tenant_id("acme")).await;
    assert!(matches!(down, Err(RouteError::Unavailable(_))), "{down:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "unavailable fast, not after a hang: {:?}",
        started.elapsed()
    );
}
