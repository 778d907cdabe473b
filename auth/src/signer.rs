//! [`TokenSigner`]: mints tokens for dev mode and tests.

use std::fmt;
use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::error::{AuthConfigError, SignError};
use crate::keys::{check_hmac_secret_len, pem_label};

/// Signs tokens with one private key (or HMAC secret), one algorithm and an optional `kid`.
///
/// Meant for the dev command and tests; production tokens come from the identity provider.
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl TokenSigner {
    /// A signer from a private key PEM: PKCS#8 `PRIVATE KEY` (RSA, EC P-256/P-384, Ed25519)
    /// or PKCS#1 `RSA PRIVATE KEY`. The key must fit `algorithm`.
    pub fn from_pem(pem: &[u8], algorithm: Algorithm) -> Result<Self, AuthConfigError> {
        Self::from_named_pem(pem, algorithm, "inline PEM")
    }

    /// [`TokenSigner::from_pem`] reading the PEM from a file.
    pub fn from_pem_file(
        path: impl AsRef<Path>,
        algorithm: Algorithm,
    ) -> Result<Self, AuthConfigError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKeyFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_named_pem(&pem, algorithm, &path.display().to_string())
    }

    /// A signer for HS256/HS384/HS512 with a secret at least as long as the hash output.
    pub fn from_hmac_secret(
        secret: &SecretString,
        algorithm: Algorithm,
    ) -> Result<Self, AuthConfigError> {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(AuthConfigError::SecretRequiresHmac { algorithm });
        }
        let secret = secret.expose_secret().as_bytes();
        check_hmac_secret_len(secret, algorithm)?;
        Ok(Self {
            key: EncodingKey::from_secret(secret),
            algorithm,
            kid: None,
        })
    }

    /// Puts `kid` in the header of every token.
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `claims` (any JSON object, e.g. [`StandardClaims`](crate::StandardClaims)).
    /// Adds nothing: include `exp` yourself.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, SignError> {
        let mut header = Header::new(self.algorithm);
        header.kid.clone_from(&self.kid);
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    fn from_named_pem(
        pem: &[u8],
        algorithm: Algorithm,
        source_name: &str,
    ) -> Result<Self, AuthConfigError> {
        let invalid = |reason: &str| AuthConfigError::InvalidPem {
            source_name: source_name.to_owned(),
            reason: reason.to_owned(),
        };
        match pem_label(pem) {
            Some("PRIVATE KEY" | "RSA PRIVATE KEY") => {}
            Some(_) => {
                return Err(invalid(
                    "expected a PKCS#8 PRIVATE KEY or PKCS#1 RSA PRIVATE KEY block",
                ));
            }
            None => return Err(invalid("no PEM block found")),
        }
        let key = match algorithm.family() {
            AlgorithmFamily::Hmac => return Err(AuthConfigError::HmacRequiresSecret { algorithm }),
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
        };
        let key = key.map_err(|_| AuthConfigError::AlgorithmDoesNotFitKey {
            algorithm,
            source_name: source_name.to_owned(),
        })?;
        // Signing parses the key for real: catches e.g. a P-256 key used for ES384.
        jsonwebtoken::crypto::sign(b"probe", &key, algorithm).map_err(|_| {
            AuthConfigError::AlgorithmDoesNotFitKey {
                algorithm,
                source_name: source_name.to_owned(),
            }
        })?;
        Ok(Self {
            key,
            algorithm,
            kid: None,
        })
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}
