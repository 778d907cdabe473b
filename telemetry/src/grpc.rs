//! gRPC health (`grpc.health.v1`) and server reflection (v1 and v1alpha, so older clients
//! such as grpcurl 1.8 work too).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::{ServingStatus, server::HealthReporter};

/// Whether the server is ready: what its gRPC health service reports for the whole server
/// (""), readable by the plaintext metrics endpoint's `/readyz` for probes that cannot
/// speak TLS. Starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Whether the health service reports SERVING for the whole server.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
}

/// The health service's handle: one status for the whole server ("") and one per service.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
    readiness: Readiness,
}

impl Health {
    /// The reporter and the service to add to the server. Everything starts NOT_SERVING;
    /// `readiness` follows the whole server's status.
    pub async fn new(
        services: Vec<&'static str>,
        readiness: Readiness,
    ) -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Self {
            reporter,
            services,
            readiness,
        };
        health.set(false).await;
        (health, service)
    }

    /// Sets the whole server ("") and every service it was made with.
    pub async fn set(&self, serving: bool) {
        self.readiness.set(serving);
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
