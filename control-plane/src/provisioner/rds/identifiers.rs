//! Names silo gives RDS resources, derived from the tenant id alone so that a retried or
//! resumed step finds what an earlier attempt made. RDS identifiers: 1–63 characters, a
//! letter first, letters, digits and hyphens, no double or trailing hyphen, lower case.

use sha2::{Digest, Sha256};

use crate::tenant::TenantId;

/// Tag naming the tenant an instance belongs to; adoption and the reconciler key on it.
pub const TENANT_TAG: &str = "silo:tenant-id";
/// Tag naming the create request that made the instance.
pub const REQUEST_TAG: &str = "silo:request-id";
/// Tag naming the tier the instance was sized for.
pub const TIER_TAG: &str = "silo:tier";

const PREFIX: &str = "silo-";
const MAX_LEN: usize = 63;

fn digest_hex(text: &str, len: usize) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..len]
        .to_owned()
}

/// Whether `id` follows RDS's rules for instance identifiers.
pub fn is_valid_instance_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !id.contains("--")
        && !id.ends_with('-')
}

/// `silo-<tenant id>` when that is a valid identifier. Otherwise (too long, or a double or
/// trailing hyphen) the id is cleaned and cut, and a hash of the full tenant id keeps two
/// tenants whose cleaned ids collide apart.
pub fn instance_id(tenant: &TenantId) -> String {
    let plain = format!("{PREFIX}{}", tenant.as_str());
    if is_valid_instance_id(&plain) {
        return plain;
    }
    let mut cleaned = String::with_capacity(plain.len());
    for c in plain.chars() {
        if c == '-' && cleaned.ends_with('-') {
            continue;
        }
        cleaned.push(c);
    }
    let suffix = digest_hex(tenant.as_str(), 8);
    let keep = MAX_LEN - suffix.len() - 1;
    cleaned.truncate(keep);
    let cleaned = cleaned.trim_end_matches('-');
    format!("{cleaned}-{suffix}")
}

/// The snapshot RDS takes when silo deletes the instance: fixed for one incarnation of the
/// tenant (its create request id), so a retried delete asks for the same snapshot and a
/// tenant created again later does not collide with the old one. Snapshot identifiers allow
/// 255 characters with the same alphabet.
pub fn final_snapshot_id(instance_id: &str, request_id: &str) -> String {
    format!("{instance_id}-final-{}", digest_hex(request_id, 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(raw: &str) -> TenantId {
        TenantId::parse(raw).unwrap()
    }

    #[test]
    fn plain_ids_keep_the_tenant_id() {
        assert_eq!(instance_id(&tenant("acme")), "silo-acme");
        assert_eq!(instance_id(&tenant("acme-eu-1")), "silo-acme-eu-1");
    }

    #[test]
    fn every_tenant_id_gives_a_valid_stable_identifier() {
        let long = format!("a{}", "b".repeat(62));
        let cases = [
            "ab".to_owned(),
            "a--b".to_owned(),
            "ab-".to_owned(),
            "a-".to_owned(),
            long.clone(),
            format!("a{}", "-".repeat(62)),
            format!("{}-", &long[..62]),
        ];
        for raw in &cases {
            let id = instance_id(&tenant(raw));
            assert!(is_valid_instance_id(&id), "{raw:?} gave {id:?}");
            assert_eq!(id, instance_id(&tenant(raw)), "deterministic");
        }
        assert_ne!(
            instance_id(&tenant("a--b")),
            instance_id(&tenant("a-b")),
            "cleaned ids that collide stay apart"
        );
        assert_ne!(
            instance_id(&tenant(&format!("{}x", &long[..62]))),
            instance_id(&tenant(&format!("{}y", &long[..62]))),
        );
    }

    #[test]
    fn identifier_rules() {
        assert!(is_valid_instance_id("silo-a1"));
        for bad in ["", "1abc", "Silo", "a--b", "ab-", "a_b", &"a".repeat(64)] {
            assert!(!is_valid_instance_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn final_snapshots_differ_per_incarnation() {
        let first = final_snapshot_id("silo-acme", "req-1");
        assert_eq!(first, final_snapshot_id("silo-acme", "req-1"));
        assert_ne!(first, final_snapshot_id("silo-acme", "req-2"));
        assert!(first.starts_with("silo-acme-final-"));
    }
}
