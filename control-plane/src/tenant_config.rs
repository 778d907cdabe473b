//! Per-tenant configuration: key → JSON value settings, with tier defaults (the tiers
//! file's `[tiers.NAME.config]`) that a tenant's own values override per top-level key.
//!
//! The rules of keys and values, the merge, and the version routers report live here; the
//! catalog stores a tenant's own values (`catalog::config`), the service reads and changes
//! them (`service::config`), and `ResolveTenant` carries the merged settings to routers.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Largest value, in bytes of compact JSON.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most keys a tenant may set (its own; tier defaults not counted), and most defaults a
/// tier may have.
pub const MAX_KEYS: usize = 128;
/// Most bytes (compact JSON) of all of one tenant's own values together, and of one tier's
/// defaults together: a route carries both, and must stay far below gRPC's 4 MiB.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

/// Settings by key (a tenant's own, a tier's defaults, or the two merged).
pub type Settings = BTreeMap<String, serde_json::Value>;

/// Why a key, a value or a tenant's settings as a whole were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigRuleError {
    /// The key breaks the key rule.
    #[error(
        "config key {0:?} must be 1 to {MAX_KEY_LEN} of [a-z0-9_.-], starting with a letter or digit"
    )]
    Key(String),
    /// The value is not one JSON document.
    #[error("config value is not valid JSON: {0}")]
    Json(String),
    /// The value is too large.
    #[error("config value is {0} bytes as compact JSON; at most {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    /// Setting the key would give the tenant more keys than allowed.
    #[error("a tenant may set at most {MAX_KEYS} config keys")]
    TooManyKeys,
    /// Setting the key would make the tenant's values larger together than allowed.
    #[error("a tenant's config values may total at most {MAX_TOTAL_BYTES} bytes")]
    TooLarge,
}

/// A config key: 1 to [`MAX_KEY_LEN`] of `[a-z0-9_.-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigKey(String);

impl ConfigKey {
    /// The key, checked.
    pub fn parse(raw: &str) -> Result<Self, ConfigRuleError> {
        let bytes = raw.as_bytes();
        let valid = (1..=MAX_KEY_LEN).contains(&bytes.len())
            && bytes[0].is_ascii_alphanumeric()
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ConfigRuleError::Key(
                raw.chars().take(MAX_KEY_LEN + 8).collect(),
            ))
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A config value: one JSON document of at most [`MAX_VALUE_BYTES`] as compact JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue(serde_json::Value);

impl ConfigValue {
    /// The value of JSON text `raw`, checked.
    pub fn parse(raw: &str) -> Result<Self, ConfigRuleError> {
        // Bound the work before parsing: whitespace aside, a source this long cannot fit.
        if raw.len() > 4 * MAX_VALUE_BYTES {
            return Err(ConfigRuleError::ValueTooLarge(raw.len()));
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| ConfigRuleError::Json(e.to_string()))?;
        Self::new(value)
    }

    /// `value`, checked for size.
    pub fn new(value: serde_json::Value) -> Result<Self, ConfigRuleError> {
        let size = compact_len(&value);
        if size > MAX_VALUE_BYTES {
            return Err(ConfigRuleError::ValueTooLarge(size));
        }
        Ok(Self(value))
    }

    /// The JSON value.
    pub fn json(&self) -> &serde_json::Value {
        &self.0
    }
}

/// Bytes of `value` as compact JSON.
pub fn compact_len(value: &serde_json::Value) -> usize {
    text(value).len()
}

/// `value` as compact JSON text (what the API hands out).
pub fn text(value: &serde_json::Value) -> String {
    // Serializing a `Value` cannot fail (its map keys are strings).
    serde_json::to_string(value).unwrap_or_default()
}

/// Whether `settings` (a tenant's own, or a tier's defaults) keeps within the per-key rules
/// and the count and total-size bounds.
pub fn check_settings(settings: &Settings) -> Result<(), ConfigRuleError> {
    for (key, value) in settings {
        ConfigKey::parse(key)?;
        ConfigValue::new(value.clone())?;
    }
    if settings.len() > MAX_KEYS {
        return Err(ConfigRuleError::TooManyKeys);
    }
    if settings.values().map(compact_len).sum::<usize>() > MAX_TOTAL_BYTES {
        return Err(ConfigRuleError::TooLarge);
    }
    Ok(())
}

/// What services see: the tier's defaults, each top-level key replaced by the tenant's own
/// value when it has one (a shallow merge: an object value replaces the default whole).
pub fn merge(tier_defaults: &Settings, own: &Settings) -> Settings {
    let mut merged = tier_defaults.clone();
    merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// The version of `merged` settings for a tenant at config revision `revision`:
/// `<revision>-<16 hex digits of SHA-256 of the merged settings as JSON>`. Equal versions
/// mean equal settings; a set or unset changes the revision, and a tier default changed in
/// the tiers file (or a new tier) changes the hash.
pub fn version(revision: i64, merged: &Settings) -> String {
    let digest = Sha256::digest(serde_json::to_vec(merged).unwrap_or_default());
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&digest[..8]);
    format!("{revision}-{:016x}", u64::from_be_bytes(hash))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_follow_the_rule() {
        for good in ["a", "beta.search", "max_seats", "0-day", &"k".repeat(128)] {
            assert!(ConfigKey::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Beta",
            ".hidden",
            "_x",
            "-x",
            "with space",
            "ü",
            "a/b",
            &"k".repeat(129),
        ] {
            assert!(ConfigKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_one_json_document_within_the_size_bound() {
        assert_eq!(
            ConfigValue::parse("true").expect("valid").json(),
            &json!(true)
        );
        assert_eq!(
            ConfigValue::parse(" {\"a\": [1, 2]} ")
                .expect("valid")
                .json(),
            &json!({"a": [1, 2]})
        );
        assert!(ConfigValue::parse("null").is_ok());
        assert!(matches!(
            ConfigValue::parse("tru"),
            Err(ConfigRuleError::Json(_))
        ));
        assert!(matches!(
            ConfigValue::parse("1 2"),
            Err(ConfigRuleError::Json(_))
        ));
        let big = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(
            ConfigValue::parse(&big),
            Err(ConfigRuleError::ValueTooLarge(_))
        ));
        let fits = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES - 2));
        assert!(ConfigValue::parse(&fits).is_ok());
    }

    #[test]
    fn tenant_values_override_tier_defaults_per_top_level_key() {
        let defaults: Settings = [
            ("beta".to_owned(), json!(false)),
            ("limits".to_owned(), json!({"seats": 5, "projects": 3})),
        ]
        .into();
        let own: Settings = [
            ("limits".to_owned(), json!({"seats": 50})),
            ("region".to_owned(), json!("eu")),
        ]
        .into();
        let merged = merge(&defaults, &own);
        assert_eq!(merged["beta"], json!(false));
        // Shallow: the tenant's object replaces the default's whole.
        assert_eq!(merged["limits"], json!({"seats": 50}));
        assert_eq!(merged["region"], json!("eu"));
    }

    #[test]
    fn the_version_changes_with_the_revision_and_with_the_settings() {
        let a: Settings = [("beta".to_owned(), json!(true))].into();
        let b: Settings = [("beta".to_owned(), json!(false))].into();
        assert_eq!(version(3, &a), version(3, &a.clone()));
        assert_ne!(version(3, &a), version(4, &a));
        assert_ne!(version(3, &a), version(3, &b));
        assert!(version(3, &a).starts_with("3-"));
    }

    #[test]
    fn settings_are_bounded_in_count_and_size() {
        let many: Settings = (0..=MAX_KEYS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert_eq!(check_settings(&many), Err(ConfigRuleError::TooManyKeys));
        let large: Settings = (0..5)
            .map(|i| (format!("k{i}"), json!("x".repeat(60 * 1024))))
            .collect();
        assert_eq!(check_settings(&large), Err(ConfigRuleError::TooLarge));
        let bad_key: Settings = [("Bad".to_owned(), json!(1))].into();
        assert!(matches!(
            check_settings(&bad_key),
            Err(ConfigRuleError::Key(_))
        ));
    }
}
