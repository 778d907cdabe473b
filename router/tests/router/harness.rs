//! A real PostgreSQL server, the router over real gRPC on 127.0.0.1:0, and a fake route
//! source the test controls (the control plane is not what these tests are about).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use silo_auth::{
    Algorithm, JwtVerifier, KeySource, SecretString, StandardClaims, TokenSigner, VerifierConfig,
};
use silo_pg_server::{PgServer, PgServerOptions};
use silo_proto::router::v1 as pb;
use silo_proto::router::v1::router_client::RouterClient;
use silo_router::pool::PoolConfig;
use silo_router::routes::RouteCacheConfig;
use silo_router::tenant::{Route, TenantId, TenantState, TierLimits};
use silo_router::{
    Authenticator, CallLimits, Change, Invalidation, RouteError, RouteSource, RouterCore,
};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const SECRET: &str = "router-tests-hmac-secret-of-at-least-32-bytes";

/// Routes the test sets by hand; `set` and `remove` play the control plane's event stream.
#[derive(Default)]
pub struct FakeRoutes {
    routes: Mutex<HashMap<TenantId, Route>>,
    sequence: Mutex<u64>,
    events: Mutex<Option<broadcast::Sender<Invalidation>>>,
    /// Set once the router has subscribed to `invalidations`.
    subscribed: tokio::sync::watch::Sender<bool>,
    pub resolves: Mutex<u64>,
}

impl FakeRoutes {
    pub fn set(&self, mut route: Route) {
        let sequence = {
            let mut sequence = self.sequence.lock().expect("lock");
            *sequence += 1;
            *sequence
        };
        route.sequence = sequence;
        let tenant_id = route.tenant_id.clone();
        self.routes
            .lock()
            .expect("lock")
            .insert(tenant_id.clone(), route);
        self.publish(Invalidation {
            tenant_id,
            sequence,
        });
    }

    /// Sends `event` to the router, which must be subscribed: an event nobody receives
    /// would leave the router serving a stale route and the test passing by luck.
    fn publish(&self, event: Invalidation) {
        let events = self.events.lock().expect("lock");
        let sender = events
            .as_ref()
            .expect("the router subscribed to invalidations before the test changed a route");
        if let Err(lost) = sender.send(event) {
            panic!("the router is no longer subscribed: {:?} was lost", lost.0);
        }
    }

    /// Waits until the router has subscribed to the event stream.
    pub async fn wait_subscribed(&self, within: Duration) {
        let mut subscribed = self.subscribed.subscribe();
        tokio::time::timeout(within, subscribed.wait_for(|s| *s))
            .await
            .unwrap_or_else(|_| {
                panic!("timed out after {within:?} waiting for the router to subscribe")
            })
            .expect("the harness keeps the sender");
    }

    /// Forgets the tenant (as after its deletion) and publishes the event.
    pub fn remove(&self, tenant: &str) {
        let sequence = {
            let mut sequence = self.sequence.lock().expect("lock");
            *sequence += 1;
            *sequence
        };
        self.routes.lock().expect("lock").remove(&tenant_id(tenant));
        self.publish(Invalidation {
            tenant_id: tenant_id(tenant),
            sequence,
        });
    }

    pub fn set_state(&self, tenant: &str, state: TenantState) {
        let mut route = self
            .routes
            .lock()
            .expect("lock")
            .get(&tenant_id(tenant))
            .cloned()
            .expect("known tenant");
        route.state = state;
        self.set(route);
    }
}

impl RouteSource for FakeRoutes {
    async fn resolve(&self, tenant: &TenantId) -> Result<Route, RouteError> {
        *self.resolves.lock().expect("lock") += 1;
        self.routes
            .lock()
            .expect("lock")
            .get(tenant)
            .cloned()
            .ok_or(RouteError::NotFound)
    }

    fn invalidations(&self, _shutdown: CancellationToken) -> BoxStream<'static, Change> {
        let (tx, rx) = broadcast::channel(1024);
        *self.events.lock().expect("lock") = Some(tx);
        self.subscribed.send_replace(true);
        BroadcastStream::new(rx)
            .filter_map(|e| async move { e.ok().map(Change::Tenant) })
            .boxed()
    }
}

pub fn tenant_id(id: &str) -> TenantId {
    TenantId::parse(id).expect("valid tenant id")
}

pub struct Harness {
    pub servers: Vec<PgServer>,
    pub routes: Arc<FakeRoutes>,
    pub core: Arc<RouterCore<FakeRoutes>>,
    pub client: RouterClient<Channel>,
    /// Where the router listens, for tests that want connections of their own.
    pub address: std::net::SocketAddr,
    signer: TokenSigner,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    pub async fn start(pools: PoolConfig) -> Self {
        Self::start_with(1, pools).await
    }

    pub async fn start_with(server_count: usize, pools: PoolConfig) -> Self {
        Self::start_custom(server_count, pools, Duration::from_secs(5), None).await
    }

    /// `start_with`, rolling interactive transactions back after `transaction_idle`
    /// without a message, and running the router on `runtime` when given (else on the
    /// test's own).
    pub async fn start_custom(
        server_count: usize,
        pools: PoolConfig,
        transaction_idle: Duration,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> Self {
        let mut servers = Vec::new();
        for _ in 0..server_count {
            servers.push(
                PgServer::start(PgServerOptions::for_tests())
                    .await
                    .expect("postgres starts"),
            );
        }
        let secret = SecretString::from(SECRET);
        let verifier = JwtVerifier::new(VerifierConfig::new(
            vec![Algorithm::HS256],
            KeySource::HmacSecret(secret.clone()),
        ))
        .expect("verifier");
        let signer = TokenSigner::from_hmac_secret(&secret, Algorithm::HS256).expect("signer");
        let routes = Arc::new(FakeRoutes::default());
        let core = Arc::new(RouterCore::new(
            Authenticator::new(verifier, "tenant_id"),
            routes.clone(),
            &RouteCacheConfig::default(),
            pools,
            CallLimits::default(),
        ));
        // Bound here, registered with the runtime that serves it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let serve = {
            let (core, shutdown) = (core.clone(), shutdown.clone());
            async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                silo_router::serve(
                    listener,
                    core,
                    transaction_idle,
                    silo_router::ServeTelemetry::unobserved(),
                    shutdown,
                )
                .await
            }
        };
        match runtime {
            Some(runtime) => drop(runtime.spawn(serve)),
            None => drop(tokio::spawn(serve)),
        }
        let client = RouterClient::connect(format!("http://{address}"))
            .await
            .expect("connects");
        // `serve` subscribes to the invalidation stream when it starts; routes set before
        // that would publish events nobody receives.
        routes.wait_subscribed(Duration::from_secs(5)).await;
        Self {
            servers,
            routes,
            core,
            client,
            address,
            signer,
            shutdown,
        }
    }

    /// A tenant with its own fresh database on server `server`.
    pub async fn add_tenant(&self, id: &str, server: usize, limits: TierLimits) -> String {
        let pg = &self.servers[server];
        let database = pg.create_unique_database(id).await.expect("database");
        self.set_route(id, server, &database, limits);
        database
    }

    /// (Re)publishes an ACTIVE route of tenant `id` to `database` on server 0.
    pub fn add_tenant_route(&self, id: &str, database: &str) {
        self.set_route(id, 0, database, TierLimits::default());
    }

    fn set_route(&self, id: &str, server: usize, database: &str, limits: TierLimits) {
        self.set_route_tls(id, server, database, limits, Default::default());
    }

    /// (Re)publishes an ACTIVE route of tenant `id` to `database` on server `server`, its
    /// connections using `tls`.
    pub fn set_route_tls(
        &self,
        id: &str,
        server: usize,
        database: &str,
        limits: TierLimits,
        tls: silo_tls::postgres::PgTls,
    ) {
        let user = self.servers[server].superuser().to_owned();
        self.set_route_full(id, server, database, &user, limits, tls);
    }

    /// (Re)publishes an ACTIVE route of tenant `id` to `database` on server 0, logging in
    /// as `user` (trusted on the test servers, no password).
    pub fn set_route_as(&self, id: &str, database: &str, user: &str, limits: TierLimits) {
        self.set_route_full(id, 0, database, user, limits, Default::default());
    }

    fn set_route_full(
        &self,
        id: &str,
        server: usize,
        database: &str,
        user: &str,
        limits: TierLimits,
        tls: silo_tls::postgres::PgTls,
    ) {
        let pg = &self.servers[server];
        self.routes.set(Route {
            tenant_id: tenant_id(id),
            state: TenantState::Active,
            tier: "standard".into(),
            host: pg.host().to_owned(),
            port: pg.port(),
            database: database.to_owned(),
            user: user.to_owned(),
            password: SecretString::from(""),
            credentials_version: 1,
            limits,
            sequence: 0,
            tls,
            config: Default::default(),
            quota_exhausted: String::new(),
        });
    }

    pub fn token(&self, claims: StandardClaims) -> String {
        self.signer.sign(&claims).expect("signs")
    }

    pub fn tenant_token(&self, tenant: &str) -> String {
        self.token(StandardClaims::new("svc", Duration::from_secs(600)).claim("tenant_id", tenant))
    }

    pub fn request<T>(&self, tenant: &str, message: T) -> tonic::Request<T> {
        authorized(message, &self.tenant_token(tenant), None)
    }
}

pub fn authorized<T>(message: T, token: &str, tenant_header: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    if let Some(tenant) = tenant_header {
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().expect("header"));
    }
    request
}

pub fn statement(sql: &str, params: Vec<pb::Value>) -> Option<pb::Statement> {
    Some(pb::Statement {
        sql: sql.to_owned(),
        params,
    })
}

pub fn query(sql: &str, params: Vec<pb::Value>) -> pb::QueryRequest {
    pb::QueryRequest {
        statement: statement(sql, params),
        max_rows: 0,
    }
}

pub fn execute(sql: &str, params: Vec<pb::Value>) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        statement: statement(sql, params),
    }
}

pub fn int(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Int64Value(v)),
    }
}

pub fn text(v: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(v.to_owned())),
    }
}

/// Polls `check` until it holds; panics naming `what` when `within` passes first.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An open Transaction stream of one tenant, begun.
pub struct OpenTransaction {
    requests: Option<tokio::sync::mpsc::Sender<pb::TransactionRequest>>,
    pub responses: tonic::Streaming<pb::TransactionResponse>,
}

impl OpenTransaction {
    /// Sends `kind` and waits for its answer.
    pub async fn call(
        &mut self,
        kind: pb::transaction_request::Kind,
    ) -> Result<pb::transaction_response::Kind, tonic::Status> {
        self.send(kind).await;
        self.next().await
    }

    /// Sends `kind` without waiting.
    pub async fn send(&mut self, kind: pb::transaction_request::Kind) {
        self.requests
            .as_ref()
            .expect("requests still open")
            .send(pb::TransactionRequest { kind: Some(kind) })
            .await
            .expect("send");
    }

    /// The next answer; an error when the stream ended instead.
    pub async fn next(&mut self) -> Result<pb::transaction_response::Kind, tonic::Status> {
        match self.responses.message().await? {
            Some(response) => Ok(response.kind.expect("kind")),
            None => Err(tonic::Status::unknown("the stream ended")),
        }
    }
}

impl Harness {
    /// Opens a Transaction stream for `tenant` and waits until it has begun.
    pub async fn begin(&self, tenant: &str) -> OpenTransaction {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::TransactionRequest {
            kind: Some(pb::transaction_request::Kind::Begin(pb::Begin::default())),
        })
        .await
        .expect("send");
        let mut client = self.client.clone();
        let responses = client
            .transaction(self.request(tenant, tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .expect("transaction")
            .into_inner();
        let mut open = OpenTransaction {
            requests: Some(tx),
            responses,
        };
        let begun = open.next().await.expect("begun");
        assert!(matches!(begun, pb::transaction_response::Kind::Begun(_)));
        open
    }
}

/// Backends of `admin`'s server running exactly `sql` right now.
pub async fn running(admin: &tokio_postgres::Client, sql: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
            &[&sql],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}
