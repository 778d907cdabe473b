//! Planning a run: which tenants, in which wave, from which version; which are skipped and
//! why; and the expand / contract barrier.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::{
    catalog::{
        FailurePolicy, MigrationParams, PlanTenant, TenantMigration, TenantMigrationState,
        WaveParams,
    },
    migrations::MigrationSet,
    tenant::{TenantId, TenantState},
};

/// Which of the not-yet-taken tenants a wave takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaveSelector {
    /// These tenants (a canary list).
    Tenants(Vec<TenantId>),
    /// This share (1-100) of all planned tenants, by a stable hash of the id.
    Percent(u32),
    /// The tenants of a tier.
    Tier(String),
    /// Everyone no earlier wave took.
    Rest,
}

/// One requested wave: a name, which tenants, and how many run at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaveSpec {
    /// Name shown in the run's progress.
    pub name: String,
    /// Which tenants the wave takes (from those no earlier wave took).
    pub selector: WaveSelector,
    /// How many tenants of the wave are migrated at once; 0 is taken as 1.
    pub concurrency: u32,
}

/// A MigrateTenants request after validation: what to migrate to, in which waves, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRequest {
    /// Tenant schema version to bring tenants to; must be a version of the tenant migration
    /// set.
    pub target_version: i64,
    /// Waves in order; none means one wave, `all`, of every eligible tenant.
    pub waves: Vec<WaveSpec>,
    /// Concurrency of the implicit `all` / `rest` wave; 0 is taken as 1.
    pub concurrency: u32,
    /// What to do after a tenant fails.
    pub failure_policy: FailurePolicy,
    /// Only plan and record the plan; migrate nothing.
    pub dry_run: bool,
    /// Also migrate `SUSPENDED` tenants.
    pub include_suspended: bool,
}

/// Why a run cannot be planned; nothing is recorded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// A `Tenants` wave names a tenant that is not in the catalog (or is `DELETED`).
    #[error("wave {wave} names tenant {tenant}, which does not exist")]
    UnknownTenant {
        /// Name of the wave.
        wave: String,
        /// The tenant id it names.
        tenant: String,
    },
    /// An expand / contract barrier: a migration between the lowest planned version and the
    /// target is marked `-- silo:requires-all-tenants-at N`, and some `ACTIVE` or
    /// `SUSPENDED` tenant is still below `N`.
    #[error(
        "migration {version} ({name}) needs every tenant at version {requires} first; {count} tenant(s) are below it (e.g. {examples}): run to version {requires} first"
    )]
    Barrier {
        /// Version of the contract migration.
        version: i64,
        /// Name of the contract migration.
        name: String,
        /// The version every live tenant must reach first.
        requires: i64,
        /// How many live tenants are below it.
        count: usize,
        /// Up to five of them, comma-separated.
        examples: String,
    },
}

fn stable_rank(id: &TenantId) -> [u8; 32] {
    Sha256::digest(id.as_str().as_bytes()).into()
}

/// Plans a run over `tenants` (every tenant that is not DELETED).
pub fn plan(
    tenants: &[PlanTenant],
    request: &MigrationRequest,
    migrations: &MigrationSet,
) -> Result<(MigrationParams, Vec<TenantMigration>), PlanError> {
    let target = request.target_version;
    let mut rows = Vec::new();
    let mut candidates: Vec<&PlanTenant> = Vec::new();
    let skip = |tenant: &PlanTenant, detail: String| TenantMigration {
        tenant_id: tenant.id.clone(),
        wave: 0,
        state: TenantMigrationState::Skipped,
        from_version: tenant.schema_version,
        version: tenant.schema_version,
        detail,
        attempts: 0,
        started_at: None,
        finished_at: None,
    };
    for tenant in tenants {
        let eligible = match tenant.state {
            TenantState::Active => Ok(()),
            TenantState::Suspended if request.include_suspended => Ok(()),
            TenantState::Suspended => {
                Err("suspended (set include_suspended to migrate it)".to_owned())
            }
            state if state.is_onboarding() => {
                Err(format!("{state}: onboarding applies the latest version"))
            }
            state => Err(format!("{state}")),
        };
        match eligible {
            Err(reason) => rows.push(skip(tenant, reason)),
            Ok(()) if tenant.schema_version >= target => {
                rows.push(skip(
                    tenant,
                    format!("already at version {}", tenant.schema_version),
                ));
            }
            Ok(()) => candidates.push(tenant),
        }
    }

    check_barriers(tenants, &candidates, target, migrations)?;

    let mut waves = request.waves.clone();
    if waves.is_empty() {
        waves.push(WaveSpec {
            name: "all".into(),
            selector: WaveSelector::Rest,
            concurrency: request.concurrency,
        });
    }
    let total = candidates.len();
    let mut remaining: Vec<&PlanTenant> = candidates;
    let mut wave_params = Vec::new();
    for spec in &waves {
        let index = i32::try_from(wave_params.len()).unwrap_or(i32::MAX);
        let chosen: BTreeSet<TenantId> = match &spec.selector {
            WaveSelector::Tenants(ids) => {
                for id in ids {
                    if !tenants.iter().any(|t| &t.id == id) {
                        return Err(PlanError::UnknownTenant {
                            wave: spec.name.clone(),
                            tenant: id.to_string(),
                        });
                    }
                }
                remaining
                    .iter()
                    .filter(|t| ids.contains(&t.id))
                    .map(|t| t.id.clone())
                    .collect()
            }
            WaveSelector::Percent(percent) => {
                let count = (total * (*percent).min(100) as usize).div_ceil(100);
                let mut ranked = remaining.clone();
                ranked.sort_by_key(|t| stable_rank(&t.id));
                ranked
                    .into_iter()
                    .take(count)
                    .map(|t| t.id.clone())
                    .collect()
            }
            WaveSelector::Tier(tier) => remaining
                .iter()
                .filter(|t| &t.tier == tier)
                .map(|t| t.id.clone())
                .collect(),
            WaveSelector::Rest => remaining.iter().map(|t| t.id.clone()).collect(),
        };
        push_wave(&mut rows, &mut remaining, &chosen, index, request.dry_run);
        wave_params.push(WaveParams {
            name: spec.name.clone(),
            concurrency: spec.concurrency.max(1),
        });
    }
    if !remaining.is_empty() {
        let index = i32::try_from(wave_params.len()).unwrap_or(i32::MAX);
        let rest: BTreeSet<TenantId> = remaining.iter().map(|t| t.id.clone()).collect();
        push_wave(&mut rows, &mut remaining, &rest, index, request.dry_run);
        wave_params.push(WaveParams {
            name: "rest".into(),
            concurrency: request.concurrency.max(1),
        });
    }
    let params = MigrationParams {
        target_version: target,
        waves: wave_params,
        failure_policy: request.failure_policy,
        dry_run: request.dry_run,
        include_suspended: request.include_suspended,
    };
    Ok((params, rows))
}

fn push_wave(
    rows: &mut Vec<TenantMigration>,
    remaining: &mut Vec<&PlanTenant>,
    chosen: &BTreeSet<TenantId>,
    wave: i32,
    dry_run: bool,
) {
    let state = if dry_run {
        TenantMigrationState::Planned
    } else {
        TenantMigrationState::Pending
    };
    for tenant in remaining.iter().filter(|t| chosen.contains(&t.id)) {
        rows.push(TenantMigration {
            tenant_id: tenant.id.clone(),
            wave,
            state,
            from_version: tenant.schema_version,
            version: tenant.schema_version,
            detail: String::new(),
            attempts: 0,
            started_at: None,
            finished_at: None,
        });
    }
    remaining.retain(|t| !chosen.contains(&t.id));
}

/// A contract migration (`requires_all_at`) runs only when no live tenant is below the
/// version it names.
fn check_barriers(
    tenants: &[PlanTenant],
    candidates: &[&PlanTenant],
    target: i64,
    migrations: &MigrationSet,
) -> Result<(), PlanError> {
    let lowest = candidates
        .iter()
        .map(|t| t.schema_version)
        .min()
        .unwrap_or(target);
    for migration in migrations.between(lowest, target) {
        let Some(requires) = migration.requires_all_at else {
            continue;
        };
        let below: Vec<&str> = tenants
            .iter()
            .filter(|t| matches!(t.state, TenantState::Active | TenantState::Suspended))
            .filter(|t| t.schema_version < requires)
            .map(|t| t.id.as_str())
            .collect();
        if !below.is_empty() {
            return Err(PlanError::Barrier {
                version: migration.version,
                name: migration.name.clone(),
                requires,
                count: below.len(),
                examples: below.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, tier: &str, state: TenantState, version: i64) -> PlanTenant {
        PlanTenant {
            id: TenantId::parse(id).unwrap(),
            tier: tier.into(),
            state,
            schema_version: version,
        }
    }

    fn request(waves: Vec<WaveSpec>) -> MigrationRequest {
        MigrationRequest {
            target_version: 2,
            waves,
            concurrency: 4,
            failure_policy: FailurePolicy::Stop,
            dry_run: false,
            include_suspended: false,
        }
    }

    fn set() -> MigrationSet {
        MigrationSet::from_files(&[("V1__a.sql", "SELECT 1"), ("V2__b.sql", "SELECT 2")]).unwrap()
    }

    #[test]
    fn canary_then_rest_and_skips_are_explicit() {
        let tenants = vec![
            tenant("aa", "standard", TenantState::Active, 1),
            tenant("bb", "standard", TenantState::Active, 1),
            tenant("cc", "enterprise", TenantState::Suspended, 1),
            tenant("dd", "standard", TenantState::Provisioning, 0),
            tenant("ee", "standard", TenantState::Active, 2),
        ];
        let canary = WaveSpec {
            name: "canary".into(),
            selector: WaveSelector::Tenants(vec![TenantId::parse("bb").unwrap()]),
            concurrency: 1,
        };
        let (params, rows) = plan(&tenants, &request(vec![canary]), &set()).unwrap();
        assert_eq!(
            params
                .waves
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>(),
            ["canary", "rest"]
        );
        let by_id = |id: &str| rows.iter().find(|r| r.tenant_id.as_str() == id).unwrap();
        assert_eq!(
            (by_id("bb").wave, by_id("bb").state),
            (0, TenantMigrationState::Pending)
        );
        assert_eq!(
            (by_id("aa").wave, by_id("aa").state),
            (1, TenantMigrationState::Pending)
        );
        for skipped in ["cc", "dd", "ee"] {
            assert_eq!(
                by_id(skipped).state,
                TenantMigrationState::Skipped,
                "{skipped}"
            );
        }
        assert!(by_id("cc").detail.contains("suspended"));
    }

    #[test]
    fn percent_and_tier_waves_partition_the_fleet() {
        let tenants: Vec<_> = (0..20)
            .map(|i| {
                tenant(
                    &format!("t{i:02}"),
                    if i % 4 == 0 { "enterprise" } else { "standard" },
                    TenantState::Active,
                    1,
                )
            })
            .collect();
        let waves = vec![
            WaveSpec {
                name: "ten-percent".into(),
                selector: WaveSelector::Percent(10),
                concurrency: 2,
            },
            WaveSpec {
                name: "enterprise".into(),
                selector: WaveSelector::Tier("enterprise".into()),
                concurrency: 2,
            },
        ];
        let (params, rows) = plan(&tenants, &request(waves), &set()).unwrap();
        assert_eq!(params.waves.len(), 3);
        assert_eq!(rows.iter().filter(|r| r.wave == 0).count(), 2);
        assert!(rows.iter().filter(|r| r.wave == 1).all(|r| {
            tenants
                .iter()
                .any(|t| t.id == r.tenant_id && t.tier == "enterprise")
        }));
        assert_eq!(rows.len(), 20, "every tenant is planned exactly once");
    }

    #[test]
    fn unknown_canary_and_contract_barrier_are_refused() {
        let tenants = vec![tenant("aa", "standard", TenantState::Active, 1)];
        let canary = WaveSpec {
            name: "canary".into(),
            selector: WaveSelector::Tenants(vec![TenantId::parse("zz").unwrap()]),
            concurrency: 1,
        };
        assert!(matches!(
            plan(&tenants, &request(vec![canary]), &set()),
            Err(PlanError::UnknownTenant { .. })
        ));

        let contract = MigrationSet::from_files(&[
            ("V1__a.sql", "SELECT 1"),
            ("V2__expand.sql", "SELECT 2"),
            (
                "V3__contract.sql",
                "-- silo:requires-all-tenants-at 2\nSELECT 3",
            ),
        ])
        .unwrap();
        let mut to_three = request(vec![]);
        to_three.target_version = 3;
        let refused = plan(&tenants, &to_three, &contract).unwrap_err();
        assert!(matches!(
            refused,
            PlanError::Barrier {
                version: 3,
                requires: 2,
                ..
            }
        ));
        let at_two = vec![tenant("aa", "standard", TenantState::Active, 2)];
        assert!(plan(&at_two, &to_three, &contract).is_ok());
    }
}
