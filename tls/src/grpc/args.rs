//! [`ServerTlsArgs`]: the TLS flags both gRPC servers take.

use std::path::PathBuf;
use std::sync::Arc;

use super::{GrpcTlsError, ServerTls, ServerTlsFiles};

/// TLS of a gRPC server, from flags or `SILO_TLS_*` variables. Neither certificate nor
/// key: plaintext gRPC.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain the gRPC server presents (TLS is off without it); read again
    /// when the file changes, so a rotated certificate needs no restart.
    #[arg(long, env = "SILO_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the certificate.
    #[arg(long, env = "SILO_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificates of client certificates: with it, every client must present a
    /// certificate signed by one of them (mutual TLS).
    #[arg(long, env = "SILO_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The files, or `None` when TLS is off; an error when only some of the flags that
    /// belong together are set.
    pub fn files(&self) -> Result<Option<ServerTlsFiles>, GrpcTlsError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
            })),
            (None, None) if self.tls_client_ca_file.is_none() => Ok(None),
            (None, None) => Err(GrpcTlsError::Incomplete(
                "--tls-client-ca-file needs --tls-cert-file and --tls-key-file",
            )),
            (Some(_), None) => Err(GrpcTlsError::Incomplete(
                "--tls-cert-file needs --tls-key-file",
            )),
            (None, Some(_)) => Err(GrpcTlsError::Incomplete(
                "--tls-key-file needs --tls-cert-file",
            )),
        }
    }

    /// The server's TLS, its files read and checked now; `None` when TLS is off.
    pub fn load(&self) -> Result<Option<Arc<ServerTls>>, GrpcTlsError> {
        self.files()?
            .map(|files| ServerTls::load(files).map(Arc::new))
            .transpose()
    }
}
