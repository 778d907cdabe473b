//! Errors of this crate: one enum for rejected tokens, one for bad configuration, one for
//! signing.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

/// Why a token was rejected.
///
/// Every variant means `UNAUTHENTICATED` to the caller. The `Display` strings are safe to
/// send to the client: they never contain key material nor echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` value, or an empty bearer token.
    #[error("missing bearer token")]
    Missing,
    /// Not a `Bearer` credential, or not a well-formed JWT.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not one this service accepts (includes `none`), or does not fit
    /// the key the token names.
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The token names a key (`kid`) this service does not know, or names none while several
    /// keys are configured.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify with the selected key.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is in the past (beyond the configured leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the configured leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// A required claim is missing or the claims do not have the expected shape. The detail
    /// names claims, never their values.
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
}

/// A verifier or signer configuration that cannot work. Raised at startup, never per call;
/// messages may name files but never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The pinned algorithm list is empty.
    #[error("no JWT algorithm configured")]
    NoAlgorithms,
    /// HMAC and asymmetric algorithms are pinned together.
    #[error("HMAC algorithms (HS*) cannot be mixed with asymmetric ones (got {0:?})")]
    MixedHmacAndAsymmetric(Vec<Algorithm>),
    /// An HMAC algorithm is pinned but the key source is not an explicit HMAC secret.
    #[error("{algorithm:?} requires an explicit HMAC secret as the key source")]
    HmacRequiresSecret {
        /// The HMAC algorithm.
        algorithm: Algorithm,
    },
    /// An HMAC secret is configured with an asymmetric algorithm.
    #[error("an HMAC secret can only be used with HS256/HS384/HS512, not {algorithm:?}")]
    SecretRequiresHmac {
        /// The asymmetric algorithm.
        algorithm: Algorithm,
    },
    /// The HMAC secret is shorter than the algorithm's hash output (RFC 7518 section 3.2).
    #[error("the HMAC secret must be at least {min_bytes} bytes for {algorithm:?}")]
    WeakHmacSecret {
        /// The algorithm whose minimum was not met.
        algorithm: Algorithm,
        /// The minimum length in bytes.
        min_bytes: usize,
    },
    /// A pinned algorithm cannot be used with any configured key.
    #[error("algorithm {algorithm:?} does not fit the key(s) from {source_name}")]
    AlgorithmDoesNotFitKey {
        /// The algorithm.
        algorithm: Algorithm,
        /// Where the keys came from (a file path or "inline PEM" / "inline JWKS").
        source_name: String,
    },
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM data is not a supported key.
    #[error("invalid PEM key from {source_name}: {reason}")]
    InvalidPem {
        /// Where the PEM came from.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS document is not valid or one of its keys is broken.
    #[error("invalid JWKS from {source_name}: {reason}")]
    InvalidJwks {
        /// Where the JWKS came from.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No key of the JWKS can verify any pinned algorithm.
    #[error("no usable signing key in JWKS from {source_name}")]
    NoUsableKey {
        /// Where the JWKS came from.
        source_name: String,
    },
    /// The leeway is larger than this crate allows.
    #[error("JWT leeway {leeway:?} is larger than the maximum {max:?}")]
    LeewayTooLarge {
        /// The configured leeway.
        leeway: Duration,
        /// The maximum.
        max: Duration,
    },
}

/// Signing a token failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The claims could not be serialized or the key could not sign.
    #[error("cannot sign token: {0}")]
    Encode(#[from] jsonwebtoken::errors::Error),
}
