//! Tenant moves: an ACTIVE tenant's silo goes to another server, of its own `postgres`
//! fleet or (a promotion or demotion between tiers) of another provisioner: a fleet server
//! to an RDS instance of its own and back.
//!
//! A move is an operation whose steps are [`MoveStep`]s; the step that is open says where
//! the move is, so a worker that dies anywhere leaves a move another worker finishes. Every
//! step adopts what an earlier attempt did:
//!
//! - PREPARING: the target server made by the target's provisioner (an RDS instance is
//!   created and waited for; its placement is kept in the move's parameters as it is
//!   learnt), then the tenant's role (same password) and an empty database on it. The
//!   tenant stays ACTIVE and served from the source.
//! - HOLDING: the tenant goes MOVING; routers hold its new calls. Once the role's last
//!   statement on the source has ended (or after a grace of a second), the source database
//!   is closed to the role and its sessions ended: nothing writes to it any more.
//! - COPYING: the target database is made afresh and filled by `pg_dump | pg_restore`.
//! - VERIFYING: every table's row count compared on both sides.
//! - SWITCHING: the tenant is ACTIVE on the target (with the target's tier and provisioner
//!   for a promotion or demotion), in one catalog transaction with the next step's start:
//!   routers release the held calls to it.
//! - RETIRING: a fleet source database is kept, renamed (`<database>_moved_<unix time>`),
//!   and the role dropped on the source server; the retention pass drops the database
//!   after `--move-retain-hours`. An RDS source instance is deleted with a final snapshot.
//!
//! A failure before the switch gives the move up: the reason is recorded first, then the
//! source is opened to the role again, the tenant is ACTIVE there as before, and the
//! target silo (or the instance made for it) is dropped.

use std::time::Duration;

use crate::{
    catalog::{
        EventKind, MoveMethod, MoveParams, MoveStep, OperationRecord, Placement, StepStatus,
        TenantRecord, Transition,
    },
    onboarding::{Onboarding, Outcome, StepError},
    provisioner::{
        AdminAccess, AnyProvisioner, Availability, PostgresProvisioner, ProvisionError,
        Provisioner, TenantSpec, bootstrap,
        relocate::{self, PgTools},
    },
    tenant::TenantState,
};

/// How long HOLDING waits for the tenant's statements on the source to end before it ends
/// their sessions.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);

/// The moves whose subscription a task of this process is creating.
fn subscribing() -> std::sync::MutexGuard<'static, std::collections::HashSet<uuid::Uuid>> {
    static NOW: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>> =
        std::sync::LazyLock::new(Default::default);
    NOW.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SUBSCRIBING goes on to HOLDING only once the target is at most this far (bytes of WAL)
/// behind the source, so the calls held while the rest arrives are held briefly.
const MAX_LAG_TO_HOLD: i64 = 16 * 1024 * 1024;

/// The least time CATCHING_UP waits for the target to confirm the source's last changes,
/// even when resumed after its limit.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// The two ends of a move as their provisioners see them.
struct Ends<'a> {
    source: &'a AnyProvisioner,
    source_placement: Placement,
    target: &'a AnyProvisioner,
    target_placement: Placement,
    /// The tenant with the tier it has after the switch; an RDS target's instance is
    /// tagged with the move's request id.
    target_spec: TenantSpec,
}

impl Ends<'_> {
    async fn source_admin(&self) -> Result<AdminAccess, ProvisionError> {
        self.source.admin_access(&self.source_placement).await
    }

    async fn target_admin(&self) -> Result<AdminAccess, ProvisionError> {
        self.target.admin_access(&self.target_placement).await
    }
}

/// A fleet server's placement, for moves recorded before the placements were kept.
fn on_fleet(provisioner: &AnyProvisioner, server: &str) -> Result<Placement, ProvisionError> {
    match provisioner {
        AnyProvisioner::Postgres(fleet) => fleet.placement_on(server),
        AnyProvisioner::Rds(_) => Err(ProvisionError::Permanent(format!(
            "the move recorded no placement for {server}"
        ))),
    }
}

impl Onboarding {
    /// The provisioners and placements of a move's two ends.
    fn ends<'a>(
        &'a self,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
    ) -> Result<Ends<'a>, ProvisionError> {
        let provisioner = |name: &str| {
            self.provisioners.get(name).ok_or_else(|| {
                ProvisionError::Permanent(format!("provisioner {name} is not configured"))
            })
        };
        let source_name = params
            .source_provisioner
            .as_deref()
            .unwrap_or(&tenant.provisioner);
        let source = provisioner(source_name)?;
        let target = provisioner(params.target_provisioner.as_deref().unwrap_or(source_name))?;
        let source_placement = match &params.source {
            Some(placement) => placement.clone(),
            None => on_fleet(source, &params.source_server)?,
        };
        let target_placement = match &params.target {
            Some(placement) => placement.clone(),
            None => on_fleet(target, &params.target_server)?,
        };
        let mut target_spec = TenantSpec::of(tenant);
        if let Some(tier) = &params.target_tier {
            target_spec.tier.clone_from(tier);
        }
        target_spec.request_id.clone_from(&operation.request_id);
        Ok(Ends {
            source,
            source_placement,
            target,
            target_placement,
            target_spec,
        })
    }

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
            let mut params = match operation.move_params() {
                Ok(params) => params,
                Err(error) => return Ok(Outcome::Failed(error.to_string())),
            };
            // Requests are kept apart from the operation's row (see request_cancel); the
            // parameters' own flag is from moves recorded before.
            params.cancel_requested |= self.catalog.cancel_requested(operation.id).await?;
            let tenant = self.catalog.get_tenant(operation.tenant()?).await?;
            let ends = self.ends(&tenant, &operation, &params);
            if let Some(reason) = &params.abandoned {
                return self
                    .abandon(&tenant, &operation, &params, ends.ok(), attempts, reason)
                    .await;
            }
            // Honoured at a step boundary, unless the move has switched (RETIRING).
            if params.cancel_requested && step != MoveStep::Retiring {
                let cancelled = ProvisionError::Permanent("cancelled by request".into());
                return self
                    .move_failed(step, &tenant, &operation, &params, attempts, cancelled)
                    .await;
            }
            let ends = match ends {
                Ok(ends) => ends,
                Err(error) => {
                    return self
                        .move_failed(step, &tenant, &operation, &params, attempts, error)
                        .await;
                }
            };
            match self
                .move_step(step, &tenant, &operation, &params, &ends)
                .await
            {
                Ok(None) => {}
                Ok(Some(wait)) => return Ok(wait),
                Err(MoveFailure::Provision(error)) => {
                    return self
                        .move_failed(step, &tenant, &operation, &params, attempts, error)
                        .await;
                }
                Err(MoveFailure::Step(error)) => return Err(error),
            }
        }
    }

    /// Records the target's placement as PREPARING learns it: `Some` (store and come back)
    /// when it differs from the one recorded.
    fn keep_target(
        params: &MoveParams,
        placement: &Placement,
    ) -> Result<Option<Outcome>, ProvisionError> {
        if params.target.as_ref() == Some(placement) {
            return Ok(None);
        }
        let mut params = params.clone();
        params.target = Some(placement.clone());
        params.target_server.clone_from(&placement.server);
        let value = serde_json::to_value(&params)
            .map_err(|e| ProvisionError::Permanent(format!("move parameters: {e}")))?;
        Ok(Some(Outcome::SetParams(
            value,
            format!("target {} placed", placement.server),
        )))
    }

    /// Does `step` and opens the next one; `Some` when the move must wait and come back.
    async fn move_step(
        &self,
        step: MoveStep,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
        ends: &Ends<'_>,
    ) -> Result<Option<Outcome>, MoveFailure> {
        let spec = TenantSpec::of(tenant);
        let expected: &[TenantState] = match step {
            MoveStep::Preparing | MoveStep::Subscribing | MoveStep::Retiring => {
                &[TenantState::Active]
            }
            // ACTIVE, or MOVING when resumed after the state changed.
            MoveStep::Holding => &[TenantState::Active, TenantState::Moving],
            MoveStep::Copying
            | MoveStep::CatchingUp
            | MoveStep::Verifying
            | MoveStep::Switching => &[TenantState::Moving],
        };
        if !expected.contains(&tenant.state) {
            return Err(
                ProvisionError::Permanent(format!("the tenant is {}", tenant.state)).into(),
            );
        }
        let mut detail = String::new();
        match step {
            MoveStep::Preparing => {
                PgTools::find(self.pg_bin_dir.as_deref())?.check().await?;
                // A provisioner that makes servers (RDS) makes the target's now; a fleet
                // server only has to be there.
                let made = ends
                    .target
                    .ensure_server(&ends.target_spec, &ends.target_placement)
                    .await?;
                if let Some(keep) = Self::keep_target(params, &made)? {
                    return Ok(Some(keep));
                }
                let (availability, placement) = ends.target.poll_available(&made).await?;
                if let Some(keep) = Self::keep_target(params, &placement)? {
                    return Ok(Some(keep));
                }
                if let Availability::Waiting {
                    status,
                    retry_after,
                } = availability
                {
                    return Ok(Some(Outcome::Wait(
                        retry_after,
                        format!("target {}: {status}", placement.server),
                    )));
                }
                // Never make the target's silo over the source's (an endpoint that turns out to
                // be the source server).
                if (placement.host.as_str(), placement.port)
                    == (
                        ends.source_placement.host.as_str(),
                        ends.source_placement.port,
                    )
                {
                    return Err(ProvisionError::Permanent(format!(
                        "the target {} is the source server ({}:{})",
                        placement.server, placement.host, placement.port
                    ))
                    .into());
                }
                let password = self.password(tenant)?;
                let admin = ends.target.admin_access(&placement).await?;
                bootstrap::ensure_silo(&admin, &spec, &password).await?;
                detail = format!("target {} ready", placement.server);
            }
            MoveStep::Subscribing => {
                let source_admin = ends.source_admin().await?;
                let target_admin = ends.target_admin().await?;
                if !relocate::subscription_exists(&target_admin, &spec).await? {
                    let unreplicable =
                        relocate::tables_without_replica_identity(&source_admin, &spec).await?;
                    if !unreplicable.is_empty() {
                        return Err(ProvisionError::Permanent(format!(
                            "tables without a primary key or replica identity cannot be \
                             replicated (UPDATE and DELETE on them would fail during the move): \
                             {}; move with copy",
                            unreplicable.join(", ")
                        ))
                        .into());
                    }
                    if subscribing().contains(&operation.id) {
                        return Ok(Some(Outcome::Wait(
                            Duration::from_millis(200),
                            "creating the subscription (its replication slot waits for the \
                             source server's running transactions)"
                                .into(),
                        )));
                    }
                    relocate::unsubscribe(&source_admin, Some(&target_admin), &spec).await?;
                    self.copy_afresh(tenant, &spec, &source_admin, &target_admin, true)
                        .await?;
                    // Creating the replication slot waits until every transaction running
                    // on the source server has ended, this worker's own claim on the
                    // operation included when the catalog shares that server: the
                    // subscription is made by a task of its own while the operation waits.
                    subscribing().insert(operation.id);
                    let id = operation.id;
                    let spec = spec.clone();
                    tokio::spawn(async move {
                        let made = relocate::subscribe(&source_admin, &target_admin, &spec).await;
                        if let Err(error) = made {
                            tracing::warn!(operation_id = %id, error = %error, "creating the move's subscription failed");
                        }
                        subscribing().remove(&id);
                    });
                    return Ok(Some(Outcome::Wait(
                        Duration::from_millis(200),
                        "creating the subscription".into(),
                    )));
                }
                let subscribing_for = operation
                    .current_step()
                    .and_then(|step| step.started_at.elapsed().ok())
                    .unwrap_or_default();
                if subscribing_for > self.move_subscribe_limit {
                    return Err(ProvisionError::Permanent(format!(
                        "the target did not catch up within {} s (--move-subscribe-limit-secs)",
                        self.move_subscribe_limit.as_secs()
                    ))
                    .into());
                }
                let (ready, tables) = relocate::initial_copy_progress(&target_admin, &spec).await?;
                if ready < tables {
                    return Ok(Some(Outcome::Wait(
                        Duration::from_millis(100),
                        format!("initial copy: {ready} of {tables} tables"),
                    )));
                }
                // Calls are held only while the last changes arrive: wait until few are left.
                let lag = relocate::replication_lag(&source_admin, &spec)
                    .await?
                    .unwrap_or(0);
                if lag > MAX_LAG_TO_HOLD {
                    return Ok(Some(Outcome::Wait(
                        Duration::from_millis(100),
                        format!("replication lag {lag} bytes"),
                    )));
                }
                detail = format!("{tables} tables copied, lag {lag} bytes");
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
                relocate::close_source(&ends.source_admin().await?, &spec, IN_FLIGHT_GRACE).await?;
            }
            MoveStep::Copying => {
                let source_admin = ends.source_admin().await?;
                let target_admin = ends.target_admin().await?;
                self.copy_afresh(tenant, &spec, &source_admin, &target_admin, false)
                    .await?;
                let bytes = relocate::database_bytes(&target_admin, &spec).await?;
                detail = format!("{bytes} bytes");
            }
            MoveStep::CatchingUp => {
                let source_admin = ends.source_admin().await?;
                let target_admin = ends.target_admin().await?;
                let started = std::time::Instant::now();
                // The tenant's calls are held (and fail after the routers' hold) while this
                // step runs: a target that does not catch up gives the move up.
                // One pass waits for the rest of the limit: the source's WAL position it
                // waits for is read once (the catalog may share that server and go on
                // writing, so a new pass would chase a moving target).
                let running_for = operation
                    .current_step()
                    .and_then(|step| step.started_at.elapsed().ok())
                    .unwrap_or_default();
                let left = self
                    .move_catch_up_limit
                    .saturating_sub(running_for)
                    .max(CATCH_UP_WAIT);
                if !relocate::catch_up(&source_admin, &target_admin, &spec, left).await? {
                    return Err(ProvisionError::Permanent(format!(
                        "the target did not confirm the source's last changes within {} s",
                        self.move_catch_up_limit.as_secs()
                    ))
                    .into());
                }
                detail = format!("caught up in {} ms", started.elapsed().as_millis());
            }
            MoveStep::Verifying => {
                // Both sides at once: the tenant's calls are held while this runs.
                let (source_admin, target_admin) =
                    (ends.source_admin().await?, ends.target_admin().await?);
                let (on_source, on_target) = tokio::join!(
                    relocate::table_counts(&source_admin, &spec),
                    relocate::table_counts(&target_admin, &spec)
                );
                let (on_source, on_target) = (on_source?, on_target?);
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
                t.placement = Some(ends.target_placement.clone());
                if let Some(tier) = params.target_tier.as_ref().filter(|t| **t != tenant.tier) {
                    t.tier = Some(tier.clone());
                    t.provisioner.clone_from(&params.target_provisioner);
                }
                t.operation = Some(operation.id);
                t.finish_step = Some((
                    StepStatus::Done,
                    format!("on {}", ends.target_placement.server),
                ));
                t.start_step = Some(MoveStep::Retiring.as_str().into());
                self.apply(t).await.map_err(MoveFailure::Step)?;
                return Ok(None);
            }
            MoveStep::Retiring => {
                let unsubscribe = async {
                    if params.method == MoveMethod::Replicate {
                        let target_admin = ends.target_admin().await?;
                        relocate::unsubscribe(
                            &ends.source_admin().await?,
                            Some(&target_admin),
                            &spec,
                        )
                        .await?;
                    }
                    Ok::<(), ProvisionError>(())
                };
                match ends.source {
                    AnyProvisioner::Postgres(_) => {
                        unsubscribe.await?;
                        bootstrap::teardown_keeping(
                            &ends.source_admin().await?,
                            &spec,
                            Some(bootstrap::MOVED),
                        )
                        .await?;
                    }
                    // The instance goes; its final snapshot is what is kept. Once its
                    // deletion has begun it cannot be logged in to (its slot goes with it).
                    AnyProvisioner::Rds(rds) => {
                        let instance = rds
                            .describe(&ends.source_placement.server)
                            .await
                            .map_err(ProvisionError::from)?;
                        let status = instance.as_ref().and_then(|i| i.db_instance_status());
                        if status == Some("available") {
                            unsubscribe.await?;
                        }
                        if let Availability::Waiting {
                            status,
                            retry_after,
                        } = ends
                            .source
                            .retire(&spec, &ends.source_placement, true)
                            .await?
                        {
                            return Ok(Some(Outcome::Wait(
                                retry_after,
                                format!("source {}: {status}", ends.source_placement.server),
                            )));
                        }
                        detail = format!(
                            "instance {} deleted with a final snapshot",
                            ends.source_placement.server
                        );
                    }
                }
            }
        }
        let state = match step {
            MoveStep::Preparing | MoveStep::Subscribing | MoveStep::Retiring => TenantState::Active,
            _ => TenantState::Moving,
        };
        let mut t = Transition::quiet(&tenant.id, state);
        t.operation = Some(operation.id);
        t.finish_step = Some((StepStatus::Done, detail));
        t.start_step = step
            .next(params.method)
            .map(|next| next.as_str().to_owned());
        self.apply(t).await.map_err(MoveFailure::Step)?;
        Ok(None)
    }

    /// A failed step: retried while transient and attempts remain; else, before the
    /// switch, the move is given up (see [`Self::abandon`]), and after it the operation
    /// fails with the tenant served from the target.
    async fn move_failed(
        &self,
        step: MoveStep,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
        attempts: i32,
        error: ProvisionError,
    ) -> Result<Outcome, StepError> {
        let reason = format!("{}: {error}", step.as_str());
        if error.is_transient() && attempts + 1 < self.max_attempts as i32 {
            return Ok(Outcome::Retry(crate::onboarding::backoff(attempts), reason));
        }
        if step != MoveStep::Retiring {
            // Recorded before anything is undone (the next pass undoes it): a worker that
            // resumes the move goes on giving it up.
            let mut abandoned = params.clone();
            abandoned.abandoned = Some(reason.clone());
            return match serde_json::to_value(&abandoned) {
                Ok(value) => Ok(Outcome::SetParams(value, format!("giving up: {reason}"))),
                Err(e) => Ok(Outcome::Failed(format!("{reason}; move parameters: {e}"))),
            };
        }
        let mut t = Transition::quiet(&tenant.id, tenant.state);
        t.operation = Some(operation.id);
        t.finish_step = Some((StepStatus::Failed, reason.clone()));
        self.apply(t).await?;
        Ok(Outcome::Failed(reason))
    }

    /// Gives up a move that has not switched: the source is opened to the role again, the
    /// tenant is ACTIVE there, the target silo (an RDS target's instance) is removed, and
    /// the operation fails with `reason`.
    async fn abandon(
        &self,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
        ends: Option<Ends<'_>>,
        attempts: i32,
        reason: &str,
    ) -> Result<Outcome, StepError> {
        if let Some(ends) = &ends {
            let spec = TenantSpec::of(tenant);
            match self.give_up(ends, &spec, params).await {
                Ok(Availability::Ready) => {}
                Ok(Availability::Waiting {
                    status,
                    retry_after,
                }) => {
                    return Ok(Outcome::Wait(
                        retry_after,
                        format!("giving the move up: {status}"),
                    ));
                }
                Err(undo) => {
                    // The tenant stays MOVING (held) rather than served from a source that
                    // may be closed: the next attempt tries again.
                    return Ok(Outcome::Retry(
                        crate::onboarding::backoff(attempts),
                        format!("{reason}; giving the move up failed: {undo}"),
                    ));
                }
            }
        }
        let mut t = if tenant.state == TenantState::Moving {
            Transition::new(
                &tenant.id,
                TenantState::Moving,
                TenantState::Active,
                EventKind::StateChanged,
            )
        } else {
            Transition::quiet(&tenant.id, tenant.state)
        };
        let reason = format!("{reason} (the move was given up; the tenant stays where it was)");
        t.operation = Some(operation.id);
        t.finish_step = Some((StepStatus::Failed, reason.clone()));
        self.apply(t).await?;
        Ok(Outcome::Failed(reason))
    }

    /// Undoes a move that has not switched: replication removed, the source opened to the
    /// role again, the target silo dropped (or its RDS instance deleted; `Waiting` until
    /// RDS has taken the deletion).
    async fn give_up(
        &self,
        ends: &Ends<'_>,
        spec: &TenantSpec,
        params: &MoveParams,
    ) -> Result<Availability, ProvisionError> {
        let source = ends.source_admin().await?;
        // An RDS target that never came up has no endpoint (and nothing on it).
        let target = match ends.target_admin().await {
            Ok(target) => Some(target),
            Err(_) if matches!(ends.target, AnyProvisioner::Rds(_)) => None,
            Err(error) => return Err(error),
        };
        if params.method == MoveMethod::Replicate {
            relocate::unsubscribe(&source, target.as_ref(), spec).await?;
        }
        relocate::reopen_source(&source, spec).await?;
        match ends.target {
            AnyProvisioner::Postgres(_) => {
                if let Some(target) = &target {
                    bootstrap::teardown(target, spec, false).await?;
                }
                Ok(Availability::Ready)
            }
            AnyProvisioner::Rds(_) => {
                ends.target
                    .retire(&ends.target_spec, &ends.target_placement, false)
                    .await
            }
        }
    }

    /// Makes the target silo afresh (an earlier attempt may have restored part of it) and
    /// copies the source into it: the schema only, or everything.
    async fn copy_afresh(
        &self,
        tenant: &TenantRecord,
        spec: &TenantSpec,
        source: &AdminAccess,
        target: &AdminAccess,
        schema_only: bool,
    ) -> Result<(), ProvisionError> {
        let password = self.password(tenant)?;
        bootstrap::teardown(target, spec, false).await?;
        bootstrap::ensure_silo(target, spec, &password).await?;
        let tools = PgTools::find(self.pg_bin_dir.as_deref())?;
        relocate::copy_database(&tools, spec, source, target, schema_only).await
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

/// Drops the source databases moves kept (`<database>_moved_<unix time>`, owned by the
/// admin) once they are older than `retain`, on every server of every `postgres` fleet.
/// Returns how many it dropped.
///
/// # Errors
/// The first server that cannot be reached or refuses a statement (the others are still
/// done).
pub async fn expire_kept_sources(
    provisioners: &crate::provisioner::Provisioners,
    retain: Duration,
) -> Result<usize, ProvisionError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut dropped = 0;
    let mut first_error = None;
    for name in provisioners.names() {
        let Some(AnyProvisioner::Postgres(fleet)) = provisioners.get(name) else {
            continue;
        };
        for server in fleet.server_names() {
            match expire_on(fleet, server, now, retain).await {
                Ok(count) => dropped += count,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(dropped),
    }
}

async fn expire_on(
    fleet: &PostgresProvisioner,
    server: &str,
    now: u64,
    retain: Duration,
) -> Result<usize, ProvisionError> {
    let admin = fleet.admin_access(&fleet.placement_on(server)?).await?;
    let client = bootstrap::admin_session(&admin).await?;
    let run =
        |context: &'static str| move |e: tokio_postgres::Error| bootstrap::classify(context, &e);
    let kept = client
        .query(
            "SELECT datname FROM pg_database
             WHERE datname ~ ('_' || $1 || '_[0-9]+$') AND datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
            &[&bootstrap::MOVED],
        )
        .await
        .map_err(run("listing the databases moves kept"))?;
    let mut dropped = 0;
    for row in kept {
        let name: String = row.get(0);
        let Some(moved_at) = name
            .rsplit('_')
            .next()
            .and_then(|at| at.parse::<u64>().ok())
        else {
            continue;
        };
        if now.saturating_sub(moved_at) < retain.as_secs() {
            continue;
        }
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                bootstrap::ident(&name)
            ))
            .await
            .map_err(run("dropping a database a move kept"))?;
        tracing::info!(server, database = %name, "dropped the source database of a move");
        dropped += 1;
    }
    Ok(dropped)
}

/// Runs [`expire_kept_sources`] every `every` until `shutdown`.
pub async fn expire_periodically(
    provisioners: crate::provisioner::Provisioners,
    retain: Duration,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(error) = expire_kept_sources(&provisioners, retain).await {
            tracing::warn!(error = %error, "dropping the databases moves kept failed; trying again later");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
