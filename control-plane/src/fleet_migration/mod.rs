//! Schema migrations across every silo: a run plans which tenants get which migrations, in
//! waves, then a worker migrates them with bounded concurrency, recording each tenant's
//! result; a stopped or crashed run resumes and touches only tenants not yet at the target.

mod plan;
mod run;

pub use plan::{MigrationRequest, PlanError, WaveSelector, WaveSpec, plan};
