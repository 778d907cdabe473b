//! JWT verification shared by the router and the control plane.
//!
//! Both services authenticate gRPC calls with `authorization: Bearer <JWT>`:
//! [`bearer_token`] extracts the token, [`JwtVerifier::verify`] checks it and returns typed
//! claims, and each service decides what the claims allow (the control plane reads `role`,
//! the router a tenant claim or `tenants`).
//!
//! The accepted algorithms are pinned by [`VerifierConfig`], never taken from the token:
//! `alg: none` and "HS256 signed with the RSA public key as secret" are rejected before any
//! key is touched, and HMAC is only possible with an explicit [`KeySource::HmacSecret`].
//! Every [`AuthError`] means `UNAUTHENTICATED`; [`AuthConfigError`] is a startup failure.
//!
//! ```no_run
//! use silo_auth::{Algorithm, JwtVerifier, KeySource, StandardClaims, VerifierConfig};
//!
//! let mut config = VerifierConfig::new(
//!     vec![Algorithm::RS256],
//!     KeySource::PemFile("/etc/silo/jwt_public.pem".into()),
//! );
//! config.issuer = Some("https://idp.example.com".to_owned());
//! config.audience = Some("silo".to_owned());
//! let verifier = JwtVerifier::new(config)?;
//!
//! let token = silo_auth::bearer_token(Some("Bearer eyJ..."))?;
//! let claims: StandardClaims = verifier.verify(token)?;
//! let tenant = claims.extra_str("tenant_id");
//! # let _ = tenant;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod args;
mod bearer;
mod claims;
mod config;
mod error;
mod keys;
mod signer;
mod verifier;

pub use args::{InvalidJwtArgs, JwtArgs};
pub use bearer::bearer_token;
pub use claims::{Audience, StandardClaims, unix_now};
pub use config::{DEFAULT_LEEWAY, KeySource, MAX_LEEWAY, VerifierConfig};
pub use error::{AuthConfigError, AuthError, SignError};
pub use jsonwebtoken::Algorithm;
pub use secrecy::SecretString;
pub use signer::TokenSigner;
pub use verifier::JwtVerifier;
