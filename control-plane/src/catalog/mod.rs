//! The catalog: the control plane's own PostgreSQL database. Tenants, operations with their
//! steps, and the tenant-event log. Every tenant state transition is one transaction here.

mod config;
mod events;
mod migration_runs;
mod notify;
mod operations;
mod quota;
mod records;
mod tenants;
mod usage;

use std::{sync::Arc, time::Duration};

use bb8_postgres::PostgresConnectionManager;
use silo_tls::postgres::{PgConnector, PgTls};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use config::StoredConfig;
pub use migration_runs::{
    FailurePolicy, MigrationParams, PlanTenant, TenantMigration, TenantMigrationState, WaveParams,
};
pub use notify::CatalogChanges;
pub use operations::ClaimedOperation;
pub use quota::QuotaUse;
pub use records::*;
pub use tenants::{NewTenant, TenantFilter, TenantPage, Transition};
pub use usage::{UsageBucket, UsagePeriod, UsageRecord};

use crate::{
    metrics::ControlPlaneMetrics,
    migrations::{MigrationError, MigrationSet},
    tenant::TenantState,
};

pub(crate) type PgPool = bb8::Pool<PostgresConnectionManager<PgConnector>>;

/// Why a catalog call failed; `From<CatalogError> for ControlPlaneError` gives each its
/// gRPC code.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// No tenant row has this id.
    #[error("tenant not found")]
    TenantNotFound,
    /// CreateTenant for an id whose tenant is live (not `FAILED` or `DELETED`), with a
    /// request id other than the one that created it.
    #[error("tenant already exists")]
    TenantExists,
    /// No operation has this id (or, for a migration run, it is not one).
    #[error("operation not found")]
    OperationNotFound,
    /// A state change found the tenant in another state than it needs (e.g. suspending one
    /// that is not `ACTIVE`); holds the state it is in.
    #[error("tenant is {0}")]
    WrongState(TenantState),
    /// The request clashes with what the catalog holds (another migration run is pending, a
    /// dry run cannot resume); the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// A statement failed; a closed connection or an I/O error is reported as unavailable,
    /// a database error as internal.
    #[error("catalog database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No catalog connection could be had: connecting failed, or the pool timed out waiting
    /// for one.
    #[error("catalog unreachable: {0}")]
    Unreachable(String),
    /// The catalog's own schema could not be migrated at startup.
    #[error("catalog schema: {0}")]
    Migration(#[from] MigrationError),
    /// A stored value does not parse (a state, kind, tenant id or JSON column): the catalog
    /// was edited by hand or by a newer build.
    #[error("catalog holds an unreadable value: {0}")]
    Corrupt(String),
}

impl From<bb8::RunError<tokio_postgres::Error>> for CatalogError {
    fn from(error: bb8::RunError<tokio_postgres::Error>) -> Self {
        match error {
            bb8::RunError::User(error) => Self::Unreachable(error.to_string()),
            bb8::RunError::TimedOut => {
                Self::Unreachable("timed out waiting for a connection".into())
            }
        }
    }
}

/// Handle to the catalog; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
    config: tokio_postgres::Config,
    connector: PgConnector,
    changes: Arc<CatalogChanges>,
    metrics: ControlPlaneMetrics,
}

impl Catalog {
    /// Connects (lazily: the pool retries) and applies `migrations/catalog` under an
    /// advisory lock, so replicas starting together migrate once. `tls`: the DSN's
    /// `sslmode` / `sslrootcert` (see [`silo_tls::postgres::parse_dsn`]).
    pub async fn open(
        config: tokio_postgres::Config,
        tls: &PgTls,
        pool_size: u32,
        metrics: ControlPlaneMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, CatalogError> {
        let connector = tls
            .connector()
            .map_err(|e| CatalogError::Unreachable(e.to_string()))?;
        let manager = PostgresConnectionManager::new(config.clone(), connector.clone());
        let pool = bb8::Pool::builder()
            .max_size(pool_size.max(2))
            .connection_timeout(Duration::from_secs(5))
            .test_on_check_out(true)
            .build(manager)
            .await?;
        let catalog = Self {
            pool,
            config: config.clone(),
            connector: connector.clone(),
            changes: Arc::new(CatalogChanges::default()),
            metrics,
        };
        catalog.migrate().await?;
        notify::spawn_listener(config, connector, catalog.changes.clone(), shutdown);
        Ok(catalog)
    }

    async fn migrate(&self) -> Result<(), CatalogError> {
        let (mut client, connection) = self.config.connect(self.connector.clone()).await?;
        let task = tokio::spawn(connection);
        let result = MigrationSet::catalog()?.apply(&mut client).await;
        drop(client);
        let _ = task.await;
        result?;
        Ok(())
    }

    /// Change notifications (this process's writes and other replicas' via LISTEN/NOTIFY).
    pub fn changes(&self) -> &Arc<CatalogChanges> {
        &self.changes
    }

    /// A connection outside the pool, for a worker's claim transaction.
    pub async fn dedicated_connection(&self) -> Result<tokio_postgres::Client, CatalogError> {
        let (client, connection) = self.config.connect(self.connector.clone()).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The catalog answers a trivial query.
    pub async fn ping(&self) -> Result<(), CatalogError> {
        self.conn().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// A pooled connection; every catalog call starts here, so it is counted here.
    pub(crate) async fn conn(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<PgConnector>>, CatalogError>
    {
        let conn = self.pool.get().await;
        self.metrics.catalog_call(conn.is_ok());
        Ok(conn?)
    }
}
