//! [`StandardClaims`]: the registered claims plus whatever else the token carries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Registered JWT claims (RFC 7519 section 4.1) and every other claim in [`Self::extra`].
///
/// Used both to mint tokens (dev mode, tests) and to read verified ones:
///
/// ```
/// # use std::time::Duration;
/// let claims = silo_auth::StandardClaims::new("svc-billing", Duration::from_secs(300))
///     .issuer("silo-dev")
///     .audience("silo")
///     .claim("tenant_id", "acme");
/// assert_eq!(claims.extra_str("tenant_id"), Some("acme"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StandardClaims {
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one string or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Expiry, seconds since the Unix epoch. Always present in a verified token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// All other claims (`role`, `tenant_id`, `tenants`, ...). Must not repeat the
    /// registered names above.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `aud` claim: a single audience or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "silo"`
    One(String),
    /// `"aud": ["silo", "other"]`
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is (one of) the audience(s).
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

impl StandardClaims {
    /// Claims for `sub`, issued now and expiring after `ttl`.
    pub fn new(sub: impl Into<String>, ttl: Duration) -> Self {
        let now = unix_now();
        Self {
            sub: Some(sub.into()),
            iat: Some(now),
            exp: Some(now.saturating_add(ttl.as_secs())),
            ..Self::default()
        }
    }

    /// Sets `iss`.
    #[must_use]
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.iss = Some(iss.into());
        self
    }

    /// Sets `aud` to a single audience.
    #[must_use]
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.aud = Some(Audience::One(aud.into()));
        self
    }

    /// Sets `exp` (seconds since the Unix epoch).
    #[must_use]
    pub fn expires_at(mut self, exp: u64) -> Self {
        self.exp = Some(exp);
        self
    }

    /// Sets `nbf` (seconds since the Unix epoch).
    #[must_use]
    pub fn not_before(mut self, nbf: u64) -> Self {
        self.nbf = Some(nbf);
        self
    }

    /// Adds a non-registered claim, e.g. `claim("role", "admin")` or
    /// `claim("tenants", vec!["acme", "globex"])`.
    #[must_use]
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// A non-registered claim as a string, if present and a string.
    pub fn extra_str(&self, name: &str) -> Option<&str> {
        self.extra.get(name).and_then(Value::as_str)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
