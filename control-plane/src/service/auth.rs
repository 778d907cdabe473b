//! Who may call what on the ControlPlane API: a bearer JWT whose `role` claim is `admin`,
//! `viewer` or `router`.

use serde::Deserialize;
use silo_auth::JwtVerifier;
use tonic::metadata::MetadataMap;

use crate::error::ControlPlaneError;

/// What a call needs the caller's `role` claim to allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read tenants and operations.
    Read,
    /// Create, suspend, resume, delete, rotate.
    Mutate,
    /// Resolve a tenant's route (its credentials included).
    Resolve,
    /// Follow the tenant-event log.
    WatchEvents,
}

#[derive(Debug, Deserialize)]
struct OperatorClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    role: String,
}

/// The authenticated caller, for audit lines.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's `sub` claim (empty if absent).
    pub subject: String,
    /// The token's `role` claim: `admin`, `viewer` or `router`.
    pub role: String,
}

pub fn authorize(
    verifier: &JwtVerifier,
    metadata: &MetadataMap,
    permission: Permission,
) -> Result<Caller, ControlPlaneError> {
    let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
    let token = silo_auth::bearer_token(header)
        .map_err(|e| ControlPlaneError::InvalidToken(e.to_string()))?;
    let claims: OperatorClaims = verifier
        .verify(token)
        .map_err(|e| ControlPlaneError::InvalidToken(e.to_string()))?;
    let allowed = match permission {
        Permission::Read => matches!(claims.role.as_str(), "admin" | "viewer"),
        Permission::Mutate => claims.role == "admin",
        Permission::Resolve => claims.role == "router",
        Permission::WatchEvents => matches!(claims.role.as_str(), "admin" | "router"),
    };
    if !allowed {
        return Err(ControlPlaneError::RoleNotAllowed(
            "the token's role may not make this call",
        ));
    }
    Ok(Caller {
        subject: claims.sub,
        role: claims.role,
    })
}
