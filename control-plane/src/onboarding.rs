//! The onboarding and deletion state machine and the workers that drive it.
//!
//! Every transition is one catalog transaction (see `catalog::Transition`). A worker claims
//! a due operation (`FOR NO KEY UPDATE SKIP LOCKED`, safe with several replicas), reads the
//! tenant's state and performs the next step, until the operation is done or must wait.
//! Since each step adopts what an earlier attempt made, a worker that dies mid-step leaves
//! nothing another worker cannot finish.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    catalog::{
        Catalog, CatalogError, ClaimedOperation, EventKind, OperationKind, OperationRecord,
        StepStatus, TenantRecord, Transition,
    },
    crypto::{CredentialCipher, generate_password},
    migrations::MigrationSet,
    provisioner::{Availability, ProvisionError, Provisioner, Provisioners, TenantSpec, bootstrap},
    tenant::{TenantId, TenantState},
};

/// What a test hook tells the worker after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Go on as usual.
    Continue,
    /// Stop at once as if the process died: nothing more is written, the claim is dropped.
    Halt,
}

/// A test hook called after every tenant state transition a worker writes, with the tenant
/// and its new state.
pub type TransitionHook = Arc<dyn Fn(&TenantId, TenantState) -> HookAction + Send + Sync>;

/// Fault-injection points for tests; empty in production.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called after each transition a worker writes; `Halt` simulates a crash right there.
    pub after_transition: Option<TransitionHook>,
}

pub(crate) enum Outcome {
    Done,
    Failed(String),
    /// Try again after the delay: something failed; counts as an attempt.
    Retry(Duration, String),
    /// Come back after the delay: waiting for something outside (an instance coming up,
    /// a copy running, another operation stopping); not an attempt, so a long wait does not
    /// use up the attempts a later transient failure gets.
    Wait(Duration, String),
    /// Store these parameters of the operation and come back at once (a move's target
    /// placement as it is learnt, or the reason it is being given up).
    SetParams(serde_json::Value, String),
}

#[derive(Debug)]
pub(crate) struct Halted;

/// The worker that runs onboarding and deletion operations: claims a pending operation,
/// runs its steps through the tenant's provisioner, and records each transition in the
/// catalog (retrying transient failures up to `--max-step-attempts`).
pub struct Onboarding {
    pub(crate) catalog: Catalog,
    pub(crate) provisioners: Provisioners,
    pub(crate) cipher: CredentialCipher,
    pub(crate) migrations: MigrationSet,
    pub(crate) hooks: Hooks,
    pub(crate) max_attempts: u32,
    pub(crate) metrics: crate::metrics::ControlPlaneMetrics,
    /// Where `pg_dump` and `pg_restore` are (`--pg-bin-dir`); `None`: looked for.
    pub(crate) pg_bin_dir: Option<std::path::PathBuf>,
    /// How long CATCHING_UP may take before the move is given up (`--move-catch-up-limit-secs`).
    pub(crate) move_catch_up_limit: Duration,
    /// How long SUBSCRIBING may take before the move is given up
    /// (`--move-subscribe-limit-secs`).
    pub(crate) move_subscribe_limit: Duration,
}

/// Every worker retries while the catalog is down: one warning per interval for all of
/// them, with the count held back.
static CATALOG_UNREACHABLE: silo_telemetry::Throttle =
    silo_telemetry::Throttle::new(Duration::from_secs(30));
static CLAIM_FAILED: silo_telemetry::Throttle =
    silo_telemetry::Throttle::new(Duration::from_secs(30));

pub(crate) fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 8)).unwrap_or(8);
    Duration::from_millis(250 * 2u64.pow(exponent)).min(Duration::from_secs(30))
}

impl Onboarding {
    /// Runs one worker until `shutdown`. A step in progress finishes first.
    pub async fn run_worker(self: Arc<Self>, worker: usize, shutdown: CancellationToken) {
        let mut reconnect = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let client = match self.catalog.dedicated_connection().await {
                Ok(client) => client,
                Err(error) => {
                    if let Some(held_back) = CATALOG_UNREACHABLE.allow() {
                        tracing::warn!(worker, error = %error, held_back, "worker cannot reach the catalog");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(reconnect) => {}
                    }
                    reconnect = (reconnect * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            reconnect = Duration::from_millis(100);
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                let claimed = match self.catalog.claim_operation(&client).await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        if let Some(held_back) = CLAIM_FAILED.allow() {
                            tracing::warn!(worker, error = %error, held_back, "claiming an operation failed");
                        }
                        break;
                    }
                };
                let Some(claimed) = claimed else {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.catalog.changes().wait(Duration::from_millis(500)) => {}
                    }
                    continue;
                };
                match self.run_claimed(claimed, &shutdown).await {
                    Ok(()) => {}
                    Err(RunError::Halted) => return,
                    Err(RunError::Catalog(error)) => {
                        tracing::warn!(worker, error = %error, "operation bookkeeping failed");
                        break;
                    }
                }
            }
        }
    }

    async fn run_claimed(
        &self,
        claimed: ClaimedOperation<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        let operation = claimed.operation.clone();
        let attempts = claimed.attempts;
        // Attached to the future, not entered across its awaits: an entered span stays on
        // the thread while the task is parked, and other tasks' lines would carry it (a
        // warning with two nested operations of different ids).
        let span = tracing::info_span!(
            "operation",
            operation_id = %operation.id,
            kind = operation.kind.as_str(),
            tenant_id = operation.tenant_id.as_ref().map(TenantId::as_str),
        );
        async {
            let outcome = match operation.kind {
                OperationKind::CreateTenant => self.onboard(&operation, attempts, shutdown).await,
                OperationKind::DeleteTenant => self.delete(&operation, attempts).await,
                OperationKind::MigrateTenants => self.migrate_fleet(&operation, shutdown).await,
                OperationKind::MoveTenant => self.move_tenant(&operation, attempts).await,
            };
            let took = || {
                std::time::SystemTime::now()
                    .duration_since(operation.created_at)
                    .unwrap_or_default()
                    .as_secs_f64()
            };
            match &outcome {
                Ok(Outcome::Done) => {
                    self.metrics
                        .operation(operation.kind.as_str(), "succeeded", took())
                }
                Ok(Outcome::Failed(_)) => {
                    self.metrics
                        .operation(operation.kind.as_str(), "failed", took())
                }
                _ => {}
            }
            match outcome {
                Ok(Outcome::Done) => {
                    tracing::info!("operation succeeded");
                    claimed.finish(&self.catalog, None).await?;
                }
                Ok(Outcome::Failed(reason)) => {
                    tracing::warn!(reason = %reason, "operation failed");
                    claimed.finish(&self.catalog, Some(&reason)).await?;
                }
                Ok(Outcome::Retry(delay, note)) => {
                    tracing::debug!(delay_ms = delay.as_millis() as u64, note = %note, "operation retries");
                    claimed.retry_after(delay, &note, true).await?;
                }
                Ok(Outcome::Wait(delay, note)) => {
                    tracing::debug!(delay_ms = delay.as_millis() as u64, note = %note, "operation waits");
                    claimed.retry_after(delay, &note, false).await?;
                }
                Ok(Outcome::SetParams(params, note)) => {
                    tracing::debug!(note = %note, "operation parameters updated");
                    claimed.set_params(&params).await?;
                    claimed.retry_after(Duration::ZERO, &note, false).await?;
                }
                Err(StepError::Halted(Halted)) => return Err(RunError::Halted),
                Err(StepError::Catalog(error)) => {
                    tracing::warn!(error = %error, "catalog error during a step; retrying");
                    claimed
                        .retry_after(backoff(attempts), "catalog unavailable", true)
                        .await?;
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn after(&self, tenant: &TenantId, state: TenantState) -> Result<(), StepError> {
        match &self.hooks.after_transition {
            Some(hook) if hook(tenant, state) == HookAction::Halt => Err(StepError::Halted(Halted)),
            _ => Ok(()),
        }
    }

    /// Moves the tenant on; returns whether it moved (false: someone else moved it first).
    pub(crate) async fn apply(&self, transition: Transition) -> Result<bool, StepError> {
        let moved = self.catalog.transition(&transition).await?;
        if moved {
            tracing::info!(from = %transition.from, to = %transition.to, "tenant state changed");
            self.after(&transition.tenant, transition.to)?;
        }
        Ok(moved)
    }

    /// Handles a failed step: transient errors are retried with backoff until the attempts
    /// run out; then, or for a permanent error, the tenant goes to FAILED with the reason.
    async fn step_failed(
        &self,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        attempts: i32,
        error: ProvisionError,
    ) -> Result<Outcome, StepError> {
        let reason = format!("{}: {error}", tenant.state);
        if error.is_transient() && attempts + 1 < self.max_attempts as i32 {
            return Ok(Outcome::Retry(backoff(attempts), reason));
        }
        let mut transition = Transition::new(
            &tenant.id,
            tenant.state,
            TenantState::Failed,
            EventKind::Failed,
        );
        transition.failure_reason = Some(reason.clone());
        transition.operation = Some(operation.id);
        transition.finish_step = Some((StepStatus::Failed, reason.clone()));
        self.apply(transition).await?;
        Ok(Outcome::Failed(reason))
    }

    async fn onboard(
        &self,
        operation: &OperationRecord,
        attempts: i32,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, StepError> {
        // The state this run is in and since when: a step's duration is observed once, when
        // the tenant leaves its state (a state may take several passes, such as MIGRATING's
        // storing the password first, or WAITING_AVAILABLE's polls).
        let mut current: Option<(TenantState, std::time::Instant)> = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(Outcome::Wait(
                    Duration::ZERO,
                    "control plane stopping".into(),
                ));
            }
            let tenant = self.catalog.get_tenant(operation.tenant()?).await?;
            if let Some((state, since)) = current
                && state != tenant.state
            {
                self.metrics
                    .step(state.as_str(), since.elapsed().as_secs_f64());
                current = None;
            }
            if current.is_none() && tenant.state.is_onboarding() {
                current = Some((tenant.state, std::time::Instant::now()));
            }
            let Some(provisioner) = self.provisioners.get(&tenant.provisioner) else {
                let error = ProvisionError::Permanent(format!(
                    "provisioner {} is not configured",
                    tenant.provisioner
                ));
                return self.step_failed(&tenant, operation, attempts, error).await;
            };
            let spec = TenantSpec::of(&tenant);
            let step = self
                .onboarding_step(&tenant, operation, provisioner, &spec)
                .await;
            match step {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => {}
                Err(StepFailure::Provision(error)) => {
                    return self.step_failed(&tenant, operation, attempts, error).await;
                }
                Err(StepFailure::Step(error)) => return Err(error),
            }
        }
    }

    /// One step of onboarding from the tenant's current state. None: the tenant moved on,
    /// go again.
    async fn onboarding_step(
        &self,
        tenant: &TenantRecord,
        operation: &OperationRecord,
        provisioner: &impl Provisioner,
        spec: &TenantSpec,
    ) -> Result<Option<Outcome>, StepFailure> {
        let next = |from, to, event| {
            let mut t = Transition::new(&tenant.id, from, to, event);
            t.operation = Some(operation.id);
            t
        };
        match tenant.state {
            TenantState::Requested => {
                let mut t = next(
                    TenantState::Requested,
                    TenantState::Provisioning,
                    EventKind::StateChanged,
                );
                t.start_step = Some(TenantState::Provisioning.as_str().into());
                self.apply(t).await?;
            }
            TenantState::Provisioning => {
                let placement = match &tenant.placement {
                    Some(placement) => placement.clone(),
                    None => {
                        let placed = self
                            .catalog
                            .place_tenant(&tenant.id, &tenant.provisioner, operation.id, |load| {
                                provisioner.place(spec, load)
                            })
                            .await
                            .map_err(StepError::from)??;
                        match placed {
                            Some(placement) => placement,
                            None => return Ok(None),
                        }
                    }
                };
                let placement = provisioner.ensure_server(spec, &placement).await?;
                let mut t = next(
                    TenantState::Provisioning,
                    TenantState::WaitingAvailable,
                    EventKind::StateChanged,
                );
                t.placement = Some(placement);
                t.finish_step = Some((StepStatus::Done, String::new()));
                t.start_step = Some(TenantState::WaitingAvailable.as_str().into());
                self.apply(t).await?;
            }
            TenantState::WaitingAvailable => {
                let placement = placement_of(tenant)?;
                let (availability, placement) = provisioner.poll_available(&placement).await?;
                match availability {
                    Availability::Waiting {
                        status,
                        retry_after,
                    } => {
                        return Ok(Some(Outcome::Wait(retry_after, status)));
                    }
                    Availability::Ready => {
                        let mut t = next(
                            TenantState::WaitingAvailable,
                            TenantState::Migrating,
                            EventKind::StateChanged,
                        );
                        t.placement = Some(placement);
                        t.finish_step = Some((StepStatus::Done, String::new()));
                        t.start_step = Some(TenantState::Migrating.as_str().into());
                        self.apply(t).await?;
                    }
                }
            }
            TenantState::Migrating => {
                let password = match &tenant.credentials {
                    Some(sealed) => self
                        .cipher
                        .decrypt(tenant.id.as_str(), sealed)
                        .map_err(|e| ProvisionError::Permanent(e.to_string()))?,
                    None => {
                        // Stored before the role is made, so a retry uses the same password.
                        let password = generate_password();
                        let mut t = Transition::quiet(&tenant.id, TenantState::Migrating);
                        t.credentials = Some(self.seal(&tenant.id, &password)?);
                        self.catalog.transition(&t).await.map_err(StepError::from)?;
                        return Ok(None);
                    }
                };
                let placement = placement_of(tenant)?;
                let admin = provisioner.admin_access(&placement).await?;
                bootstrap::ensure_silo(&admin, spec, &password).await?;
                let version =
                    bootstrap::migrate_silo(&admin, spec, &password, &self.migrations).await?;
                let mut t = next(
                    TenantState::Migrating,
                    TenantState::Active,
                    EventKind::Activated,
                );
                t.schema_version = Some(version);
                t.isolation_version = Some(crate::provisioner::isolation::VERSION);
                t.finish_step = Some((StepStatus::Done, format!("schema version {version}")));
                self.apply(t).await?;
            }
            TenantState::Active | TenantState::Suspended | TenantState::Moving => {
                return Ok(Some(Outcome::Done));
            }
            TenantState::Deleting | TenantState::Deleted => {
                return Ok(Some(Outcome::Failed("the tenant is being deleted".into())));
            }
            TenantState::Failed => {
                return Ok(Some(Outcome::Failed(tenant.failure_reason.clone())));
            }
        }
        Ok(None)
    }

    fn seal(&self, tenant: &TenantId, password: &SecretString) -> Result<Vec<u8>, ProvisionError> {
        self.cipher
            .encrypt(tenant.as_str(), password)
            .map_err(|e| ProvisionError::Permanent(e.to_string()))
    }

    async fn delete(
        &self,
        operation: &OperationRecord,
        attempts: i32,
    ) -> Result<Outcome, StepError> {
        let tenant = self.catalog.get_tenant(operation.tenant()?).await?;
        match tenant.state {
            TenantState::Deleted => return Ok(Outcome::Done),
            TenantState::Deleting => {}
            other => {
                return Ok(Outcome::Failed(format!(
                    "the tenant is {other}, not DELETING"
                )));
            }
        }
        if self
            .catalog
            .has_pending(OperationKind::CreateTenant, &tenant.id, operation.id)
            .await?
        {
            return Ok(Outcome::Wait(
                Duration::from_millis(200),
                "waiting for onboarding to stop".into(),
            ));
        }
        if let Some(placement) = &tenant.placement {
            let Some(provisioner) = self.provisioners.get(&tenant.provisioner) else {
                return Ok(Outcome::Failed(format!(
                    "provisioner {} is not configured",
                    tenant.provisioner
                )));
            };
            let spec = TenantSpec::of(&tenant);
            let keep = operation.delete_params().keep_database;
            match provisioner.retire(&spec, placement, keep).await {
                Ok(Availability::Ready) => {}
                Ok(Availability::Waiting {
                    status,
                    retry_after,
                }) => {
                    return Ok(Outcome::Wait(retry_after, status));
                }
                Err(error) if error.is_transient() && attempts + 1 < self.max_attempts as i32 => {
                    return Ok(Outcome::Retry(backoff(attempts), error.to_string()));
                }
                // The tenant stays DELETING: deletion is retried by calling DeleteTenant again.
                Err(error) => return Ok(Outcome::Failed(format!("DELETING: {error}"))),
            }
        }
        let mut t = Transition::new(
            &tenant.id,
            TenantState::Deleting,
            TenantState::Deleted,
            EventKind::Deleted,
        );
        t.clear_credentials = true;
        t.operation = Some(operation.id);
        t.finish_step = Some((StepStatus::Done, String::new()));
        self.apply(t).await?;
        // The tenant has been DELETING since the request made this operation.
        let deleting = std::time::SystemTime::now()
            .duration_since(operation.created_at)
            .unwrap_or_default();
        self.metrics
            .step(TenantState::Deleting.as_str(), deleting.as_secs_f64());
        Ok(Outcome::Done)
    }
}

fn placement_of(tenant: &TenantRecord) -> Result<crate::catalog::Placement, ProvisionError> {
    tenant.placement.clone().ok_or_else(|| {
        ProvisionError::Permanent(format!("{} tenant has no placement", tenant.state))
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("halted by a test hook")]
    Halted(Halted),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

enum RunError {
    Halted,
    Catalog(CatalogError),
}

impl From<CatalogError> for RunError {
    fn from(error: CatalogError) -> Self {
        Self::Catalog(error)
    }
}

enum StepFailure {
    Provision(ProvisionError),
    Step(StepError),
}

impl From<ProvisionError> for StepFailure {
    fn from(error: ProvisionError) -> Self {
        Self::Provision(error)
    }
}

impl From<StepError> for StepFailure {
    fn from(error: StepError) -> Self {
        Self::Step(error)
    }
}
