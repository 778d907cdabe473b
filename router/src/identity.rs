//! Who is calling, for which tenant: the bearer token and the optional `x-tenant-id` header.

use silo_auth::{AuthError, JwtVerifier, StandardClaims};

use crate::tenant::TenantId;

/// The header a caller may send to name (or, with a service token, pick) its tenant.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The claim a service token lists its tenants in (a list of ids, or `"*"`).
pub const SERVICE_TENANTS_CLAIM: &str = "tenants";

/// The default name of the claim that holds a token's single tenant.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant_id";

/// Why a call may not proceed as any tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Bad, expired or forged token; or a token that names no tenant at all.
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// The token may not act for the tenant asked for. Deliberately says nothing about
    /// whether that tenant exists.
    #[error("the token may not act for the requested tenant")]
    PermissionDenied,
    /// A service token (several tenants) was used without `x-tenant-id`.
    #[error("a service token must choose its tenant with the x-tenant-id header")]
    TenantNotChosen,
}

/// Tokens verified recently, by their exact text: a service sends the same token with
/// every call, and checking an RS256 signature costs more than the rest of a call's routing.
/// An entry is used only until the token's `exp`, and for at most a minute.
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Turns a bearer token (and `x-tenant-id`) into the one tenant the call acts for.
#[derive(Clone)]
pub struct Authenticator {
    verifier: JwtVerifier,
    tenant_claim: String,
    verified: moka::sync::Cache<String, std::sync::Arc<StandardClaims>>,
}

impl Authenticator {
    /// Verifies tokens with `verifier` and reads the tenant from the claim named `tenant_claim`.
    pub fn new(verifier: JwtVerifier, tenant_claim: impl Into<String>) -> Self {
        Self {
            verifier,
            tenant_claim: tenant_claim.into(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_TOKEN_TTL)
                .build(),
        }
    }

    /// The token's claims: from the cache while the token is unexpired, else verified.
    fn claims(&self, token: &str) -> Result<std::sync::Arc<StandardClaims>, IdentityError> {
        if let Some(claims) = self.verified.get(token) {
            if claims.exp.is_some_and(|exp| exp > silo_auth::unix_now()) {
                return Ok(claims);
            }
            self.verified.invalidate(token);
        }
        let claims: StandardClaims = self
            .verifier
            .verify(token)
            .map_err(IdentityError::Unauthenticated)?;
        let claims = std::sync::Arc::new(claims);
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// `authorization` and `x-tenant-id` as received (`None` when absent or not ASCII).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        tenant_header: Option<&str>,
    ) -> Result<TenantId, IdentityError> {
        let token =
            silo_auth::bearer_token(authorization).map_err(IdentityError::Unauthenticated)?;
        let claims = self.claims(token)?;
        let requested = match tenant_header.map(str::trim) {
            None | Some("") => None,
            // A header that cannot be a tenant id is treated like any tenant the token may
            // not act for.
            Some(raw) => Some(TenantId::parse(raw).ok_or(IdentityError::PermissionDenied)?),
        };

        if let Some(claim) = claims.extra.get(&self.tenant_claim) {
            let own = claim
                .as_str()
                .and_then(TenantId::parse)
                .ok_or_else(|| invalid_claims(&self.tenant_claim))?;
            return match requested {
                Some(requested) if requested != own => Err(IdentityError::PermissionDenied),
                _ => Ok(own),
            };
        }
        if let Some(tenants) = claims.extra.get(SERVICE_TENANTS_CLAIM) {
            let allowed = ServiceTenants::from_claim(tenants)
                .ok_or_else(|| invalid_claims(SERVICE_TENANTS_CLAIM))?;
            let requested = requested.ok_or(IdentityError::TenantNotChosen)?;
            return if allowed.allows(&requested) {
                Ok(requested)
            } else {
                Err(IdentityError::PermissionDenied)
            };
        }
        Err(invalid_claims(&self.tenant_claim))
    }
}

fn invalid_claims(claim: &str) -> IdentityError {
    IdentityError::Unauthenticated(AuthError::InvalidClaims(format!(
        "missing or invalid {claim} claim"
    )))
}

/// The `tenants` claim of a service token.
enum ServiceTenants {
    Any,
    Listed(Vec<String>),
}

impl ServiceTenants {
    fn from_claim(claim: &serde_json::Value) -> Option<Self> {
        match claim {
            serde_json::Value::String(any) if any == "*" => Some(Self::Any),
            serde_json::Value::Array(items) => {
                let names = items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?;
                if names.iter().any(|name| name == "*") {
                    Some(Self::Any)
                } else {
                    Some(Self::Listed(names))
                }
            }
            _ => None,
        }
    }

    fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            Self::Any => true,
            Self::Listed(names) => names.iter().any(|name| name == tenant.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use silo_auth::{Algorithm, KeySource, SecretString, TokenSigner, VerifierConfig};

    use super::*;

    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

    fn authenticator() -> Authenticator {
        let config = VerifierConfig::new(
            vec![Algorithm::HS256],
            KeySource::HmacSecret(SecretString::from(SECRET)),
        );
        Authenticator::new(
            JwtVerifier::new(config).expect("valid config"),
            DEFAULT_TENANT_CLAIM,
        )
    }

    fn token(claims: StandardClaims) -> String {
        let signer = TokenSigner::from_hmac_secret(&SecretString::from(SECRET), Algorithm::HS256)
            .expect("signer");
        format!("Bearer {}", signer.sign(&claims).expect("signs"))
    }

    fn claims() -> StandardClaims {
        StandardClaims::new("svc", Duration::from_secs(60))
    }

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).expect("valid id")
    }

    #[test]
    fn tenant_claim_names_the_tenant() {
        let auth = authenticator();
        let bearer = token(claims().claim("tenant_id", "acme"));
        assert_eq!(auth.authenticate(Some(&bearer), None), Ok(tenant("acme")));
        assert_eq!(
            auth.authenticate(Some(&bearer), Some("acme")),
            Ok(tenant("acme"))
        );
        assert_eq!(
            auth.authenticate(Some(&bearer), Some("globex")),
            Err(IdentityError::PermissionDenied)
        );
        assert_eq!(
            auth.authenticate(Some(&bearer), Some("NOT A TENANT")),
            Err(IdentityError::PermissionDenied)
        );
    }

    #[test]
    fn a_cached_token_is_trusted_only_until_it_expires() {
        let mut config = VerifierConfig::new(
            vec![Algorithm::HS256],
            KeySource::HmacSecret(SecretString::from(SECRET)),
        );
        config.leeway = Duration::ZERO;
        let auth = Authenticator::new(JwtVerifier::new(config).expect("verifier"), "tenant_id");
        let bearer = token(
            claims()
                .expires_at(silo_auth::unix_now() + 1)
                .claim("tenant_id", "acme"),
        );
        assert_eq!(auth.authenticate(Some(&bearer), None), Ok(tenant("acme")));
        assert_eq!(auth.authenticate(Some(&bearer), None), Ok(tenant("acme")));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(matches!(
            auth.authenticate(Some(&bearer), None),
            Err(IdentityError::Unauthenticated(_))
        ));
    }

    #[test]
    fn the_tenant_claim_name_is_configurable() {
        let auth = Authenticator {
            tenant_claim: "org".into(),
            ..authenticator()
        };
        let bearer = token(claims().claim("org", "acme"));
        assert_eq!(auth.authenticate(Some(&bearer), None), Ok(tenant("acme")));
        let other = token(claims().claim("tenant_id", "acme"));
        assert!(matches!(
            auth.authenticate(Some(&other), None),
            Err(IdentityError::Unauthenticated(_))
        ));
    }

    #[test]
    fn service_tokens_pick_a_listed_tenant() {
        let auth = authenticator();
        let listed = token(claims().claim("tenants", vec!["acme", "globex"]));
        assert_eq!(
            auth.authenticate(Some(&listed), Some("globex")),
            Ok(tenant("globex"))
        );
        assert_eq!(
            auth.authenticate(Some(&listed), Some("initech")),
            Err(IdentityError::PermissionDenied)
        );
        assert_eq!(
            auth.authenticate(Some(&listed), None),
            Err(IdentityError::TenantNotChosen)
        );
        let any = token(claims().claim("tenants", "*"));
        assert_eq!(
            auth.authenticate(Some(&any), Some("initech")),
            Ok(tenant("initech"))
        );
    }

    #[test]
    fn bad_tokens_are_unauthenticated() {
        let auth = authenticator();
        for bearer in [
            None,
            Some("Bearer".to_owned()),
            Some("Bearer garbage".to_owned()),
            Some(token(claims())),
            Some(token(claims().claim("tenant_id", 7))),
            Some(token(claims().claim("tenants", 7))),
            Some(token(
                claims()
                    .claim("tenant_id", "acme")
                    .expires_at(silo_auth::unix_now() - 3600),
            )),
        ] {
            assert!(
                matches!(
                    auth.authenticate(bearer.as_deref(), None),
                    Err(IdentityError::Unauthenticated(_))
                ),
                "{bearer:?}"
            );
        }
    }
}
