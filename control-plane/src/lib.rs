//! silo's control plane: the tenant catalog, the provisioners that make one database per
//! tenant, the onboarding state machine, and the ControlPlane gRPC service.

#![warn(missing_docs)]

pub mod catalog;
pub mod config;
pub mod crypto;
pub mod error;
pub mod fleet_migration;
pub mod metrics;
pub mod migrations;
pub mod moves;
pub mod onboarding;
pub mod provisioner;
pub mod quota;
pub mod rebalance;
pub mod retention;
pub mod server;
pub mod service;
pub mod silo_guard;
pub mod tenant;
pub mod tenant_config;
pub mod usage;

pub use config::ControlPlaneConfig;
pub use onboarding::{HookAction, Hooks};
pub use server::{RunningControlPlane, StartError, start};
