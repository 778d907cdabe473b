//! Loading verification keys, once, from a [`KeySource`], and checking that the pinned
//! algorithms fit them.

use std::path::Path;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use secrecy::ExposeSecret;

use crate::config::KeySource;
use crate::error::{AuthConfigError, AuthError};

/// One verification key and the pinned algorithms it may verify.
pub(crate) struct KeyEntry {
    kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

/// The keys of one verifier.
pub(crate) struct KeyRing {
    entries: Vec<KeyEntry>,
    /// JWKS: tokens select keys by `kid`. PEM / HMAC: the single key is used whatever the
    /// token's `kid` says.
    by_kid: bool,
}

impl KeyRing {
    /// Checks the pinned algorithms against the key source and loads the keys.
    pub(crate) fn load(
        algorithms: &[Algorithm],
        source: &KeySource,
    ) -> Result<Self, AuthConfigError> {
        check_algorithms(algorithms, source)?;
        let (entries, by_kid) = match source {
            KeySource::PemFile(path) => {
                let pem = std::fs::read(path).map_err(|e| read_error(path, e))?;
                (
                    pem_entries(&pem, algorithms, &path.display().to_string())?,
                    false,
                )
            }
            KeySource::Pem(pem) => (pem_entries(pem, algorithms, "inline PEM")?, false),
            KeySource::JwksFile(path) => {
                let json = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
                (
                    jwks_entries(&json, algorithms, &path.display().to_string())?,
                    true,
                )
            }
            KeySource::Jwks(json) => (jwks_entries(json, algorithms, "inline JWKS")?, true),
            KeySource::HmacSecret(secret) => {
                let secret = secret.expose_secret().as_bytes();
                for &algorithm in algorithms {
                    check_hmac_secret_len(secret, algorithm)?;
                }
                let entry = KeyEntry {
                    kid: None,
                    key: DecodingKey::from_secret(secret),
                    algorithms: algorithms.to_vec(),
                };
                (vec![entry], false)
            }
        };
        Ok(Self { entries, by_kid })
    }

    /// The key a token with this `kid` header must be verified with.
    pub(crate) fn select(&self, kid: Option<&str>) -> Result<&KeyEntry, AuthError> {
        match (self.by_kid, kid) {
            (true, Some(kid)) => self
                .entries
                .iter()
                .find(|entry| entry.kid.as_deref() == Some(kid))
                .ok_or(AuthError::UnknownKey),
            // No kid (or a single configured key): only unambiguous when there is one key.
            (true, None) | (false, _) => match self.entries.as_slice() {
                [only] => Ok(only),
                _ => Err(AuthError::UnknownKey),
            },
        }
    }

    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Rejects empty lists, HMAC mixed with asymmetric algorithms, and algorithm families that
/// cannot match the key source.
fn check_algorithms(algorithms: &[Algorithm], source: &KeySource) -> Result<(), AuthConfigError> {
    if algorithms.is_empty() {
        return Err(AuthConfigError::NoAlgorithms);
    }
    let is_hmac = |a: &Algorithm| a.family() == AlgorithmFamily::Hmac;
    if algorithms.iter().any(is_hmac) && !algorithms.iter().all(is_hmac) {
        return Err(AuthConfigError::MixedHmacAndAsymmetric(algorithms.to_vec()));
    }
    let secret = matches!(source, KeySource::HmacSecret(_));
    for &algorithm in algorithms {
        match (is_hmac(&algorithm), secret) {
            (true, false) => return Err(AuthConfigError::HmacRequiresSecret { algorithm }),
            (false, true) => return Err(AuthConfigError::SecretRequiresHmac { algorithm }),
            (true, true) | (false, false) => {}
        }
    }
    Ok(())
}

/// RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
pub(crate) fn check_hmac_secret_len(
    secret: &[u8],
    algorithm: Algorithm,
) -> Result<(), AuthConfigError> {
    let min_bytes = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if secret.len() < min_bytes {
        return Err(AuthConfigError::WeakHmacSecret {
            algorithm,
            min_bytes,
        });
    }
    Ok(())
}

/// The label of the first PEM block (`-----BEGIN <label>-----`), if any.
pub(crate) fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let rest = &text[text.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    rest.find("-----").map(|end| &rest[..end])
}

fn pem_entries(
    pem: &[u8],
    algorithms: &[Algorithm],
    source_name: &str,
) -> Result<Vec<KeyEntry>, AuthConfigError> {
    let invalid = |reason: &str| AuthConfigError::InvalidPem {
        source_name: source_name.to_owned(),
        reason: reason.to_owned(),
    };
    let key = match pem_label(pem) {
        None => return Err(invalid("no PEM block found")),
        Some("RSA PUBLIC KEY") => DecodingKey::from_rsa_pem(pem)
            .map_err(|_| invalid("not a valid PKCS#1 RSA public key"))?,
        Some("PUBLIC KEY") => DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| invalid("unsupported public key (expected RSA, EC or Ed25519)"))?,
        Some(_) => {
            return Err(invalid(
                "expected a PUBLIC KEY or RSA PUBLIC KEY block (private keys and certificates \
                 are not accepted)",
            ));
        }
    };
    if let Some(&algorithm) = algorithms.iter().find(|&&a| !fits(&key, a)) {
        return Err(AuthConfigError::AlgorithmDoesNotFitKey {
            algorithm,
            source_name: source_name.to_owned(),
        });
    }
    Ok(vec![KeyEntry {
        kid: None,
        key,
        algorithms: algorithms.to_vec(),
    }])
}

fn jwks_entries(
    json: &str,
    algorithms: &[Algorithm],
    source_name: &str,
) -> Result<Vec<KeyEntry>, AuthConfigError> {
    let invalid = |reason: String| AuthConfigError::InvalidJwks {
        source_name: source_name.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
    let mut entries: Vec<KeyEntry> = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let Some(key) = jwk_decoding_key(jwk).map_err(|e| invalid(format!("key #{index}: {e}")))?
        else {
            continue;
        };
        let fitting: Vec<Algorithm> = algorithms
            .iter()
            .copied()
            .filter(|&a| jwk_allows(jwk, a) && fits(&key, a))
            .collect();
        if fitting.is_empty() {
            continue;
        }
        let kid = jwk.common.key_id.clone();
        if kid.is_some() && entries.iter().any(|e| e.kid == kid) {
            return Err(invalid(format!("duplicate kid in key #{index}")));
        }
        entries.push(KeyEntry {
            kid,
            key,
            algorithms: fitting,
        });
    }
    if entries.is_empty() {
        return Err(AuthConfigError::NoUsableKey {
            source_name: source_name.to_owned(),
        });
    }
    if let Some(&algorithm) = algorithms
        .iter()
        .find(|a| !entries.iter().any(|e| e.algorithms.contains(a)))
    {
        return Err(AuthConfigError::AlgorithmDoesNotFitKey {
            algorithm,
            source_name: source_name.to_owned(),
        });
    }
    Ok(entries)
}

/// The verification key of a JWK, or `None` for keys this crate never verifies with:
/// encryption keys, symmetric (`oct`) keys (HMAC only comes from an explicit secret) and
/// unsupported key types.
fn jwk_decoding_key(jwk: &Jwk) -> Result<Option<DecodingKey>, jsonwebtoken::errors::Error> {
    let for_signatures = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    ) && jwk
        .common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    if !for_signatures {
        return Ok(None);
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map(Some),
        AlgorithmParameters::EllipticCurve(ec)
            if matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
        {
            DecodingKey::from_ec_components(&ec.x, &ec.y).map(Some)
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            DecodingKey::from_ed_components(&okp.x).map(Some)
        }
        _ => Ok(None),
    }
}

/// A JWK's optional `alg` restricts it to that one algorithm.
fn jwk_allows(jwk: &Jwk, algorithm: Algorithm) -> bool {
    jwk.common
        .key_algorithm
        .is_none_or(|a| a == KeyAlgorithm::from(algorithm))
}

/// Whether `key` can verify `algorithm`: the right family, and (for EC and Ed keys) a key the
/// algorithm's verifier accepts, e.g. a P-256 point for ES256.
fn fits(key: &DecodingKey, algorithm: Algorithm) -> bool {
    if key.family() != algorithm.family() {
        return false;
    }
    // jsonwebtoken's Ed25519 verifier slices the first 32 bytes without checking the length.
    if key.family() == AlgorithmFamily::Ed
        && !matches!(key.try_get_as_bytes(), Ok(bytes) if bytes.len() == 32)
    {
        return false;
    }
    // Building the verifier parses the key; an empty signature never verifies (Ok(false)),
    // so only an unusable key makes this an error.
    jsonwebtoken::crypto::verify("", b"", key, algorithm).is_ok()
}

fn read_error(path: &Path, source: std::io::Error) -> AuthConfigError {
    AuthConfigError::ReadKeyFile {
        path: path.to_owned(),
        source,
    }
}
