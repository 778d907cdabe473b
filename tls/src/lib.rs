//! TLS for every connection silo makes or accepts, on rustls with the aws-lc-rs provider
//! (no OpenSSL build dependency).
//!
//! - [`postgres`]: client TLS for PostgreSQL connections with libpq's `sslmode` semantics
//!   (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert`.
//! - [`grpc`]: TLS for both gRPC servers (certificate files reloaded when they change,
//!   optional client-certificate verification) and for silo's gRPC clients.

pub mod grpc;
pub mod postgres;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;

/// The one crypto provider silo's TLS uses: rustls' aws-lc-rs provider, named explicitly
/// so that no process-wide default has to be installed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
