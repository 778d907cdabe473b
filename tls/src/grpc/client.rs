//! [`ClientTls`]: TLS for silo's own gRPC clients.

use std::path::PathBuf;

use rustls::RootCertStore;
use tonic::transport::{ClientTlsConfig, Identity};

use super::{GrpcTlsError, files};

/// The files a gRPC client's TLS comes from. The server's name is checked against its
/// certificate as the URL spells it (`https://control-plane.silo.svc:50052`: the
/// certificate must name `control-plane.silo.svc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates the server's certificate must chain to. Unset: the system's
    /// CA certificates (`/etc/ssl/certs` and the like, or `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain the client presents when the server asks (mutual TLS);
    /// needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`'s first certificate; needs `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Reads the files now (so a bad one fails at start-up, not at the first call) and
    /// returns the configuration for `Endpoint::tls_config`. Errors: a file that cannot be
    /// read or holds no certificate / key, a certificate that does not fit its key, only
    /// one of the certificate and key, no CA file and no system CA certificates.
    pub fn config(&self) -> Result<ClientTlsConfig, GrpcTlsError> {
        let roots = match &self.ca_file {
            Some(path) => {
                let roots = files::roots(path, &files::read(path)?)?;
                RootCertStore::clone(&roots)
            }
            None => system_roots()?,
        };
        let mut config = ClientTlsConfig::new().trust_anchors(roots.roots);
        match (&self.cert_file, &self.key_file) {
            (Some(cert_path), Some(key_path)) => {
                let cert = files::read(cert_path)?;
                let key = files::read(key_path)?;
                files::check_pair(
                    &format!(
                        "client certificate {} and key {}",
                        cert_path.display(),
                        key_path.display()
                    ),
                    files::certificates(cert_path, &cert)?,
                    files::private_key(key_path, &key)?,
                )?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(GrpcTlsError::Incomplete(
                    "a client certificate needs its key file",
                ));
            }
            (None, Some(_)) => {
                return Err(GrpcTlsError::Incomplete(
                    "a client key needs its certificate file",
                ));
            }
        }
        Ok(config)
    }
}

fn system_roots() -> Result<RootCertStore, GrpcTlsError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(error = %error, "a system CA certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(GrpcTlsError::NoSystemRoots);
    }
    Ok(roots)
}
