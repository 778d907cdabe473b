//! Tenant identity and lifecycle: the ids, states and names every other module speaks in.

use std::{fmt, str::FromStr};

use thiserror::Error;

/// A tenant id: a lower-case letter, then 1 to 62 lower-case letters, digits or hyphens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "tenant id must be a lower-case letter followed by 1 to 62 lower-case letters, digits or hyphens"
)]
pub struct InvalidTenantId;

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantId> {
        if silo_proto::is_valid_tenant_id(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidTenantId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Name of the tenant's database and of its login role on a shared server. Derived from
    /// the id alone, so a retried step finds what an earlier attempt made. PostgreSQL
    /// identifiers hold 63 bytes: `t_` plus the id (at most 63) is cut, then a hash keeps
    /// two long ids that share a prefix apart.
    pub fn silo_name(&self) -> String {
        let name = format!("t_{}", self.0.replace('-', "_"));
        if name.len() <= 63 {
            return name;
        }
        let digest = sha2_hex(&self.0);
        format!("{}_{}", &name[..54], &digest[..8])
    }
}

fn sha2_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    Requested,
    Provisioning,
    WaitingAvailable,
    Migrating,
    Active,
    Suspended,
    Deleting,
    Deleted,
    Failed,
}

impl TenantState {
    pub const ALL: [TenantState; 9] = [
        Self::Requested,
        Self::Provisioning,
        Self::WaitingAvailable,
        Self::Migrating,
        Self::Active,
        Self::Suspended,
        Self::Deleting,
        Self::Deleted,
        Self::Failed,
    ];

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
    fn silo_names_are_valid_identifiers_and_distinct() {
        let long_a = TenantId::parse(&format!("a{}x", "b".repeat(61))).unwrap();
        let long_b = TenantId::parse(&format!("a{}y", "b".repeat(61))).unwrap();
        assert!(long_a.silo_name().len() <= 63);
        assert_ne!(long_a.silo_name(), long_b.silo_name());
        assert_eq!(TenantId::parse("acme-eu").unwrap().silo_name(), "t_acme_eu");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in TenantState::ALL {
            assert_eq!(state.as_str().parse::<TenantState>().unwrap(), state);
        }
    }
}
