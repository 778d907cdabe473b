//! Tenant moves: an ACTIVE tenant's silo goes to another server of its `postgres` fleet.
//!
//! A move is an operation whose steps are [`MoveStep`]s; the step that is open says where
//! the move is, so a worker that dies anywhere leaves a move another worker finishes. Every
//! step adopts what an earlier attempt did:
//!
//! - PREPARING: the tenant's role (same password) and an empty database on the target
//!   server. The tenant stays ACTIVE and served from the source.
//! - HOLDING: the tenant goes MOVING; routers hold its new calls. Once the role's last
//!   statement on the source has ended (or after a grace of a second), the source database
//!   is closed to the role and its sessions ended: nothing writes to it any more.
//! - COPYING: the target database is made afresh and filled by `pg_dump | pg_restore`.
//! - VERIFYING: every table's row count compared on both sides.
//! - SWITCHING: the tenant is ACTIVE on the target (one catalog transaction with the next
//!   step's start): routers release the held calls to it.
//! - RETIRING: the source database is kept, renamed (`<database>_deleted_<unix time>`),
//!   and the role dropped on the source server.
//!
//! A failure before the switch gives the move up: the source is opened to the role again,
//! the tenant is ACTIVE there as before, and the target silo is dropped.

use std::time::Duration;

use crate::{
    catalog::{
        EventKind, MoveParams, MoveStep, OperationRecord, StepStatus, TenantRecord, Transition,
    },
    onboarding::{Onboarding, Outcome, StepError},
    provisioner::{
        AnyProvisioner, PostgresProvisioner, ProvisionError, Provisioner, TenantSpec, bootstrap,
        relocate::{self, CopyEnd, PgTools},
    },
    tenant::TenantState,
};

/// How long HOLDING waits for the tenant's statements on the source to end before it ends
/// their sessions.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);

impl Onboarding {
    /// Runs a move from its open step to its end (or to a wait).
    pub(crate) async fn move_tenant(
        &self,
        operation: &OperationRecord,
        attempts: i32,
    ) -> Result<Outcome, StepError> {
        loop {
            let operation = self.catalog.get_operation(operation.id).await?;
            let Some(step) = operation
                .current_step()
                .and_then(|step| MoveStep::parse(&step.name))
            else {
                return Ok(Outcome::Done);
            };
            let params = match operation.move_params() {
                Ok(params) => params,
                Err(error) => return Ok(Outcome::Failed(error.to_string())),
            };
            let tenant = self.catalog.get_tenant(operation.tenant()?).await?;
            let fleet = match self.provisioners.get(&tenant.provisioner) {
                Some(AnyProvisioner::Postgres(fleet)) => fleet,
                _ => {
                    let error = ProvisionError::Permanent(format!(
                        "only tenants of a postgres fleet can move (provisioner {})",
                        tenant.provisioner
                    ));
                    return self
                        .move_failed(step, &tenant, &operation, &params, None, attempts, error)
                        .await;
                }
            };
            match self
                .move_step(step, &tenant, &operation, &params, fleet)
                .await
            {
                Ok(()) => {}
                Err(MoveFailure::Provision(error)) => {
                    return self
                        .move_failed(
                            step,
                            &tenant,
                            &operation,
                            &params,
                            Some(fleet),
                            attempts,
                            error,
                        )
                        .await;
                }
                Err(MoveFailure::Step(error)) => return Err(error),
            }
        }
    }

    /// Does `step` and opens the next one.
    async fn move_step(
        &self,
        step: MoveStep,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
        fleet: &PostgresProvisioner,
    ) -> Result<(), MoveFailure> {
        let spec = TenantSpec::of(tenant);
        let source = fleet.placement_on(&params.source_server)?;
        let target = fleet.placement_on(&params.target_server)?;
        let expected = match step {
            MoveStep::Preparing => TenantState::Active,
            MoveStep::Holding => tenant.state, // ACTIVE, or MOVING when resumed
            MoveStep::Copying | MoveStep::Verifying | MoveStep::Switching => TenantState::Moving,
            MoveStep::Retiring => TenantState::Active,
        };
        if tenant.state != expected
            || (step == MoveStep::Holding
                && !matches!(tenant.state, TenantState::Active | TenantState::Moving))
        {
            return Err(
                ProvisionError::Permanent(format!("the tenant is {}", tenant.state)).into(),
            );
        }
        let mut detail = String::new();
        match step {
            MoveStep::Preparing => {
                PgTools::find(self.pg_bin_dir.as_deref())?.check().await?;
                let password = self.password(tenant)?;
                let admin = fleet.admin_access(&target).await?;
                bootstrap::ensure_silo(&admin, &spec, &password).await?;
            }
            MoveStep::Holding => {
                if tenant.state == TenantState::Active {
                    let mut t = Transition::new(
                        &tenant.id,
                        TenantState::Active,
                        TenantState::Moving,
                        EventKind::StateChanged,
                    );
                    t.operation = Some(operation.id);
                    self.apply(t).await.map_err(MoveFailure::Step)?;
                }
                let admin = fleet.admin_access(&source).await?;
                relocate::close_source(&admin, &spec, IN_FLIGHT_GRACE).await?;
            }
            MoveStep::Copying => {
                let password = self.password(tenant)?;
                let target_admin = fleet.admin_access(&target).await?;
                // Afresh: an earlier attempt may have restored part of it.
                bootstrap::teardown(&target_admin, &spec, false).await?;
                bootstrap::ensure_silo(&target_admin, &spec, &password).await?;
                let source_admin = fleet.admin_access(&source).await?;
                let tools = PgTools::find(self.pg_bin_dir.as_deref())?;
                let tls_of = |server: &str| fleet.server_tls(server).cloned().unwrap_or_default();
                let (source_tls, target_tls) =
                    (tls_of(&params.source_server), tls_of(&params.target_server));
                relocate::copy_database(
                    &tools,
                    &spec,
                    CopyEnd {
                        admin: &source_admin,
                        tls: &source_tls,
                    },
                    CopyEnd {
                        admin: &target_admin,
                        tls: &target_tls,
                    },
                )
                .await?;
            }
            MoveStep::Verifying => {
                let on_source =
                    relocate::table_counts(&fleet.admin_access(&source).await?, &spec).await?;
                let on_target =
                    relocate::table_counts(&fleet.admin_access(&target).await?, &spec).await?;
                if on_source != on_target {
                    let differ: Vec<&String> = on_source
                        .keys()
                        .chain(on_target.keys())
                        .filter(|table| on_source.get(*table) != on_target.get(*table))
                        .collect();
                    return Err(ProvisionError::Permanent(format!(
                        "row counts differ after the copy: {differ:?}"
                    ))
                    .into());
                }
                let rows: i64 = on_source.values().sum();
                detail = format!("{} tables, {rows} rows", on_source.len());
            }
            MoveStep::Switching => {
                let mut t = Transition::new(
                    &tenant.id,
                    TenantState::Moving,
                    TenantState::Active,
                    EventKind::StateChanged,
                );
                t.placement = Some(target);
                t.operation = Some(operation.id);
                t.finish_step = Some((StepStatus::Done, format!("on {}", params.target_server)));
                t.start_step = Some(MoveStep::Retiring.as_str().into());
                self.apply(t).await.map_err(MoveFailure::Step)?;
                return Ok(());
            }
            MoveStep::Retiring => {
                let admin = fleet.admin_access(&source).await?;
                bootstrap::teardown(&admin, &spec, true).await?;
            }
        }
        let state = match step {
            MoveStep::Preparing | MoveStep::Retiring => TenantState::Active,
            _ => TenantState::Moving,
        };
        let mut t = Transition::quiet(&tenant.id, state);
        t.operation = Some(operation.id);
        t.finish_step = Some((StepStatus::Done, detail));
        t.start_step = step.next().map(|next| next.as_str().to_owned());
        self.apply(t).await.map_err(MoveFailure::Step)?;
        Ok(())
    }

    /// A failed step: retried while transient and attempts remain; else, before the
    /// switch, the move is given up (source opened again, tenant ACTIVE there, target
    /// dropped), and after it the operation fails with the tenant served from the target.
    #[allow(clippy::too_many_arguments)]
    async fn move_failed(
        &self,
        step: MoveStep,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
        fleet: Option<&PostgresProvisioner>,
        attempts: i32,
        error: ProvisionError,
    ) -> Result<Outcome, StepError> {
        let reason = format!("{}: {error}", step.as_str());
        if error.is_transient() && attempts + 1 < self.max_attempts as i32 {
            return Ok(Outcome::Retry(crate::onboarding::backoff(attempts), reason));
        }
        let mut reason = reason;
        let before_switch = !matches!(step, MoveStep::Retiring);
        if before_switch && let Some(fleet) = fleet {
            let spec = TenantSpec::of(tenant);
            if let Err(undo) = self.give_up(fleet, &spec, params).await {
                // The tenant stays MOVING (held) rather than served from a source that may
                // be closed: the next attempt tries again.
                return Ok(Outcome::Retry(
                    crate::onboarding::backoff(attempts),
                    format!("{reason}; giving the move up failed: {undo}"),
                ));
            }
        }
        let mut t = if before_switch && tenant.state == TenantState::Moving {
            Transition::new(
                &tenant.id,
                TenantState::Moving,
                TenantState::Active,
                EventKind::StateChanged,
            )
        } else {
            Transition::quiet(&tenant.id, tenant.state)
        };
        if before_switch {
            reason.push_str(" (the move was given up; the tenant stays where it was)");
        }
        t.operation = Some(operation.id);
        t.finish_step = Some((StepStatus::Failed, reason.clone()));
        self.apply(t).await?;
        Ok(Outcome::Failed(reason))
    }

    /// Undoes a move that has not switched: the source is opened to the role again and
    /// the target silo dropped.
    async fn give_up(
        &self,
        fleet: &PostgresProvisioner,
        spec: &TenantSpec,
        params: &MoveParams,
    ) -> Result<(), ProvisionError> {
        let source = fleet
            .admin_access(&fleet.placement_on(&params.source_server)?)
            .await?;
        relocate::reopen_source(&source, spec).await?;
        let target = fleet
            .admin_access(&fleet.placement_on(&params.target_server)?)
            .await?;
        bootstrap::teardown(&target, spec, false).await
    }

    fn password(&self, tenant: &TenantRecord) -> Result<secrecy::SecretString, ProvisionError> {
        let sealed = tenant.credentials.as_ref().ok_or_else(|| {
            ProvisionError::Permanent("the tenant has no stored credentials".into())
        })?;
        self.cipher
            .decrypt(tenant.id.as_str(), sealed)
            .map_err(|e| ProvisionError::Permanent(e.to_string()))
    }
}

enum MoveFailure {
    Provision(ProvisionError),
    Step(StepError),
}

impl From<ProvisionError> for MoveFailure {
    fn from(error: ProvisionError) -> Self {
        Self::Provision(error)
    }
}
