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
//! - RETIRING: the source database is kept, renamed (`<database>_moved_<unix time>`),
//!   and the role dropped on the source server; the retention pass drops the database
//!   after `--move-retain-hours`.
//!
//! A failure before the switch gives the move up: the source is opened to the role again,
//! the tenant is ACTIVE there as before, and the target silo is dropped.

use std::time::Duration;

use crate::{
    catalog::{
        EventKind, MoveMethod, MoveParams, MoveStep, OperationRecord, StepStatus, TenantRecord,
        Transition,
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
            // Honoured at a step boundary, unless the move has switched (RETIRING).
            if params.cancel_requested && step != MoveStep::Retiring {
                let fleet = match self.provisioners.get(&tenant.provisioner) {
                    Some(AnyProvisioner::Postgres(fleet)) => Some(fleet),
                    _ => None,
                };
                let cancelled = ProvisionError::Permanent("cancelled by request".into());
                return self
                    .move_failed(
                        step, &tenant, &operation, &params, fleet, attempts, cancelled,
                    )
                    .await;
            }
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
                Ok(None) => {}
                Ok(Some(wait)) => return Ok(wait),
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

    /// Does `step` and opens the next one; `Some` when the move must wait and come back.
    async fn move_step(
        &self,
        step: MoveStep,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        params: &MoveParams,
        fleet: &PostgresProvisioner,
    ) -> Result<Option<Outcome>, MoveFailure> {
        let spec = TenantSpec::of(tenant);
        let source = fleet.placement_on(&params.source_server)?;
        let target = fleet.placement_on(&params.target_server)?;
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
        let tls_of = |server: &str| fleet.server_tls(server).cloned().unwrap_or_default();
        let (source_tls, target_tls) =
            (tls_of(&params.source_server), tls_of(&params.target_server));
        let mut detail = String::new();
        match step {
            MoveStep::Preparing => {
                PgTools::find(self.pg_bin_dir.as_deref())?.check().await?;
                let password = self.password(tenant)?;
                let admin = fleet.admin_access(&target).await?;
                bootstrap::ensure_silo(&admin, &spec, &password).await?;
            }
            MoveStep::Subscribing => {
                let source_admin = fleet.admin_access(&source).await?;
                let target_admin = fleet.admin_access(&target).await?;
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
                    relocate::unsubscribe(&source_admin, &target_admin, &spec).await?;
                    let source_end = CopyEnd {
                        admin: &source_admin,
                        tls: &source_tls,
                    };
                    let target_end = CopyEnd {
                        admin: &target_admin,
                        tls: &target_tls,
                    };
                    self.copy_afresh(tenant, &spec, source_end, target_end, true)
                        .await?;
                    // Creating the replication slot waits until every transaction running
                    // on the source server has ended, this worker's own claim on the
                    // operation included when the catalog shares that server: the
                    // subscription is made by a task of its own while the operation waits.
                    subscribing().insert(operation.id);
                    let id = operation.id;
                    let spec = spec.clone();
                    tokio::spawn(async move {
                        let made = relocate::subscribe(
                            CopyEnd {
                                admin: &source_admin,
                                tls: &source_tls,
                            },
                            CopyEnd {
                                admin: &target_admin,
                                tls: &target_tls,
                            },
                            &spec,
                        )
                        .await;
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
                let admin = fleet.admin_access(&source).await?;
                relocate::close_source(&admin, &spec, IN_FLIGHT_GRACE).await?;
            }
            MoveStep::Copying => {
                let source_admin = fleet.admin_access(&source).await?;
                let target_admin = fleet.admin_access(&target).await?;
                self.copy_afresh(
                    tenant,
                    &spec,
                    CopyEnd {
                        admin: &source_admin,
                        tls: &source_tls,
                    },
                    CopyEnd {
                        admin: &target_admin,
                        tls: &target_tls,
                    },
                    false,
                )
                .await?;
                let bytes = relocate::database_bytes(&target_admin, &spec).await?;
                detail = format!("{bytes} bytes");
            }
            MoveStep::CatchingUp => {
                let source_admin = fleet.admin_access(&source).await?;
                let target_admin = fleet.admin_access(&target).await?;
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
                return Ok(None);
            }
            MoveStep::Retiring => {
                let source_admin = fleet.admin_access(&source).await?;
                if params.method == MoveMethod::Replicate {
                    let target_admin = fleet.admin_access(&target).await?;
                    relocate::unsubscribe(&source_admin, &target_admin, &spec).await?;
                }
                bootstrap::teardown_keeping(&source_admin, &spec, Some(bootstrap::MOVED)).await?;
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
        let target = fleet
            .admin_access(&fleet.placement_on(&params.target_server)?)
            .await?;
        if params.method == MoveMethod::Replicate {
            relocate::unsubscribe(&source, &target, spec).await?;
        }
        relocate::reopen_source(&source, spec).await?;
        bootstrap::teardown(&target, spec, false).await
    }

    /// Makes the target silo afresh (an earlier attempt may have restored part of it) and
    /// copies the source into it: the schema only, or everything.
    async fn copy_afresh(
        &self,
        tenant: &TenantRecord,
        spec: &TenantSpec,
        source: CopyEnd<'_>,
        target: CopyEnd<'_>,
        schema_only: bool,
    ) -> Result<(), ProvisionError> {
        let password = self.password(tenant)?;
        bootstrap::teardown(target.admin, spec, false).await?;
        bootstrap::ensure_silo(target.admin, spec, &password).await?;
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
