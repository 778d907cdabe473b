//! gRPC health (`grpc.health.v1`) and server reflection (v1 and v1alpha, so older clients
//! such as grpcurl 1.8 work too).

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The health service's handle: one status for the whole server ("") and one per service.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl Health {
    /// The reporter and the service to add to the server. Everything starts NOT_SERVING.
    pub async fn new(
        services: Vec<&'static str>,
    ) -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Self { reporter, services };
        health.set(false).await;
        (health, service)
    }

    /// Sets the whole server ("") and every service it was made with.
    pub async fn set(&self, serving: bool) {
        self.set_one("", serving).await;
        for service in &self.services {
            self.set_one(service, serving).await;
        }
    }

    /// Sets one name only: a service, or a dependency reported under its own name.
    pub async fn set_one(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }
}

/// Reflection services describing silo's APIs and the health service.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(silo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(silo_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// The connections `listener` accepts, with `TCP_NODELAY` and TCP keepalive. Tonic sets
/// these only on listeners it binds itself; without `TCP_NODELAY` a response can sit in
/// the kernel until the peer's delayed ACK.
pub fn accepting(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
