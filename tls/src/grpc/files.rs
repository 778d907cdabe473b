//! Reading PEM files into what rustls takes, with errors that name the file.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::GrpcTlsError;

/// The bytes of `path` (symbolic links followed, as Kubernetes' `..data` links need).
pub(super) fn read(path: &Path) -> Result<Vec<u8>, GrpcTlsError> {
    std::fs::read(path).map_err(|source| GrpcTlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` block of `pem` (read from `path`), in order; at least one.
pub(super) fn certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, GrpcTlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| GrpcTlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(GrpcTlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The first private key of `pem` (PKCS#8, PKCS#1 or SEC1), read from `path`.
pub(super) fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, GrpcTlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| GrpcTlsError::Pem {
        path: path.to_owned(),
        source,
    })
}

/// The CA certificates of `pem` (read from `path`) as a root store; every certificate
/// must parse.
pub(super) fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, GrpcTlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, pem)? {
        roots
            .add(certificate)
            .map_err(|source| GrpcTlsError::Rustls {
                what: format!("CA certificate in {}", path.display()),
                source,
            })?;
    }
    Ok(Arc::new(roots))
}

/// Checks that `chain`'s first certificate and `key` belong together, the way rustls
/// checks them when it is handed both.
pub(super) fn check_pair(
    what: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(), GrpcTlsError> {
    rustls::sign::CertifiedKey::from_der(chain, key, &crate::provider())
        .map(drop)
        .map_err(|source| GrpcTlsError::Rustls {
            what: what.to_owned(),
            source,
        })
}
