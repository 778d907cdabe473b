//! Verifier configuration: plain data, built by each service's clap config.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::SecretString;

/// Default clock-skew allowance for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Largest leeway [`JwtVerifier::new`](crate::JwtVerifier::new) accepts; more would make
/// `exp` meaningless.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// How a [`JwtVerifier`](crate::JwtVerifier) checks tokens.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Accepted algorithms, pinned by configuration; the token's `alg` must be one of them.
    /// HMAC (`HS*`) and asymmetric algorithms cannot be mixed.
    pub algorithms: Vec<Algorithm>,
    /// Where the verification keys come from.
    pub keys: KeySource,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` (a token's `aud` must contain it) when set. When unset, `aud` is not
    /// checked.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`, whole seconds, at most [`MAX_LEEWAY`].
    pub leeway: Duration,
}

impl VerifierConfig {
    /// A configuration with no issuer or audience check and [`DEFAULT_LEEWAY`].
    pub fn new(algorithms: Vec<Algorithm>, keys: KeySource) -> Self {
        Self {
            algorithms,
            keys,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// Verification key material.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A PEM file holding one public key: SPKI `PUBLIC KEY` (RSA, EC P-256/P-384, Ed25519)
    /// or PKCS#1 `RSA PUBLIC KEY`.
    PemFile(PathBuf),
    /// The same as [`KeySource::PemFile`], in memory.
    Pem(Vec<u8>),
    /// A JWK set file; tokens select the key with `kid`.
    JwksFile(PathBuf),
    /// The same as [`KeySource::JwksFile`], in memory (the JSON document).
    Jwks(String),
    /// A shared secret, the only key source allowed for HS256/HS384/HS512.
    HmacSecret(SecretString),
}
