//! PostgreSQL client TLS with libpq's `sslmode` and `sslrootcert` semantics.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and verifies nothing itself:
//! verification belongs to the TLS connector. [`PgTls`] is the libpq side of it: the mode
//! decides whether TLS is attempted, demanded, and how much of the server's certificate is
//! checked ([libpq, "SSL Mode Descriptions"](https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-SSLMODE-STATEMENTS)):
//!
//! | sslmode       | TLS                  | certificate checked                       |
//! |---------------|----------------------|-------------------------------------------|
//! | `disable`     | never                | -                                         |
//! | `prefer`      | if the server has it | no (as `verify-ca` when `sslrootcert` set) |
//! | `require`     | always               | no (as `verify-ca` when `sslrootcert` set) |
//! | `verify-ca`   | always               | chain to `sslrootcert`                    |
//! | `verify-full` | always               | chain, and the host name or IP address    |
//!
//! `sslrootcert` is a PEM file of trusted CA certificates (for RDS, Amazon's
//! `global-bundle.pem`), or `system` for the operating system's store, as in libpq 16.
//! Without it, `verify-ca` and `verify-full` are refused when the settings are built (libpq
//! would look for `~/.postgresql/root.crt`; a service should name its trust explicitly).
//!
//! A DSN names these settings the way libpq does (`?sslmode=verify-full&sslrootcert=/ca.pem`
//! in a URL, `sslmode=verify-full sslrootcert=/ca.pem` in key/value form); [`parse_dsn`]
//! takes them out and hands the rest to tokio-postgres.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use thiserror::Error;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every silo PostgreSQL connection uses; with `sslmode=disable` tokio-postgres
/// never calls it.
pub type PgConnector = MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, plaintext otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless `sslrootcert` is set).
    Require,
    /// TLS, and the certificate chains to `sslrootcert`.
    VerifyCa,
    /// TLS, the certificate chains to `sslrootcert` and names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = PgTlsError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(match raw {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries plaintext first; a router must not quietly end up
            // plaintext against a server that offers TLS.
            other => return Err(PgTlsError::SslMode(other.to_owned())),
        })
    }
}

/// libpq's `sslrootcert`: where trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RootCerts {
    /// A PEM file with one or more CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

impl RootCerts {
    /// Reads libpq's spelling: `system`, or a file path.
    pub fn parse(raw: &str) -> Self {
        if raw == "system" {
            RootCerts::System
        } else {
            RootCerts::File(PathBuf::from(raw))
        }
    }
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File(path) => write!(f, "{}", path.display()),
            RootCerts::System => f.write_str("system"),
        }
    }
}

/// How one kind of PostgreSQL connection uses TLS: `sslmode` and `sslrootcert`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PgTls {
    /// libpq's `sslmode`.
    pub mode: SslMode,
    /// libpq's `sslrootcert`; required by `verify-ca` and `verify-full`.
    pub root_certs: Option<RootCerts>,
}

/// What is wrong with TLS settings; every message names the setting.
#[derive(Debug, Error)]
pub enum PgTlsError {
    /// An `sslmode` other than libpq's five.
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    /// `verify-ca` / `verify-full` without `sslrootcert`.
    #[error("sslmode={0} needs sslrootcert (a PEM file of CA certificates, or `system`)")]
    RootCertsMissing(SslMode),
    /// The `sslrootcert` file cannot be read or holds no certificate.
    #[error("sslrootcert {path}: {message}")]
    RootCerts {
        /// The file named.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A libpq TLS setting silo does not implement (client certificates).
    #[error("{0} is not supported")]
    Unsupported(String),
    /// The DSN does not parse (the message never repeats the DSN: it may hold a password).
    #[error("the DSN does not parse: {0}")]
    Dsn(String),
}

impl PgTls {
    /// Settings from libpq's two values as they appear in a DSN or a tiers file.
    ///
    /// Errors: an unknown `sslmode`; `verify-*` without `sslrootcert`.
    pub fn new(sslmode: Option<&str>, sslrootcert: Option<&str>) -> Result<Self, PgTlsError> {
        let tls = PgTls {
            mode: sslmode.map(str::parse).transpose()?.unwrap_or_default(),
            root_certs: sslrootcert
                .filter(|raw| !raw.is_empty())
                .map(RootCerts::parse),
        };
        tls.check()?;
        Ok(tls)
    }

    /// No TLS (`sslmode=disable`).
    pub fn disabled() -> Self {
        PgTls {
            mode: SslMode::Disable,
            root_certs: None,
        }
    }

    fn check(&self) -> Result<(), PgTlsError> {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull if self.root_certs.is_none() => {
                Err(PgTlsError::RootCertsMissing(self.mode))
            }
            _ => Ok(()),
        }
    }

    /// Sets tokio-postgres' own `ssl_mode` to match: it decides whether the TLS request is
    /// sent and whether a server without TLS is accepted.
    /// libpq ignores `sslmode` on Unix-domain sockets (PostgreSQL offers no TLS there), so
    /// a config whose hosts are all sockets gets `disable`.
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        let sockets_only = config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, tokio_postgres::config::Host::Unix(_)));
        if sockets_only && !config.get_hosts().is_empty() {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            return;
        }
        config.ssl_mode(match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    }

    /// The connector for these settings: reads `sslrootcert` now.
    ///
    /// Errors: the CA file cannot be read, holds no certificate, or the system store is
    /// empty.
    pub fn connector(&self) -> Result<PgConnector, PgTlsError> {
        self.check()?;
        let provider = crate::provider();
        let roots = self.root_certs.as_ref().map(load_roots).transpose()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => web_pki(roots, &provider)?,
            // libpq: "if a root CA file exists, the behavior of sslmode=require will be the
            // same as that of verify-ca".
            (SslMode::VerifyCa | SslMode::Require | SslMode::Prefer, Some(roots)) => {
                Arc::new(ChainOnly(web_pki(roots, &provider)?))
            }
            (SslMode::Disable, _) | (_, None) => Arc::new(Unverified(provider.clone())),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError::Unsupported(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

impl fmt::Display for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)?;
        if let Some(roots) = &self.root_certs {
            write!(f, " sslrootcert={roots}")?;
        }
        Ok(())
    }
}

fn load_roots(source: &RootCerts) -> Result<RootCertStore, PgTlsError> {
    let (certs, path): (Vec<CertificateDer<'static>>, String) = match source {
        RootCerts::File(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| PgTlsError::RootCerts {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
            (certs, shown)
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            (found.certs, "system".to_owned())
        }
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(PgTlsError::RootCerts {
            path,
            message: "no CA certificate in it".into(),
        });
    }
    Ok(roots)
}

fn web_pki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, PgTlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PgTlsError::RootCerts {
            path: "sslrootcert".into(),
            message: e.to_string(),
        })
}

/// `verify-ca`: the chain must end at a trusted CA; the name in it is not compared with the
/// host (libpq's behaviour).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require` without `sslrootcert`: encryption without authentication of the
/// server, as libpq does. The handshake signature is still checked, so the session key is
/// bound to the certificate presented.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connectors built once per distinct settings (a CA bundle such as RDS' is ~150 KiB of PEM;
/// a router opens pools for thousands of tenants). A CA file whose modification time changed
/// is read again.
#[derive(Default)]
pub struct PgConnectors {
    built: Mutex<HashMap<PgTls, (Option<SystemTime>, PgConnector)>>,
}

impl PgConnectors {
    /// The connector for `tls`, built on first use or when its CA file changed.
    ///
    /// Errors: as [`PgTls::connector`].
    pub fn get(&self, tls: &PgTls) -> Result<PgConnector, PgTlsError> {
        let modified = match &tls.root_certs {
            Some(RootCerts::File(path)) => modified(path),
            _ => None,
        };
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, connector)) = built.get(tls)
            && *at == modified
        {
            return Ok(connector.clone());
        }
        let connector = tls.connector()?;
        built.insert(tls.clone(), (modified, connector.clone()));
        Ok(connector)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// What went wrong with TLS when a PostgreSQL connection failed, in words fit for whoever the
/// connection served: the certificate problem, never a host name, address or secret.
/// `None` when the failure was not about TLS.
pub fn tls_failure(error: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(rustls) = current.downcast_ref::<rustls::Error>() {
            return Some(describe(rustls));
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(rustls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(describe(rustls));
        }
        source = current.source();
    }
    // tokio-postgres' own words when the server answers the TLS request with "no".
    error
        .to_string()
        .contains("server does not support TLS")
        .then(|| {
            "TLS: the server does not accept TLS connections (the sslmode demands TLS)".to_owned()
        })
}

fn describe(error: &rustls::Error) -> String {
    let problem = match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => {
                "the server's certificate is not signed by a CA in sslrootcert".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host connected to (sslmode=verify-full)"
                    .to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".to_owned()
            }
            CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
            CertificateError::BadSignature => {
                "the server's certificate has a bad signature".to_owned()
            }
            other => format!("the server's certificate is not accepted ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the TLS handshake ({alert:?})")
        }
        other => format!("the TLS handshake failed ({other})"),
    };
    format!("TLS: {problem}")
}

/// A DSN split into what tokio-postgres reads and the TLS settings it does not.
///
/// Accepts both libpq forms: `postgres://user:pw@host:port/db?sslmode=verify-full&sslrootcert=/ca.pem`
/// and `host=h port=5432 sslmode=verify-full sslrootcert='/ca.pem'`. Without `sslmode`, the
/// mode is libpq's default, `prefer`.
///
/// Errors: the DSN does not parse (the error never contains the DSN); bad TLS settings;
/// `sslcert`/`sslkey` (client certificates are not supported).
pub fn parse_dsn(dsn: &str) -> Result<(tokio_postgres::Config, PgTls), PgTlsError> {
    let dsn = dsn.trim();
    let (rest, settings) = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        split_url(dsn)?
    } else {
        split_key_values(dsn)?
    };
    let mut sslmode = None;
    let mut sslrootcert = None;
    for (key, value) in settings {
        match key.as_str() {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => sslrootcert = Some(value),
            other => return Err(PgTlsError::Unsupported(other.to_owned())),
        }
    }
    let tls = PgTls::new(sslmode.as_deref(), sslrootcert.as_deref())?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| PgTlsError::Dsn(without_dsn(&e.to_string())))?;
    tls.apply(&mut config);
    Ok((config, tls))
}

/// tokio-postgres' parse errors name an option or say "invalid connection string"; keep only
/// the first clause so that nothing of the DSN itself can appear.
fn without_dsn(message: &str) -> String {
    message
        .split(':')
        .next()
        .unwrap_or("invalid")
        .trim()
        .to_owned()
}

const TAKEN: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn split_url(dsn: &str) -> Result<(String, Vec<(String, String)>), PgTlsError> {
    let Some((base, query)) = dsn.split_once('?') else {
        return Ok((dsn.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TAKEN.contains(&key) {
            taken.push((key.to_owned(), percent_decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn percent_decode(raw: &str) -> Result<String, PgTlsError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgTlsError::Dsn("bad percent-encoding".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgTlsError::Dsn("bad percent-encoding".into()))
}

/// libpq's key/value form: `key = value` pairs separated by spaces, values optionally in
/// single quotes with `\'` and `\\` escapes.
fn split_key_values(dsn: &str) -> Result<(String, Vec<(String, String)>), PgTlsError> {
    let mut kept = String::new();
    let mut taken = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(PgTlsError::Dsn(format!("missing `=` after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(PgTlsError::Dsn("unterminated quoted value".into())),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if TAKEN.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push_str(&format!("{key}='{quoted}' "));
        }
    }
    Ok((kept, taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_settings_are_taken_out_and_the_rest_parses() {
        let (config, tls) = parse_dsn(
            "postgres://admin:pw@db.example:6432/postgres?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("parses");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(
            tls.root_certs,
            Some(RootCerts::File(PathBuf::from("/etc/ca.pem")))
        );
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_ports(), &[6432]);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn key_value_settings_are_taken_out_and_quoting_survives() {
        let (config, tls) = parse_dsn(
            r"host=127.0.0.1 port = 5433 password='it\'s a \\secret' sslmode=verify-ca sslrootcert='/a b/ca.pem' user=admin",
        )
        .expect("parses");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(
            tls.root_certs,
            Some(RootCerts::File(PathBuf::from("/a b/ca.pem")))
        );
        assert_eq!(config.get_password(), Some(&br"it's a \secret"[..]));
        assert_eq!(config.get_user(), Some("admin"));
    }

    #[test]
    fn without_sslmode_the_mode_is_prefer() {
        let (config, tls) = parse_dsn("postgres://u@h/db").expect("parses");
        assert_eq!(tls, PgTls::default());
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let (config, _) = parse_dsn("postgres://u@h/db?sslmode=disable").expect("parses");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn verification_without_root_certificates_is_refused() {
        for dsn in [
            "postgres://u@h/db?sslmode=verify-full",
            "host=h sslmode=verify-ca",
        ] {
            let error = parse_dsn(dsn).expect_err(dsn);
            assert!(matches!(error, PgTlsError::RootCertsMissing(_)), "{error}");
        }
    }

    #[test]
    fn unknown_modes_and_client_certificates_are_refused_by_name() {
        let error = parse_dsn("postgres://u@h/db?sslmode=allow").expect_err("allow");
        assert!(error.to_string().contains("\"allow\""), "{error}");
        let error = parse_dsn("host=h sslcert=/c.pem").expect_err("sslcert");
        assert_eq!(error.to_string(), "sslcert is not supported");
    }

    #[test]
    fn a_dsn_that_does_not_parse_is_not_repeated_in_the_error() {
        let error = parse_dsn("postgres://u:hunter2@h:notaport/db").expect_err("bad port");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn a_root_certificate_file_without_certificates_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("silo-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let tls = PgTls::new(Some("verify-full"), path.to_str()).expect("settings");
        let error = tls.connector().map(|_| ()).expect_err("empty file");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(error.to_string().contains("empty.pem"), "{error}");
    }
}

#[cfg(test)]
mod handshake_tests {
    //! Against a TLS server of the test's own (tokio-rustls, after PostgreSQL's SSLRequest
    //! exchange): what the connector sends and accepts.

    use std::sync::Arc;

    use rcgen::{CertificateParams, KeyPair};
    use rustls::ServerConfig;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server for `names` that answers one SSLRequest with 'S', completes the handshake
    /// if the client accepts it, and reports the SNI it received (`None`: no SNI, or the
    /// handshake failed). Returns its port, the certificate's PEM and the report.
    async fn sni_server(names: &[&str]) -> (u16, String, tokio::task::JoinHandle<Option<String>>) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.ok()?;
            let mut request = [0u8; 8];
            socket.read_exact(&mut request).await.ok()?;
            socket.write_all(b"S").await.ok()?;
            let tls = acceptor.accept(socket).await.ok()?;
            tls.get_ref().1.server_name().map(str::to_owned)
        });
        (port, cert.pem(), task)
    }

    async fn attempt(tls: &PgTls, host: &str, port: u16) {
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user("u")
            .connect_timeout(std::time::Duration::from_secs(5));
        tls.apply(&mut config);
        // The fake server never answers the startup message: the attempt fails after the
        // handshake, which is all this looks at.
        let connector = tls.connector().expect("connector");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), config.connect(connector))
            .await;
    }

    /// PgBouncer sent no SNI below verify-full, and SNI-routed providers (Neon, Render)
    /// refused it: the name goes out whatever the mode.
    #[tokio::test]
    async fn every_mode_that_uses_tls_sends_the_host_name_as_sni() {
        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let (port, pem, received) = sni_server(&["localhost"]).await;
            let dir = tempfile_dir(mode);
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, pem).expect("ca");
            let root =
                matches!(mode, "verify-ca" | "verify-full").then(|| ca.display().to_string());
            let tls = PgTls::new(Some(mode), root.as_deref()).expect("settings");
            attempt(&tls, "localhost", port).await;
            let sni = received.await.expect("server task");
            std::fs::remove_dir_all(&dir).expect("cleanup");
            assert_eq!(sni.as_deref(), Some("localhost"), "{mode}");
        }
    }

    #[tokio::test]
    async fn verify_full_refuses_a_certificate_for_another_name_and_verify_ca_takes_it() {
        for (mode, accepted) in [("verify-full", false), ("verify-ca", true)] {
            let (port, pem, received) = sni_server(&["db.example"]).await;
            let dir = tempfile_dir(mode);
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, pem).expect("ca");
            let tls = PgTls::new(Some(mode), ca.to_str()).expect("settings");
            attempt(&tls, "localhost", port).await;
            let completed = received.await.expect("server task").is_some();
            std::fs::remove_dir_all(&dir).expect("cleanup");
            assert_eq!(completed, accepted, "{mode}");
        }
    }

    #[test]
    fn unix_sockets_never_use_tls_as_in_libpq() {
        let tls = PgTls::new(Some("verify-full"), Some("/ca.pem")).expect("settings");
        let mut config = tokio_postgres::Config::new();
        config.host("/var/run/postgresql");
        tls.apply(&mut config);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let mut config = tokio_postgres::Config::new();
        config.host("db").host("/var/run/postgresql");
        tls.apply(&mut config);
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "silo-tls-{}-{tag}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
