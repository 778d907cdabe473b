//! The token-verification flags both services take (`SILO_JWT_*`), parsed with clap.

use std::{path::PathBuf, time::Duration};

use secrecy::SecretString;

use crate::{Algorithm, KeySource, VerifierConfig};

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

/// The flags are wrong in a way a key file cannot tell (see `AuthConfigError` for those).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidJwtArgs(String);

/// Token verification: algorithms are pinned here, never taken from a token.
#[derive(Clone, Debug, clap::Args)]
pub struct JwtArgs {
    /// Accepted signing algorithms (e.g. RS256,ES256,EdDSA; HS256 only with a shared secret).
    #[arg(
        long = "jwt-algorithms",
        env = "SILO_JWT_ALGORITHMS",
        value_delimiter = ',',
        default_value = "RS256"
    )]
    pub algorithms: Vec<String>,
    /// PEM file with the public key tokens are signed with.
    #[arg(long = "jwt-public-key-file", env = "SILO_JWT_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<PathBuf>,
    /// JWKS file with the public keys tokens are signed with (chosen by `kid`).
    #[arg(long = "jwt-jwks-file", env = "SILO_JWT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Shared secret for HS256/384/512 tokens (only when no public key is given).
    #[arg(
        long = "jwt-hmac-secret",
        env = "SILO_JWT_HMAC_SECRET",
        value_parser = secret,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub hmac_secret: Option<SecretString>,
    /// Required `iss` claim.
    #[arg(long = "jwt-issuer", env = "SILO_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long = "jwt-audience", env = "SILO_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-secs",
        env = "SILO_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub leeway_secs: u64,
}

impl JwtArgs {
    pub fn verifier_config(&self) -> Result<VerifierConfig, InvalidJwtArgs> {
        let algorithms = self
            .algorithms
            .iter()
            .map(|name| {
                name.trim()
                    .parse::<Algorithm>()
                    .map_err(|_| InvalidJwtArgs(format!("unknown JWT algorithm {name:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match (&self.public_key_file, &self.jwks_file, &self.hmac_secret) {
            (Some(path), None, None) => KeySource::PemFile(path.clone()),
            (None, Some(path), None) => KeySource::JwksFile(path.clone()),
            (None, None, Some(secret)) => KeySource::HmacSecret(secret.clone()),
            _ => {
                return Err(InvalidJwtArgs(
                    "give exactly one of --jwt-public-key-file, --jwt-jwks-file, --jwt-hmac-secret"
                        .into(),
                ));
            }
        };
        Ok(VerifierConfig {
            algorithms,
            keys,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: Duration::from_secs(self.leeway_secs),
        })
    }
}
