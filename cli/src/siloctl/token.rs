//! `siloctl token`: mint a token from a local key, for development and tests.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use silo_auth::{Algorithm, SecretString, StandardClaims, TokenSigner};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Private key PEM (RSA, EC or Ed25519).
    #[arg(long, env = "SILO_TOKEN_KEY_FILE", conflicts_with = "hmac_secret")]
    key_file: Option<PathBuf>,
    /// Shared HS256 secret (the `silo dev` control plane keeps one in .silo-dev/secrets/jwt.secret).
    /// Taken as given even when it starts with `-`, as a random secret may.
    #[arg(
        long,
        env = "SILO_JWT_HMAC_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    hmac_secret: Option<String>,
    /// Signing algorithm.
    #[arg(long, default_value = "HS256")]
    algorithm: String,
    /// `role` claim: admin, viewer or router (control-plane tokens).
    #[arg(long)]
    role: Option<String>,
    /// `tenant_id` claim (router tokens for one tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// `tenants` claim (service tokens that pick a tenant with x-tenant-id); `*` for all.
    #[arg(long, value_delimiter = ',')]
    tenants: Vec<String>,
    #[arg(long, default_value = "siloctl")]
    subject: String,
    #[arg(long, env = "SILO_JWT_ISSUER", default_value = "silo-dev")]
    issuer: String,
    #[arg(long, env = "SILO_JWT_AUDIENCE", default_value = "silo")]
    audience: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    let algorithm: Algorithm = args
        .algorithm
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown algorithm {}", args.algorithm))?;
    let signer = match (&args.key_file, &args.hmac_secret) {
        (Some(path), None) => TokenSigner::from_pem_file(path, algorithm)?,
        (None, Some(secret)) => {
            TokenSigner::from_hmac_secret(&SecretString::from(secret.clone()), algorithm)?
        }
        _ => anyhow::bail!("give --key-file or --hmac-secret"),
    };
    let mut claims = StandardClaims::new(&args.subject, Duration::from_secs(args.ttl_secs))
        .issuer(&args.issuer)
        .audience(&args.audience);
    if let Some(role) = &args.role {
        claims = claims.claim("role", role.as_str());
    }
    if let Some(tenant) = &args.tenant {
        claims = claims.claim("tenant_id", tenant.as_str());
    }
    if !args.tenants.is_empty() {
        let list: Vec<serde_json::Value> = args
            .tenants
            .iter()
            .map(|t| serde_json::Value::from(t.as_str()))
            .collect();
        claims = claims.claim("tenants", serde_json::Value::Array(list));
    }
    println!("{}", signer.sign(&claims)?);
    Ok(())
}
