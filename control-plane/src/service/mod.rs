//! The ControlPlane gRPC service. Handlers authorize, turn the request into domain values,
//! call the catalog or the provisioner, and turn the result back; errors go through
//! `ControlPlaneError` to a status in one place.

mod auth;
mod config;
mod convert;
mod migrations;
mod reconcile;
mod usage;
mod watch;

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::ExposeSecret;
use silo_auth::JwtVerifier;
use silo_proto::controlplane::v1::{self as pb, control_plane_server::ControlPlane};
use silo_tls::postgres::PgTls;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use auth::{Caller, Permission};

use crate::{
    catalog::{Catalog, DeleteParams, NewTenant, Placement, TenantFilter},
    config::{Tier, Tiers},
    crypto::{CredentialCipher, generate_password},
    error::{ControlPlaneError, RequestError},
    migrations::MigrationSet,
    provisioner::{AnyProvisioner, Provisioner, Provisioners, TenantSpec, bootstrap},
    tenant::{SiloNamer, TenantId, TenantState},
};

const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 100;

/// The ControlPlane gRPC service: checks each call's token and arguments, then reads the
/// catalog or hands work to the workers through it.
pub struct ControlPlaneService {
    pub(crate) catalog: Catalog,
    pub(crate) verifier: JwtVerifier,
    pub(crate) tiers: Arc<Tiers>,
    pub(crate) provisioners: Provisioners,
    pub(crate) cipher: CredentialCipher,
    pub(crate) namer: SiloNamer,
    pub(crate) migrations: Arc<MigrationSet>,
    pub(crate) shutdown: CancellationToken,
}

fn tenant_id(raw: &str) -> Result<TenantId, ControlPlaneError> {
    Ok(TenantId::parse(raw).map_err(RequestError::from)?)
}

fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), ControlPlaneError> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(RequestError::TooLong { field, max }.into());
    }
    Ok(())
}

fn audit(
    caller: &Caller,
    action: &str,
    tenant: &TenantId,
    result: &Result<impl Sized, ControlPlaneError>,
) {
    match result {
        Ok(_) => tracing::info!(
            audit = true, subject = %caller.subject, role = %caller.role, action, tenant_id = %tenant,
            result = "ok", "control-plane mutation"
        ),
        Err(error) => tracing::info!(
            audit = true, subject = %caller.subject, role = %caller.role, action, tenant_id = %tenant,
            result = %error, "control-plane mutation"
        ),
    }
}

fn audit_fleet(caller: &Caller, action: &str, result: &Result<impl Sized, ControlPlaneError>) {
    match result {
        Ok(_) => tracing::info!(
            audit = true, subject = %caller.subject, role = %caller.role, action, result = "ok",
            "control-plane mutation"
        ),
        Err(error) => tracing::info!(
            audit = true, subject = %caller.subject, role = %caller.role, action, result = %error,
            "control-plane mutation"
        ),
    }
}

impl ControlPlaneService {
    fn authorize<T>(&self, request: &Request<T>, permission: Permission) -> Result<Caller, Status> {
        auth::authorize(&self.verifier, request.metadata(), permission).map_err(Status::from)
    }

    async fn create_tenant(
        &self,
        request: pb::CreateTenantRequest,
    ) -> Result<pb::Operation, ControlPlaneError> {
        let id = tenant_id(&request.tenant_id)?;
        bounded("display_name", &request.display_name, 200)?;
        bounded("request_id", &request.request_id, 128)?;
        let tier_name = if request.tier.is_empty() {
            self.tiers.default_tier.clone()
        } else {
            request.tier
        };
        let tier = self
            .tiers
            .get(&tier_name)
            .ok_or_else(|| ControlPlaneError::from(RequestError::UnknownTier(tier_name.clone())))?;
        if self.provisioners.get(&tier.provisioner).is_none() {
            return Err(ControlPlaneError::ProvisionerNotConfigured(
                tier.provisioner.clone(),
            ));
        }
        let new = NewTenant {
            display_name: if request.display_name.is_empty() {
                id.to_string()
            } else {
                request.display_name
            },
            provisioner: tier.provisioner.clone(),
            tier: tier_name,
            request_id: if request.request_id.is_empty() {
                Uuid::new_v4().to_string()
            } else {
                request.request_id
            },
            names: self.namer.names(&id),
            id,
        };
        let operation = self.catalog.create_tenant(&new).await?;
        Ok(convert::operation(&operation))
    }

    /// Plans (and with `execute` starts) the moves that even out the postgres fleet.
    async fn rebalance(
        &self,
        request: pb::RebalanceFleetRequest,
    ) -> Result<pb::RebalanceFleetResponse, ControlPlaneError> {
        use crate::provisioner::Provisioner as _;
        use crate::rebalance::{PlacedTenant, loads, plan};
        bounded("request_id", &request.request_id, 100)?;
        let Some(crate::provisioner::AnyProvisioner::Postgres(fleet)) =
            self.provisioners.get("postgres")
        else {
            return Err(ControlPlaneError::ProvisionerNotConfigured(
                "postgres".into(),
            ));
        };
        let servers: Vec<String> = fleet.server_names().map(str::to_owned).collect();
        let mut sizes = std::collections::HashMap::new();
        for server in &servers {
            let admin = fleet.admin_access(&fleet.placement_on(server)?).await?;
            let client = crate::provisioner::bootstrap::admin_session(&admin).await?;
            let rows = client
                .query(
                    "SELECT datname::text, pg_database_size(oid) FROM pg_database",
                    &[],
                )
                .await
                .map_err(|e| {
                    ControlPlaneError::from(crate::provisioner::bootstrap::classify(
                        "reading database sizes",
                        &e,
                    ))
                })?;
            for row in rows {
                let (name, bytes): (String, i64) = (row.get(0), row.get(1));
                sizes.insert((server.clone(), name), u64::try_from(bytes).unwrap_or(0));
            }
        }
        let tenants: Vec<PlacedTenant> = self
            .catalog
            .guarded_tenants("postgres")
            .await?
            .into_iter()
            .filter(|tenant| tenant.state == TenantState::Active)
            .filter_map(|tenant| {
                let server = tenant.placement.as_ref()?.server.clone();
                let bytes = sizes
                    .get(&(server.clone(), tenant.database_name.clone()))
                    .copied()
                    .unwrap_or(0);
                Some(PlacedTenant {
                    tenant_id: tenant.id.to_string(),
                    server,
                    bytes,
                })
            })
            .collect();
        let max_moves = match request.max_moves {
            0 => 10,
            n => n as usize,
        };
        let planned = plan(&servers, &tenants, max_moves);
        let mut after = tenants.clone();
        for planned in &planned {
            if let Some(tenant) = after.iter_mut().find(|t| t.tenant_id == planned.tenant_id) {
                tenant.server = planned.to.clone();
            }
        }
        let shares = |tenants: &[PlacedTenant]| -> Vec<pb::ServerLoad> {
            loads(&servers, tenants)
                .into_iter()
                .map(|(server, load)| pb::ServerLoad {
                    server,
                    tenants: load.tenants,
                    database_bytes: load.bytes,
                })
                .collect()
        };
        let rebalance_id = if request.request_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            request.request_id.clone()
        };
        let mut moves = Vec::with_capacity(planned.len());
        for planned in planned {
            let mut proposed = pb::ProposedMove {
                tenant_id: planned.tenant_id.clone(),
                from_server: planned.from,
                to_server: planned.to.clone(),
                database_bytes: planned.bytes,
                operation_id: String::new(),
            };
            if request.execute {
                let id = tenant_id(&planned.tenant_id)?;
                let operation = self
                    .start_move(
                        &id,
                        pb::MoveTenantRequest {
                            tenant_id: planned.tenant_id.clone(),
                            target_server: planned.to,
                            method: request.method,
                            request_id: format!("{rebalance_id}:{}", planned.tenant_id),
                            target_tier: String::new(),
                            rollback: false,
                        },
                    )
                    .await?;
                proposed.operation_id = operation.id.to_string();
            }
            moves.push(proposed);
        }
        Ok(pb::RebalanceFleetResponse {
            before: shares(&tenants),
            after: shares(&after),
            moves,
        })
    }

    /// Checks a MoveTenant request against the tenant, its fleet and the target tier, and
    /// records the move with both ends' placements (an RDS target's is chosen now, so a
    /// resumed move makes the same instance).
    async fn start_move(
        &self,
        id: &TenantId,
        mut request: pb::MoveTenantRequest,
    ) -> Result<crate::catalog::OperationRecord, ControlPlaneError> {
        use crate::catalog::{MoveMethod, MoveParams};
        use crate::provisioner::Provisioner as _;
        bounded("request_id", &request.request_id, 128)?;
        bounded("target_server", &request.target_server, 128)?;
        bounded("target_tier", &request.target_tier, 128)?;
        let asked = pb::MoveMethod::try_from(request.method)
            .map_err(|_| RequestError::MoveTarget("unknown move method".into()))?;
        let tenant = self.catalog.get_tenant(id).await?;
        let request_id = if request.request_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            std::mem::take(&mut request.request_id)
        };
        if let Some(earlier) = self
            .catalog
            .find_operation(crate::catalog::OperationKind::MoveTenant, id, &request_id)
            .await?
        {
            return Ok(earlier);
        }
        if request.rollback {
            self.rollback_target(&tenant, &mut request).await?;
        }
        let source = self.provisioners.get(&tenant.provisioner).ok_or_else(|| {
            ControlPlaneError::ProvisionerNotConfigured(tenant.provisioner.clone())
        })?;
        let target_tier = match request.target_tier.as_str() {
            "" => None,
            tier if tier == tenant.tier => None,
            tier => Some(
                self.tiers
                    .tiers
                    .get(tier)
                    .map(|settings| (tier.to_owned(), settings.provisioner.clone()))
                    .ok_or_else(|| RequestError::UnknownTier(tier.to_owned()))?,
            ),
        };
        let target_provisioner = target_tier
            .as_ref()
            .map_or(tenant.provisioner.as_str(), |(_, name)| name.as_str());
        let target = self.provisioners.get(target_provisioner).ok_or_else(|| {
            ControlPlaneError::ProvisionerNotConfigured(target_provisioner.to_owned())
        })?;
        let placement = tenant
            .placement
            .clone()
            .ok_or(ControlPlaneError::WrongState(tenant.state))?;
        if tenant.state != TenantState::Active {
            return Err(ControlPlaneError::WrongState(tenant.state));
        }
        let mut target_spec = TenantSpec::of(&tenant);
        if let Some((tier, _)) = &target_tier {
            target_spec.tier.clone_from(tier);
        }
        target_spec.request_id.clone_from(&request_id);
        let target_placement = match target {
            AnyProvisioner::Postgres(fleet) if request.target_server.is_empty() => {
                if target_tier.is_none() {
                    return Err(RequestError::MoveTarget(
                        "name a target_server or a target_tier".into(),
                    )
                    .into());
                }
                let load = self.catalog.placement_load_of(target_provisioner).await?;
                fleet.place(&target_spec, &load)?
            }
            AnyProvisioner::Postgres(fleet) => {
                fleet.placement_on(&request.target_server).map_err(|_| {
                    RequestError::MoveTarget(format!(
                        "target_server {:?} is no server of the {target_provisioner} fleet",
                        request.target_server
                    ))
                })?
            }
            AnyProvisioner::Rds(_) if !request.target_server.is_empty() => {
                return Err(RequestError::MoveTarget(
                    "an rds target gets an instance of its own: leave target_server empty".into(),
                )
                .into());
            }
            AnyProvisioner::Rds(_) if target_tier.is_none() => {
                return Err(ControlPlaneError::Conflict(
                    "the tenant has an RDS instance of its own; move it with a target_tier of \
                     another provisioner"
                        .into(),
                ));
            }
            AnyProvisioner::Rds(rds) => rds.place(&target_spec, &[])?,
        };
        // The same server under another name (or an RDS endpoint rewritten to it) would
        // have the target's silo made over the source's.
        if target_placement.server == placement.server
            || (target_placement.host == placement.host && target_placement.port == placement.port)
        {
            return Err(ControlPlaneError::Conflict(format!(
                "the tenant is on {} already",
                target_placement.server
            )));
        }
        // Replication needs wal_level = logical on the source; the default takes it when
        // the source allows it.
        let method = match asked {
            pb::MoveMethod::Copy => MoveMethod::Copy,
            pb::MoveMethod::Unspecified | pb::MoveMethod::Replicate => {
                let admin = source.admin_access(&placement).await?;
                let level = crate::provisioner::relocate::wal_level(&admin).await?;
                let spec = TenantSpec::of(&tenant);
                let unreplicable = if level == "logical" {
                    crate::provisioner::relocate::tables_without_replica_identity(&admin, &spec)
                        .await?
                } else {
                    Vec::new()
                };
                match (asked, level.as_str()) {
                    (_, "logical") if unreplicable.is_empty() => MoveMethod::Replicate,
                    (pb::MoveMethod::Unspecified, _) => MoveMethod::Copy,
                    (_, "logical") => {
                        return Err(ControlPlaneError::Conflict(format!(
                            "tables without a primary key or replica identity cannot be \
                             replicated (UPDATE and DELETE on them would fail during the \
                             move): {}; move with MOVE_METHOD_COPY",
                            unreplicable.join(", ")
                        )));
                    }
                    _ => {
                        return Err(ControlPlaneError::Conflict(format!(
                            "replicate needs wal_level = logical on the source server {} (it \
                             is {level}); set it (on RDS: rds.logical_replication = 1) or \
                             move with MOVE_METHOD_COPY",
                            placement.server
                        )));
                    }
                }
            }
        };
        let params = MoveParams {
            source_server: placement.server.clone(),
            target_server: target_placement.server.clone(),
            source: Some(placement),
            target: Some(target_placement),
            source_provisioner: Some(tenant.provisioner.clone()),
            source_tier: Some(tenant.tier.clone()),
            target_provisioner: Some(target_provisioner.to_owned()),
            target_tier: target_tier.map(|(tier, _)| tier),
            method,
            cancel_requested: false,
            abandoned: None,
        };
        Ok(self.catalog.start_move(id, &request_id, &params).await?)
    }

    /// A rollback's target: the source (server, and tier when it changed) of the tenant's
    /// last finished move, which must have left the tenant where it is now.
    async fn rollback_target(
        &self,
        tenant: &crate::catalog::TenantRecord,
        request: &mut pb::MoveTenantRequest,
    ) -> Result<(), ControlPlaneError> {
        if !request.target_server.is_empty() || !request.target_tier.is_empty() {
            return Err(RequestError::MoveTarget(
                "a rollback names no target_server or target_tier: it goes back where the last \
                 move came from"
                    .into(),
            )
            .into());
        }
        let last = self
            .catalog
            .last_finished_move(&tenant.id)
            .await?
            .ok_or_else(|| {
                ControlPlaneError::Conflict("the tenant has no finished move to roll back".into())
            })?;
        let moved = last.move_params()?;
        let here = tenant.placement.as_ref().map(|p| p.server.as_str());
        if here != Some(moved.target_server.as_str()) {
            return Err(ControlPlaneError::Conflict(format!(
                "the tenant is no longer where its last move (operation {}) put it",
                last.id
            )));
        }
        if let Some(tier) = moved.source_tier.filter(|tier| *tier != tenant.tier) {
            request.target_tier = tier;
        }
        let back_to_fleet = moved
            .source_provisioner
            .as_deref()
            .and_then(|name| self.provisioners.get(name))
            .is_none_or(|p| matches!(p, AnyProvisioner::Postgres(_)));
        if back_to_fleet {
            request.target_server = moved.source_server;
        }
        Ok(())
    }

    /// SetTenantQuota: stores the tenant's own quotas, checks them against this month's use
    /// at once, and answers with what is in force.
    async fn set_quota(
        &self,
        id: &TenantId,
        request: &pb::SetTenantQuotaRequest,
    ) -> Result<pb::TenantQuota, ControlPlaneError> {
        let signed = |value: Option<u64>| value.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.catalog
            .set_tenant_quota(
                id,
                signed(request.monthly_calls),
                signed(request.monthly_rows),
            )
            .await?;
        let tenants = [id.to_string()];
        crate::quota::check(&self.catalog, &self.tiers, &tenants).await?;
        let usage = self
            .catalog
            .quota_use(&tenants, None)
            .await?
            .into_iter()
            .next()
            .ok_or(ControlPlaneError::Missing("tenant"))?;
        let (calls, rows) = crate::quota::quotas(&self.tiers, &usage);
        let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(pb::TenantQuota {
            tenant_id: id.to_string(),
            monthly_calls: calls.unwrap_or(0),
            monthly_rows: rows.unwrap_or(0),
            calls_used: unsigned(usage.calls_used),
            rows_used: unsigned(usage.rows_used),
            exhausted: usage.exhausted,
        })
    }

    /// ChangeTier: at once when the new tier's provisioner is the tenant's, else a move.
    async fn change_tier(
        &self,
        id: &TenantId,
        request: pb::ChangeTierRequest,
    ) -> Result<pb::ChangeTierResponse, ControlPlaneError> {
        bounded("tier", &request.tier, 128)?;
        let tier = self
            .tiers
            .tiers
            .get(&request.tier)
            .ok_or_else(|| RequestError::UnknownTier(request.tier.clone()))?;
        let tenant = self.catalog.get_tenant(id).await?;
        if tier.provisioner == tenant.provisioner {
            let tenant = self.catalog.change_tier(id, &request.tier).await?;
            return Ok(pb::ChangeTierResponse {
                tenant: Some(convert::tenant(&tenant)),
                operation: None,
            });
        }
        let operation = self
            .start_move(
                id,
                pb::MoveTenantRequest {
                    tenant_id: request.tenant_id,
                    target_server: String::new(),
                    method: request.method,
                    request_id: request.request_id,
                    target_tier: request.tier,
                    rollback: false,
                },
            )
            .await?;
        let tenant = self.catalog.get_tenant(id).await?;
        Ok(pb::ChangeTierResponse {
            tenant: Some(convert::tenant(&tenant)),
            operation: Some(convert::operation(&operation)),
        })
    }

    async fn rotate_credentials(&self, id: &TenantId) -> Result<pb::Tenant, ControlPlaneError> {
        let tenant = self.catalog.get_tenant(id).await?;
        match tenant.state {
            TenantState::Active | TenantState::Suspended => {}
            TenantState::Deleted => return Err(ControlPlaneError::Missing("tenant")),
            other => return Err(ControlPlaneError::WrongState(other)),
        }
        let provisioner = self.provisioners.get(&tenant.provisioner).ok_or_else(|| {
            ControlPlaneError::ProvisionerNotConfigured(tenant.provisioner.clone())
        })?;
        let placement = tenant.placement.as_ref().ok_or_else(|| {
            ControlPlaneError::Unexpected("active tenant without placement".into())
        })?;
        let admin = provisioner.admin_access(placement).await?;
        let spec = TenantSpec::of(&tenant);
        let password = generate_password();
        let sealed = self.cipher.encrypt(id.as_str(), &password)?;
        bootstrap::set_password(&admin, &spec, &password).await?;
        let updated = self
            .catalog
            .rotate_credentials(id, tenant.state, sealed)
            .await?;
        Ok(convert::tenant(&updated))
    }

    /// TLS to a tenant's database: its tier's settings, or for a `postgres` tier without
    /// them, those of the fleet server's DSN.
    fn route_tls(&self, tier: &Tier, placement: &Placement) -> Result<PgTls, ControlPlaneError> {
        if let Some(tls) = tier
            .tls()
            .map_err(|e| ControlPlaneError::Unexpected(e.to_string()))?
        {
            return Ok(tls);
        }
        Ok(match self.provisioners.get(&tier.provisioner) {
            Some(AnyProvisioner::Postgres(fleet)) => fleet
                .server_tls(&placement.server)
                .cloned()
                .unwrap_or_default(),
            _ => PgTls::default(),
        })
    }

    async fn resolve(&self, id: &TenantId) -> Result<pb::TenantRoute, ControlPlaneError> {
        // Read the sequence first: a watcher starting from it sees every later change.
        let sequence = self.catalog.latest_sequence().await?;
        let tenant = self.catalog.get_tenant(id).await?;
        if tenant.state == TenantState::Deleted {
            return Err(ControlPlaneError::Missing("tenant"));
        }
        let tier = self
            .tiers
            .get(&tenant.tier)
            .or_else(|| self.tiers.get(&self.tiers.default_tier))
            .ok_or_else(|| {
                ControlPlaneError::Unexpected(format!("tier {} is not configured", tenant.tier))
            })?;
        let mut route = pb::TenantRoute {
            tenant_id: tenant.id.to_string(),
            state: convert::state(tenant.state).into(),
            tier: tenant.tier.clone(),
            database: tenant.database_name.clone(),
            user: tenant.role_name.clone(),
            credentials_version: u32::try_from(tenant.credentials_version).unwrap_or(0),
            limits: Some(pb::TierLimits {
                max_connections: tier.max_connections,
                rate_per_second: tier.rate_per_second,
                burst: tier.burst,
                max_concurrent_calls: tier.max_concurrent_calls,
                statement_timeout: Some(convert::duration(std::time::Duration::from_millis(
                    tier.statement_timeout_ms,
                ))),
            }),
            sequence: u64::try_from(sequence).unwrap_or(0),
            config: Some(self.route_config(&self.catalog.tenant_config(id).await?)),
            ..Default::default()
        };
        if let Some(placement) = &tenant.placement {
            route.host = placement.host.clone();
            route.port = u32::from(placement.port);
            let tls = self.route_tls(tier, placement)?;
            route.sslmode = tls.mode.to_string();
            route.sslrootcert = tls
                .root_certs
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
        }
        route.quota_exhausted.clone_from(&tenant.quota_exhausted);
        // Credentials go out only for a tenant a router may serve.
        if let (TenantState::Active, Some(sealed)) = (tenant.state, &tenant.credentials) {
            let password = self.cipher.decrypt(id.as_str(), sealed)?;
            route.password = password.expose_secret().to_owned();
        }
        Ok(route)
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let request = request.into_inner();
        let result = self.create_tenant(request.clone()).await;
        if let Ok(id) = TenantId::parse(&request.tenant_id) {
            audit(&caller, "create_tenant", &id, &result);
        }
        Ok(Response::new(result?))
    }

    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        self.authorize(&request, Permission::Read)?;
        let id = parse_operation_id(&request.get_ref().operation_id)?;
        let operation = self
            .catalog
            .get_operation(id)
            .await
            .map_err(ControlPlaneError::from)?;
        Ok(Response::new(convert::operation(&operation)))
    }

    type WatchOperationStream = watch::ResponseStream<pb::Operation>;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        self.authorize(&request, Permission::Read)?;
        let id = parse_operation_id(&request.get_ref().operation_id)?;
        // Fail fast on an unknown id instead of opening a stream.
        self.catalog
            .get_operation(id)
            .await
            .map_err(ControlPlaneError::from)?;
        Ok(Response::new(watch::operation(
            self.catalog.clone(),
            id,
            self.shutdown.clone(),
        )))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.authorize(&request, Permission::Read)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        let tenant = self
            .catalog
            .get_tenant(&id)
            .await
            .map_err(ControlPlaneError::from)?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.authorize(&request, Permission::Read)?;
        let request = request.into_inner();
        let state = convert::state_filter(request.state)
            .map_err(|()| ControlPlaneError::from(RequestError::UnknownState))?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            let bad = || ControlPlaneError::from(RequestError::PageToken);
            let raw = URL_SAFE_NO_PAD
                .decode(&request.page_token)
                .map_err(|_| bad())?;
            let id = String::from_utf8(raw).map_err(|_| bad())?;
            TenantId::parse(&id).map_err(|_| bad())?;
            Some(id)
        };
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let filter = TenantFilter {
            state,
            tier: (!request.tier.is_empty()).then_some(request.tier),
            after,
            limit: page_size,
        };
        let page = self
            .catalog
            .list_tenants(&filter)
            .await
            .map_err(ControlPlaneError::from)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.tenants.iter().map(convert::tenant).collect(),
            next_page_token: page
                .next_after
                .map(|id| URL_SAFE_NO_PAD.encode(id))
                .unwrap_or_default(),
        }))
    }

    async fn suspend_tenant(
        &self,
        request: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        bounded("reason", &request.get_ref().reason, 500)?;
        let result = self
            .catalog
            .suspend_tenant(&id)
            .await
            .map_err(ControlPlaneError::from);
        audit(&caller, "suspend_tenant", &id, &result);
        Ok(Response::new(convert::tenant(&result?)))
    }

    async fn resume_tenant(
        &self,
        request: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        let result = self
            .catalog
            .resume_tenant(&id)
            .await
            .map_err(ControlPlaneError::from);
        audit(&caller, "resume_tenant", &id, &result);
        Ok(Response::new(convert::tenant(&result?)))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let request = request.into_inner();
        let id = tenant_id(&request.tenant_id)?;
        bounded("request_id", &request.request_id, 128)?;
        let request_id = if request.request_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            request.request_id
        };
        let params = DeleteParams {
            keep_database: request.keep_database,
        };
        let result = self
            .catalog
            .start_delete(&id, &request_id, params)
            .await
            .map_err(ControlPlaneError::from);
        audit(&caller, "delete_tenant", &id, &result);
        Ok(Response::new(convert::operation(&result?)))
    }

    async fn move_tenant(
        &self,
        request: Request<pb::MoveTenantRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let request = request.into_inner();
        let id = tenant_id(&request.tenant_id)?;
        let result = self.start_move(&id, request).await;
        audit(&caller, "move_tenant", &id, &result);
        Ok(Response::new(convert::operation(&result?)))
    }

    async fn change_tier(
        &self,
        request: Request<pb::ChangeTierRequest>,
    ) -> Result<Response<pb::ChangeTierResponse>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let request = request.into_inner();
        let id = tenant_id(&request.tenant_id)?;
        let result = self.change_tier(&id, request).await;
        audit(&caller, "change_tier", &id, &result);
        Ok(Response::new(result?))
    }

    async fn cancel_operation(
        &self,
        request: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let id = parse_operation_id(&request.get_ref().operation_id)?;
        let result = self
            .catalog
            .request_cancel(id)
            .await
            .map_err(ControlPlaneError::from);
        if let Ok(operation) = &result
            && let Some(tenant) = &operation.tenant_id
        {
            audit(
                &caller,
                "cancel_operation",
                tenant,
                &Ok::<(), ControlPlaneError>(()),
            );
        }
        Ok(Response::new(convert::operation(&result?)))
    }

    async fn rebalance_fleet(
        &self,
        request: Request<pb::RebalanceFleetRequest>,
    ) -> Result<Response<pb::RebalanceFleetResponse>, Status> {
        let permission = if request.get_ref().execute {
            Permission::Mutate
        } else {
            Permission::Read
        };
        let caller = self.authorize(&request, permission)?;
        let result = self.rebalance(request.into_inner()).await;
        if let Err(error) = &result {
            tracing::warn!(caller = %caller.subject, error = %error, "rebalance_fleet failed");
        }
        Ok(Response::new(result?))
    }

    async fn rotate_credentials(
        &self,
        request: Request<pb::RotateCredentialsRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        let result = self.rotate_credentials(&id).await;
        audit(&caller, "rotate_credentials", &id, &result);
        Ok(Response::new(result?))
    }

    async fn start_migration(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let result = self.start_migration(request.into_inner()).await;
        audit_fleet(&caller, "start_migration", &result);
        Ok(Response::new(result?))
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::MigrationRun>, Status> {
        self.authorize(&request, Permission::Read)?;
        let id = parse_operation_id(&request.get_ref().operation_id)?;
        Ok(Response::new(self.migration_run(id).await?))
    }

    type WatchMigrationStream = watch::ResponseStream<pb::MigrationRun>;

    async fn watch_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<Self::WatchMigrationStream>, Status> {
        self.authorize(&request, Permission::Read)?;
        let id = parse_operation_id(&request.get_ref().operation_id)?;
        self.migration_run(id).await?;
        Ok(Response::new(watch::migration(
            self.catalog.clone(),
            self.migrations.clone(),
            id,
            self.shutdown.clone(),
        )))
    }

    async fn resume_migration(
        &self,
        request: Request<pb::ResumeMigrationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let id = parse_operation_id(&request.get_ref().operation_id)?;
        let result = self.resume_migration(id).await;
        audit_fleet(&caller, "resume_migration", &result);
        Ok(Response::new(result?))
    }

    async fn resolve_tenant(
        &self,
        request: Request<pb::ResolveTenantRequest>,
    ) -> Result<Response<pb::TenantRoute>, Status> {
        self.authorize(&request, Permission::Resolve)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        Ok(Response::new(self.resolve(&id).await?))
    }

    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        self.authorize(&request, Permission::Resolve)?;
        let request = request.into_inner();
        let mut tenants: Vec<String> = request
            .records
            .iter()
            .map(|r| r.tenant_id.clone())
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        let stored = usage::record(&self.catalog, request).await?;
        // Stored is stored: a failed quota check is logged, and the next shipment (or the
        // periodic recheck) checks again.
        if let Err(error) = crate::quota::check(&self.catalog, &self.tiers, &tenants).await {
            tracing::warn!(error = %error, "checking quotas after usage failed");
        }
        Ok(Response::new(pb::RecordUsageResponse { stored }))
    }

    async fn set_tenant_quota(
        &self,
        request: Request<pb::SetTenantQuotaRequest>,
    ) -> Result<Response<pb::TenantQuota>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let request = request.into_inner();
        let id = tenant_id(&request.tenant_id)?;
        let result = self.set_quota(&id, &request).await;
        audit(&caller, "set_tenant_quota", &id, &result);
        Ok(Response::new(result?))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.authorize(&request, Permission::Read)?;
        Ok(Response::new(
            usage::get(&self.catalog, request.into_inner()).await?,
        ))
    }

    async fn reconcile_rds_instances(
        &self,
        request: Request<pb::ReconcileRdsInstancesRequest>,
    ) -> Result<Response<pb::ReconcileRdsInstancesResponse>, Status> {
        let delete_orphans = request.get_ref().delete_orphans;
        let permission = if delete_orphans {
            Permission::Mutate
        } else {
            Permission::Read
        };
        let caller = self.authorize(&request, permission)?;
        Ok(Response::new(
            reconcile::rds_instances(self, &caller, delete_orphans).await?,
        ))
    }

    type WatchTenantsStream = watch::ResponseStream<pb::TenantEvent>;

    async fn watch_tenants(
        &self,
        request: Request<pb::WatchTenantsRequest>,
    ) -> Result<Response<Self::WatchTenantsStream>, Status> {
        self.authorize(&request, Permission::WatchEvents)?;
        let request = request.into_inner();
        let start = if request.from_head {
            watch::Start::Head(
                self.catalog
                    .latest_sequence()
                    .await
                    .map_err(ControlPlaneError::from)?,
            )
        } else {
            let from = i64::try_from(request.from_sequence)
                .map_err(|_| ControlPlaneError::from(RequestError::FromSequenceTooLarge))?;
            let oldest = self
                .catalog
                .oldest_sequence()
                .await
                .map_err(ControlPlaneError::from)?;
            if from > 0 && from + 1 < oldest {
                return Err(ControlPlaneError::HistoryTrimmed(format!(
                    "events before sequence {oldest} are no longer kept; watch from the head \
                     and resolve cached tenants again"
                ))
                .into());
            }
            watch::Start::After(from)
        };
        Ok(Response::new(watch::tenant_events(
            self.catalog.clone(),
            start,
            self.shutdown.clone(),
        )))
    }

    async fn set_tenant_config(
        &self,
        request: Request<pb::SetTenantConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let change = config::ConfigChange::try_from(request.into_inner())?;
        let result = self.change_config(&change).await;
        audit(&caller, "set_tenant_config", &change.tenant, &result);
        Ok(Response::new(result?))
    }

    async fn unset_tenant_config(
        &self,
        request: Request<pb::UnsetTenantConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        let caller = self.authorize(&request, Permission::Mutate)?;
        let change = config::ConfigChange::try_from(request.into_inner())?;
        let result = self.change_config(&change).await;
        audit(&caller, "unset_tenant_config", &change.tenant, &result);
        Ok(Response::new(result?))
    }

    async fn get_tenant_config(
        &self,
        request: Request<pb::GetTenantConfigRequest>,
    ) -> Result<Response<pb::TenantConfig>, Status> {
        self.authorize(&request, Permission::Read)?;
        let id = tenant_id(&request.get_ref().tenant_id)?;
        Ok(Response::new(self.get_config(&id).await?))
    }
}

fn parse_operation_id(raw: &str) -> Result<Uuid, ControlPlaneError> {
    Uuid::parse_str(raw).map_err(|_| RequestError::OperationId.into())
}
