//! [`JwtVerifier`]: checks a token's algorithm, key, signature and registered claims.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::{MAX_LEEWAY, VerifierConfig};
use crate::error::{AuthConfigError, AuthError};
use crate::keys::KeyRing;

/// Tokens longer than this are rejected unparsed.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Verifies bearer JWTs against a fixed configuration.
///
/// Keys are parsed once in [`JwtVerifier::new`]; cloning is cheap (an `Arc`), and the
/// verifier is `Send + Sync`.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    keys: KeyRing,
    /// One validation per pinned algorithm, in the configured order.
    validations: Vec<(Algorithm, Validation)>,
}

/// The header fields read before the signature is checked.
#[derive(Deserialize)]
struct UnverifiedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl JwtVerifier {
    /// Loads the keys and checks that the configuration is coherent: at least one algorithm,
    /// no HMAC mixed with asymmetric algorithms, HMAC only with an explicit secret, every
    /// algorithm usable with the configured key(s), leeway at most [`MAX_LEEWAY`].
    pub fn new(config: VerifierConfig) -> Result<Self, AuthConfigError> {
        if config.leeway > MAX_LEEWAY {
            return Err(AuthConfigError::LeewayTooLarge {
                leeway: config.leeway,
                max: MAX_LEEWAY,
            });
        }
        let keys = KeyRing::load(&config.algorithms, &config.keys)?;
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| (alg, validation(alg, &config)))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner { keys, validations }),
        })
    }

    /// The pinned algorithms.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.inner.validations.iter().map(|(alg, _)| *alg)
    }

    /// Verifies `token` and deserializes its claims into `C`.
    ///
    /// In order: the header's `alg` must be pinned (so `none` and "HS256 with the public key
    /// as secret" fail here), the key is selected by `kid`, the signature is checked, then
    /// `exp` (required), `nbf` (when present), `iss` and `aud` (when configured), with the
    /// configured leeway.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let header = unverified_header(token)?;
        let requested: Algorithm = header
            .alg
            .parse()
            .map_err(|_| AuthError::AlgorithmNotAllowed)?;
        let (alg, validation) = self
            .inner
            .validations
            .iter()
            .find(|(alg, _)| *alg == requested)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        if header.crit.is_some() {
            // RFC 7515 section 4.1.11: no extension is understood here, so none may be critical.
            return Err(AuthError::Malformed);
        }
        let entry = self.inner.keys.select(header.kid.as_deref())?;
        if !entry.algorithms.contains(alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, validation)
            .map_err(|e| from_jwt_error(e.kind()))?;
        serde_json::from_value(Value::Object(data.claims)).map_err(|e| claims_error(&e))
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms().collect::<Vec<_>>())
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

fn validation(alg: Algorithm, config: &VerifierConfig) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// Splits `header.payload.signature` and decodes the header without trusting it.
fn unverified_header(token: &str) -> Result<UnverifiedHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)
}

fn from_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::InvalidClaims("unexpected `sub`".to_owned()),
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::InvalidClaims(format!("missing required claim `{claim}`"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::InvalidClaims(format!("claim `{claim}` has an invalid format"))
        }
        // Bad base64 or JSON, and (non-exhaustive enum) anything added later.
        _ => AuthError::Malformed,
    }
}

/// Maps a claims deserialization error without echoing claim values: only "missing field"
/// keeps its (schema-defined) field name.
fn claims_error(error: &serde_json::Error) -> AuthError {
    let message = error.to_string();
    let detail = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map_or_else(
            || "claims do not have the expected shape".to_owned(),
            |field| format!("missing claim `{field}`"),
        );
    AuthError::InvalidClaims(detail)
}
