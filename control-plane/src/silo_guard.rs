//! The silo guard: keeps every tenant role on the `postgres` fleet as the catalog says it
//! is, and every silo at the current isolation.
//!
//! A tenant may change its own password and its role's session defaults through SQL
//! (PostgreSQL lets any role do that); once its router's connections are recycled it could
//! no longer log in. Every `--guard-interval-ms` the guard reads all tenant roles of each
//! fleet server in one query, compares them with the catalog, and puts back a role that
//! differs, with an audit line. A difference must be seen on two consecutive rounds with
//! the same credentials version before it is repaired, so a RotateCredentials that has
//! changed the server but not yet the catalog is never undone. Silos made before the
//! current isolation (`provisioner::isolation::VERSION`) get it on the way.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{Catalog, TenantRecord},
    crypto::CredentialCipher,
    metrics::ControlPlaneMetrics,
    provisioner::{
        AnyProvisioner, ProvisionError, Provisioner, Provisioners, TenantSpec, bootstrap,
        isolation, scram,
    },
    tenant::TenantId,
};

/// What the server says about one tenant role.
struct RoleState {
    verifier: Option<String>,
    /// Login, no other privilege attribute, no connection limit, no expiry.
    attributes_as_made: bool,
    has_settings: bool,
}

/// The guard's state between rounds (see the module docs); one per control plane replica,
/// run by `run`.
pub struct SiloGuard {
    catalog: Catalog,
    provisioners: Provisioners,
    cipher: CredentialCipher,
    metrics: ControlPlaneMetrics,
    /// What failed last round (the round itself, a server, a silo's isolation): a failure
    /// is logged when it starts and when it ends, not every round.
    failing: HashSet<String>,
    /// Verifiers already checked against the catalog's password, by tenant and credentials
    /// version: the costly check runs once per password, not every round.
    verified: HashMap<(TenantId, i32), String>,
    /// Tenants whose role differed last round, with the credentials version then.
    suspects: HashMap<TenantId, i32>,
}

impl SiloGuard {
    /// A guard over the `postgres` provisioner's fleet in `provisioners`; `cipher` opens
    /// the stored passwords it compares and puts back.
    pub fn new(
        catalog: Catalog,
        provisioners: Provisioners,
        cipher: CredentialCipher,
        metrics: ControlPlaneMetrics,
    ) -> Self {
        Self {
            catalog,
            provisioners,
            cipher,
            metrics,
            failing: HashSet::new(),
            verified: HashMap::new(),
            suspects: HashMap::new(),
        }
    }

    /// Runs a round every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        loop {
            let result = self.round().await;
            self.note("round", result.as_ref().err());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One pass over every guarded tenant.
    pub async fn round(&mut self) -> Result<(), GuardError> {
        let Some(AnyProvisioner::Postgres(provisioner)) = self.provisioners.get("postgres") else {
            return Ok(());
        };
        let provisioner = AnyProvisioner::Postgres(provisioner.clone());
        let tenants = self.catalog.guarded_tenants("postgres").await?;
        let live: HashSet<&TenantId> = tenants.iter().map(|t| &t.id).collect();
        self.suspects.retain(|id, _| live.contains(id));
        self.verified.retain(|(id, _), _| live.contains(id));

        let mut by_server: BTreeMap<String, Vec<&TenantRecord>> = BTreeMap::new();
        for tenant in &tenants {
            if let Some(placement) = &tenant.placement {
                by_server
                    .entry(placement.server.clone())
                    .or_default()
                    .push(tenant);
            }
        }
        for (server, tenants) in by_server {
            let result = self.guard_server(&provisioner, &tenants).await;
            self.note(&format!("server {server}"), result.as_ref().err());
        }
        Ok(())
    }

    /// Logs a failure of `what` when it starts and when it ends.
    fn note(&mut self, what: &str, error: Option<&impl std::fmt::Display>) {
        match error {
            Some(error) if self.failing.insert(what.to_owned()) => {
                tracing::warn!(what, error = %error, "silo guard cannot check this; retrying every round");
            }
            Some(_) => {}
            None if self.failing.remove(what) => {
                tracing::info!(what, "silo guard checks this again");
            }
            None => {}
        }
    }

    async fn guard_server(
        &mut self,
        provisioner: &AnyProvisioner,
        tenants: &[&TenantRecord],
    ) -> Result<(), GuardError> {
        let Some(placement) = tenants.first().and_then(|t| t.placement.as_ref()) else {
            return Ok(());
        };
        let admin = provisioner.admin_access(placement).await?;
        let client = bootstrap::admin_session(&admin).await?;
        let roles: Vec<&str> = tenants.iter().map(|t| t.role_name.as_str()).collect();
        let rows = client
            .query(
                "SELECT a.rolname, a.rolpassword,
                        a.rolcanlogin AND a.rolinherit AND NOT (a.rolsuper OR a.rolcreatedb
                          OR a.rolcreaterole OR a.rolreplication OR a.rolbypassrls)
                          AND a.rolconnlimit = -1
                          AND coalesce(a.rolvaliduntil = 'infinity', true),
                        EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setrole = a.oid)
                 FROM pg_authid a WHERE a.rolname = ANY($1)",
                &[&roles],
            )
            .await
            .map_err(|e| bootstrap::classify("reading the tenant roles", &e))?;
        let mut states: HashMap<String, RoleState> = rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    RoleState {
                        verifier: row.get(1),
                        attributes_as_made: row.get(2),
                        has_settings: row.get(3),
                    },
                )
            })
            .collect();

        for tenant in tenants {
            let spec = TenantSpec::of(tenant);
            if tenant.isolation_version < isolation::VERSION {
                let result = isolation::harden(&admin, &spec).await;
                self.metrics.guard_repair("isolation", result.is_ok());
                if result.is_ok() {
                    self.catalog
                        .set_isolation_version(&tenant.id, isolation::VERSION)
                        .await?;
                    tracing::info!(
                        audit = true, tenant_id = %tenant.id, action = "isolate_silo",
                        from = tenant.isolation_version, to = isolation::VERSION,
                        "silo given the current isolation"
                    );
                }
                self.note(
                    &format!("isolation of {}", tenant.id),
                    result.err().as_ref(),
                );
            }
            // A role that is gone is not ours to make again here (a deletion may be under way).
            let Some(state) = states.remove(&tenant.role_name) else {
                continue;
            };
            let Some(password) = self.password(tenant) else {
                continue;
            };
            let drift = self.drift(tenant, &state, &password).await;
            if drift.is_empty() {
                self.suspects.remove(&tenant.id);
                continue;
            }
            if self.suspects.get(&tenant.id) != Some(&tenant.credentials_version) {
                self.suspects
                    .insert(tenant.id.clone(), tenant.credentials_version);
                continue;
            }
            self.suspects.remove(&tenant.id);
            let result = bootstrap::reassert_role(&client, &spec, &password).await;
            for what in &drift {
                self.metrics.guard_repair(what, result.is_ok());
            }
            match &result {
                Ok(()) => tracing::warn!(
                    audit = true, tenant_id = %tenant.id, action = "repair_tenant_role",
                    changed = %drift.join(","), result = "ok",
                    "tenant role put back as the catalog says"
                ),
                Err(error) => tracing::warn!(
                    audit = true, tenant_id = %tenant.id, action = "repair_tenant_role",
                    changed = %drift.join(","), result = %error,
                    "tenant role could not be put back"
                ),
            }
        }
        Ok(())
    }

    fn password(&self, tenant: &TenantRecord) -> Option<SecretString> {
        let sealed = tenant.credentials.as_ref()?;
        match self.cipher.decrypt(tenant.id.as_str(), sealed) {
            Ok(password) => Some(password),
            Err(error) => {
                tracing::warn!(tenant_id = %tenant.id, error = %error, "silo guard cannot read the credentials");
                None
            }
        }
    }

    /// What differs between the role on the server and the catalog.
    async fn drift(
        &mut self,
        tenant: &TenantRecord,
        state: &RoleState,
        password: &SecretString,
    ) -> Vec<&'static str> {
        let mut drift = Vec::new();
        let key = (tenant.id.clone(), tenant.credentials_version);
        let password_ok = match &state.verifier {
            None => false,
            Some(verifier) if self.verified.get(&key) == Some(verifier) => true,
            Some(verifier) => {
                // Thousands of HMAC rounds: off the async threads.
                let (stored, candidate) = (verifier.clone(), password.clone());
                let ok = tokio::task::spawn_blocking(move || {
                    scram::verifier_matches(&stored, &candidate)
                })
                .await
                .unwrap_or(false);
                if ok {
                    self.verified.insert(key, verifier.clone());
                }
                ok
            }
        };
        if !password_ok {
            drift.push("password");
        }
        if !state.attributes_as_made {
            drift.push("attributes");
        }
        if state.has_settings {
            drift.push("settings");
        }
        drift
    }
}

/// Starts the guard when the `postgres` provisioner is configured and the interval is set.
pub fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    guard: SiloGuard,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if interval.is_zero() || guard.provisioners.get("postgres").is_none() {
        return;
    }
    tasks.spawn(guard.run(interval, shutdown));
}

/// Why one guard round, or one server or silo within it, failed; logged when the failure
/// starts and when it ends, and retried next round.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The catalog could not be read or updated.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// A fleet server could not be reached or a repair statement failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}
