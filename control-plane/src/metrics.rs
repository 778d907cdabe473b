//! The control plane's own Prometheus metrics (request metrics come from silo-telemetry).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Labels of `silo_controlplane_step_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The onboarding state the tenant was in when the step ran (`REQUESTED`,
    /// `PROVISIONING`, `WAITING_AVAILABLE`, `MIGRATING`).
    pub step: String,
}

/// Labels of `silo_controlplane_operations`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Operation kind (`create_tenant`, `delete_tenant`, `migrate_tenants`).
    pub kind: String,
    /// `succeeded` or `failed`.
    pub result: String,
}

/// Labels of `silo_controlplane_catalog_calls`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: String,
}

/// The control plane's own metrics, registered once per process and shared by the workers,
/// the silo guard and the catalog.
#[derive(Clone, Debug)]
pub struct ControlPlaneMetrics {
    step_duration: Family<StepLabels, Histogram>,
    operations: Family<OperationLabels, Counter>,
    operation_duration: Family<OperationLabels, Histogram>,
    catalog_calls: Family<OutcomeLabels, Counter>,
    guard_repairs: Family<RepairLabels, Counter>,
}

/// Labels of `silo_controlplane_guard_repairs`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepairLabels {
    /// `password`, `attributes`, `settings` (a tenant role put back) or `isolation` (a
    /// silo given the current isolation).
    pub what: String,
    /// `ok` or `error`.
    pub result: String,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        Self {
            step_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0,
                ])
            }),
            operations: Family::default(),
            operation_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
                ])
            }),
            catalog_calls: Family::default(),
            guard_repairs: Family::default(),
        }
    }
}

impl ControlPlaneMetrics {
    /// Registers the metrics in `registry` (served on `--metrics-listen`) and returns
    /// handles to them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "silo_controlplane_step_duration_seconds",
            "time a tenant spent in an onboarding state within one run of its operation, or \
             in DELETING from the request to its end, by step",
            metrics.step_duration.clone(),
        );
        registry.register(
            "silo_controlplane_operations",
            "operations finished, by kind and result",
            metrics.operations.clone(),
        );
        registry.register(
            "silo_controlplane_operation_duration_seconds",
            "time from an operation's request to its end, by kind and result: one \
             observation per tenant onboarded or deleted",
            metrics.operation_duration.clone(),
        );
        registry.register(
            "silo_controlplane_catalog_calls",
            "catalog connections taken from the pool, by outcome",
            metrics.catalog_calls.clone(),
        );
        registry.register(
            "silo_controlplane_guard_repairs",
            "what the silo guard put back on the fleet, by what and result",
            metrics.guard_repairs.clone(),
        );
        metrics
    }

    /// Counts one silo guard repair of `what` (see [`RepairLabels::what`]).
    pub fn guard_repair(&self, what: &str, ok: bool) {
        self.guard_repairs
            .get_or_create(&RepairLabels {
                what: what.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// Records how long a tenant spent in onboarding state `step` within one run of its
    /// operation (entering it to leaving it, every pass and poll included), in seconds.
    pub fn step(&self, step: &str, seconds: f64) {
        self.step_duration
            .get_or_create(&StepLabels {
                step: step.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts one finished operation of `kind` with `result` (`succeeded` or `failed`)
    /// and observes how long it took from its request, in seconds.
    pub fn operation(&self, kind: &str, result: &str, seconds: f64) {
        let labels = OperationLabels {
            kind: kind.to_owned(),
            result: result.to_owned(),
        };
        self.operation_duration
            .get_or_create(&labels)
            .observe(seconds);
        self.operations.get_or_create(&labels).inc();
    }

    /// Counts one catalog connection taken from the pool (`ok: false`: the pool could not
    /// give one).
    pub fn catalog_call(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.catalog_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
