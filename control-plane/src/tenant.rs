//! Tenant identity and lifecycle: the ids, states and names every other module speaks in.

use std::{fmt, str::FromStr};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// A tenant id: a lower-case letter, then 1 to 62 lower-case letters, digits or hyphens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// A string that is not a valid tenant id (see [`TenantId`]); the rule is the proto's
/// `is_valid_tenant_id`, shared with the router.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "tenant id must be a lower-case letter followed by 1 to 62 lower-case letters, digits or hyphens"
)]
pub struct InvalidTenantId;

impl TenantId {
    /// Checks `raw` against the tenant id rule, so the id can be used in names, SQL
    /// identifiers and URLs.
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantId> {
        if silo_proto::is_valid_tenant_id(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidTenantId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names of a tenant's database and login role on its server, as the catalog keeps
/// them. Every step reads them from the catalog, never recomputes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiloNames {
    /// The database name (at most 63 bytes, PostgreSQL's identifier limit).
    pub database: String,
    /// The login role name; unique over the catalog.
    pub role: String,
    /// How the names were made.
    pub scheme: NameScheme,
}

/// How a tenant's silo names were made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    /// `t_<tenant id>`: tenants made before keyed names; they keep them.
    TenantId,
    /// `s_<HMAC-SHA256(name key, tenant id), 128 bits in hex>`.
    HmacSha256,
}

impl NameScheme {
    /// The text stored in `tenants.name_scheme`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantId => "tenant-id",
            Self::HmacSha256 => "hmac-sha256-v1",
        }
    }

    /// The scheme stored as `raw`; `None` if no scheme has that text.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::TenantId, Self::HmacSha256]
            .into_iter()
            .find(|scheme| scheme.as_str() == raw)
    }
}

/// Derives opaque silo names from tenant ids with a keyed hash, so that a name seen on a
/// shared server says nothing about which tenant it is, and cannot be computed from a
/// tenant id without the deployment's name key. Deterministic: a tenant created again
/// after a failed attempt gets the same names and adopts what the attempt made.
#[derive(Clone)]
pub struct SiloNamer {
    mac: Hmac<Sha256>,
}

/// An empty `--silo-name-key` (HMAC-SHA256 accepts any other length).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the silo name key must not be empty")]
pub struct InvalidNameKey;

impl fmt::Debug for SiloNamer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SiloNamer(..)")
    }
}

impl SiloNamer {
    /// A namer keyed with `key` (the `--silo-name-key` secret, or a key derived from the
    /// credentials key).
    pub fn new(key: &[u8]) -> Result<Self, InvalidNameKey> {
        if key.is_empty() {
            return Err(InvalidNameKey);
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| InvalidNameKey)?;
        Ok(Self { mac })
    }

    /// A name key derived from another secret under a label of its own: knowing the name
    /// key (or a name) tells nothing about the secret it came from.
    pub fn derived_from(secret: &[u8]) -> Result<Self, InvalidNameKey> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| InvalidNameKey)?;
        mac.update(b"silo name key v1");
        Self::new(&mac.finalize().into_bytes())
    }

    /// `s_` and 32 hex digits (34 bytes, well inside PostgreSQL's 63); the same for the
    /// database and the role.
    pub fn names(&self, tenant: &TenantId) -> SiloNames {
        let mut mac = self.mac.clone();
        mac.update(tenant.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let name = format!("s_{}", hex(&digest[..16]));
        SiloNames {
            database: name.clone(),
            role: name,
            scheme: NameScheme::HmacSha256,
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenant lifecycle (DESIGN.md): `REQUESTED → PROVISIONING → WAITING_AVAILABLE →
/// MIGRATING → ACTIVE`, `ACTIVE ⇄ SUSPENDED`, `* → DELETING → DELETED`, and `FAILED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TenantState {
    /// Recorded by CreateTenant; waiting for a worker to start onboarding.
    Requested,
    /// The provisioner is making the database and role (or RDS instance).
    Provisioning,
    /// Waiting for the silo's server to accept connections (an RDS instance to become
    /// `available`).
    WaitingAvailable,
    /// Applying the tenant schema migrations to the new silo.
    Migrating,
    /// Onboarded and served by routers.
    Active,
    /// Kept, but routers refuse its calls until it is resumed.
    Suspended,
    /// Deletion is under way; routers stop serving it.
    Deleting,
    /// Deleted; the row stays (until the id is created again) so lookups and events still
    /// name it.
    Deleted,
    /// Onboarding failed for good (`failure_reason` says why); the tenant can be created
    /// again.
    Failed,
    /// Its silo is being switched to another database (MoveTenant): routers hold its new
    /// calls until the new route is published and end its open transactions.
    Moving,
}

impl TenantState {
    /// Every state, in lifecycle order.
    pub const ALL: [TenantState; 10] = [
        Self::Requested,
        Self::Provisioning,
        Self::WaitingAvailable,
        Self::Migrating,
        Self::Active,
        Self::Suspended,
        Self::Deleting,
        Self::Deleted,
        Self::Failed,
        Self::Moving,
    ];

    /// The text stored in the catalog and sent over gRPC (`ACTIVE`, `WAITING_AVAILABLE`,
    /// ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Provisioning => "PROVISIONING",
            Self::WaitingAvailable => "WAITING_AVAILABLE",
            Self::Migrating => "MIGRATING",
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
            Self::Deleting => "DELETING",
            Self::Deleted => "DELETED",
            Self::Failed => "FAILED",
            Self::Moving => "MOVING",
        }
    }

    /// Onboarding has not finished yet.
    pub fn is_onboarding(self) -> bool {
        matches!(
            self,
            Self::Requested | Self::Provisioning | Self::WaitingAvailable | Self::Migrating
        )
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state text that is none of [`TenantState::ALL`]: a corrupt catalog row or a bad
/// filter.
#[derive(Debug, Error)]
#[error("unknown tenant state {0:?}")]
pub struct UnknownTenantState(pub String);

impl FromStr for TenantState {
    type Err = UnknownTenantState;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == raw)
            .ok_or_else(|| UnknownTenantState(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_slug_rule() {
        for good in [
            "ab",
            "acme",
            "a-1",
            "globex-corp-2",
            &format!("a{}", "b".repeat(62)),
        ] {
            assert!(TenantId::parse(good).is_ok(), "{good} should be valid");
        }
        for bad in [
            "",
            "a",
            "Acme",
            "1acme",
            "-acme",
            "ac me",
            "acme_corp",
            "acmé",
            "acme;drop",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert_eq!(
                TenantId::parse(bad),
                Err(InvalidTenantId),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn keyed_names_are_opaque_deterministic_and_depend_on_the_key() {
        let namer = SiloNamer::new(b"key one").unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let longest = TenantId::parse(&format!("a{}", "b".repeat(62))).unwrap();
        let names = namer.names(&acme);
        assert_eq!(names, namer.names(&acme), "deterministic");
        assert_eq!(names.database, names.role);
        assert_eq!(names.scheme, NameScheme::HmacSha256);
        assert!(names.role.starts_with("s_") && names.role.len() == 34);
        assert!(!names.role.contains("acme"));
        assert!(
            names.role[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(namer.names(&longest).role.len() <= 63);
        assert_ne!(names, namer.names(&TenantId::parse("acmf").unwrap()));
        assert_ne!(names, SiloNamer::new(b"key two").unwrap().names(&acme));
        assert_ne!(
            SiloNamer::derived_from(b"secret").unwrap().names(&acme),
            SiloNamer::new(b"secret").unwrap().names(&acme),
            "a derived key is not the secret itself"
        );
        assert!(!format!("{namer:?}").contains("key one"));
        assert_eq!(SiloNamer::new(b"").unwrap_err(), InvalidNameKey);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in TenantState::ALL {
            assert_eq!(state.as_str().parse::<TenantState>().unwrap(), state);
        }
    }
}
