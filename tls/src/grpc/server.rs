//! [`ServerTls`]: a rustls server configuration built from PEM files and rebuilt when they
//! change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use super::{GrpcTlsError, files};

/// How often, at most, [`ServerTls::config`] looks at the files again.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// A broken file is reported at most this often while it stays broken.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The files a TLS server reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain the server presents: its own certificate first, then any
    /// intermediates.
    pub cert: PathBuf,
    /// PEM private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates. Set: every client must present
    /// a certificate that chains to one of them (mutual TLS). Unset: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The server side of gRPC TLS: the current rustls configuration (ALPN `h2`, TLS 1.2 and
/// 1.3, the aws-lc-rs provider), rebuilt from [`ServerTlsFiles`] when their contents
/// change.
///
/// The files are looked at lazily: [`ServerTls::config`], called for every new connection,
/// reads them again when the last look is older than the check interval (2 s by default),
/// so idle servers read nothing. Contents are compared, not timestamps, so any way of
/// replacing the files works: written in place, renamed over, or a Kubernetes Secret
/// volume swapping its `..data` link. When the new contents do not make a configuration
/// (unreadable, not PEM, a key that does not fit the certificate, half of a pair written),
/// the previous configuration stays in use and a warning is logged (once per new content,
/// and at most once a minute for a file that cannot be read); the next change is tried
/// again. Connections already open keep the certificate they were made with.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    check_every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    config: Arc<ServerConfig>,
    /// The contents the last attempt was made with, successful or not.
    contents: Contents,
    checked: Instant,
    warned: Option<Instant>,
}

impl ServerTls {
    /// Reads `files` and builds the first configuration; any problem is an error here, so
    /// a server never starts with TLS it cannot serve.
    pub fn load(files: ServerTlsFiles) -> Result<Self, GrpcTlsError> {
        let contents = read_all(&files)?;
        let config = build(&files, &contents)?;
        Ok(Self {
            files,
            check_every: DEFAULT_CHECK_INTERVAL,
            state: Mutex::new(State {
                config,
                contents,
                checked: Instant::now(),
                warned: None,
            }),
        })
    }

    /// The same, looking at the files at most once per `every` instead of every 2 s.
    #[must_use]
    pub fn with_check_interval(mut self, every: Duration) -> Self {
        self.check_every = every;
        self
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate (a client CA file is set).
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration for a new connection: the current one, rebuilt first when the
    /// check interval has passed and the files changed. Reads a few small files from disk
    /// at most once per interval.
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.check_every {
            state.checked = Instant::now();
            self.reload(&mut state);
        }
        state.config.clone()
    }

    fn reload(&self, state: &mut State) {
        let contents = match read_all(&self.files) {
            Ok(contents) => contents,
            Err(error) => {
                if state
                    .warned
                    .is_none_or(|warned| warned.elapsed() >= WARN_EVERY)
                {
                    state.warned = Some(Instant::now());
                    tracing::warn!(
                        error = %error,
                        "tls files unreadable: keeping the certificate in use"
                    );
                }
                return;
            }
        };
        if contents == state.contents {
            return;
        }
        match build(&self.files, &contents) {
            Ok(config) => {
                state.config = config;
                tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded");
            }
            Err(error) => tracing::warn!(
                error = %error,
                "new tls files unusable: keeping the certificate in use"
            ),
        }
        state.contents = contents;
    }
}

/// What the files held at one look.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read_all(files: &ServerTlsFiles) -> Result<Contents, GrpcTlsError> {
    Ok(Contents {
        cert: files::read(&files.cert)?,
        key: files::read(&files.key)?,
        client_ca: files.client_ca.as_deref().map(files::read).transpose()?,
    })
}

fn build(files: &ServerTlsFiles, contents: &Contents) -> Result<Arc<ServerConfig>, GrpcTlsError> {
    let chain = files::certificates(&files.cert, &contents.cert)?;
    let key = files::private_key(&files.key, &contents.key)?;
    let provider = crate::provider();
    let rustls_error = |what: &str| {
        let what = what.to_owned();
        move |source| GrpcTlsError::Rustls { what, source }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("tls protocol versions"))?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let roots = files::roots(path, pem)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|source| GrpcTlsError::ClientVerifier {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(rustls_error(&format!(
            "server certificate {} and key {}",
            files.cert.display(),
            files.key.display()
        )))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
