//! gRPC server and client TLS.
//!
//! - [`ServerTls`]: the servers' certificate chain, key and (for mutual TLS) client CA,
//!   read from PEM files and read again when they change, so a certificate rotated in
//!   place (cert-manager renewing a Kubernetes Secret) is used by new connections without a
//!   restart. [`ServerTlsArgs`] holds the flags both servers take.
//! - [`Incoming`]: the connections tonic serves (`serve_with_incoming_shutdown`): accepted
//!   TCP, then a TLS handshake per connection, concurrently and with a timeout, or the plain
//!   TCP stream when TLS is off.
//! - [`ClientTls`]: a tonic [`ClientTlsConfig`](tonic::transport::ClientTlsConfig) for
//!   silo's own gRPC clients (the router's link to the control plane, `siloctl`): a CA file
//!   or the system roots, and an optional client certificate.

mod args;
mod client;
mod files;
mod incoming;
mod server;

use std::path::PathBuf;

pub use args::ServerTlsArgs;
pub use client::ClientTls;
pub use incoming::{DEFAULT_HANDSHAKE_TIMEOUT, Incoming, ServerIo};
pub use server::{DEFAULT_CHECK_INTERVAL, ServerTls, ServerTlsFiles};

/// TLS settings that cannot be used: a file that cannot be read or holds no usable PEM, a
/// certificate that does not fit its key, flags that belong together given alone.
#[derive(Debug, thiserror::Error)]
pub enum GrpcTlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file (chain or CA bundle) holds no `CERTIFICATE` block.
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the material: a key that does not match its certificate, a CA
    /// certificate it cannot parse, a key type it does not support.
    #[error("{what}: {source}")]
    Rustls {
        /// Which material (`server certificate and key`, `client certificate and key`,
        /// `CA certificate in <file>`).
        what: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the client CA file.
    #[error("client CA {path}: {source}")]
    ClientVerifier {
        /// The client CA file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// No CA file was given and the system has no CA certificates to trust instead.
    #[error("no system CA certificates found; name a CA file")]
    NoSystemRoots,
    /// Settings that go together were given alone; the message names the flags.
    #[error("{0}")]
    Incomplete(&'static str),
}

#[cfg(test)]
mod tests;
