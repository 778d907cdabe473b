//! End-to-end suites: real PostgreSQL servers, the control plane over real gRPC.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod bad_input;
mod catalog_history;
mod control_plane_link;
mod crash_drill;
mod crash_resume;
mod fleet_migrations;
mod grpc_tls;
mod guards;
mod helm_chart;
mod lifecycle;
mod moves;
mod observability;
mod onboarding;
mod otlp;
mod provisioner_suite;
mod rds_moto;
mod rds_scripted;
mod readme_links;
mod replicas;
mod routing;
mod secrets;
mod shared_server;
mod tenant_config;
mod tls;
mod usage;
