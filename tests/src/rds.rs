//! The control plane configured for the `rds` provisioner against an AWS-protocol peer on
//! loopback (moto or the scripted fake), with instance endpoints rewritten to one of the
//! harness's PostgreSQL servers so the bootstrap and the tenant's logins are real.

use std::time::Duration;

use silo_control_plane::ControlPlaneConfig;
use silo_proto::controlplane::v1 as pb;

use crate::{TestControlPlane, TestEnv, token, with_token};

/// How the test tier makes its instances.
#[derive(Clone, Copy, Debug)]
pub struct RdsTier {
    /// Secrets-Manager-managed master password (moto supports it; the fake does not).
    pub managed_password: bool,
}

impl TestEnv {
    /// Flags for the `rds` provisioner talking to `endpoint_url`, with every instance
    /// endpoint rewritten to fleet server 0, and fast polls.
    pub fn rds_flags(&self, endpoint_url: &str, tier: RdsTier) -> Vec<String> {
        // The test's own file, removed with the environment.
        let path = self.scratch_file(if tier.managed_password {
            "rds-tiers-managed.toml"
        } else {
            "rds-tiers-generated.toml"
        });
        std::fs::write(
            &path,
            format!(
                "default_tier = \"enterprise\"\n\
                 [tiers.standard]\nprovisioner = \"postgres\"\n\
                 [tiers.enterprise]\nprovisioner = \"rds\"\n{}\
                 [tiers.enterprise.rds]\ninstance_class = \"db.t4g.micro\"\n\
                 master_username = \"postgres\"\nmanage_master_password = {}\n",
                self.tenant_tls_toml(),
                tier.managed_password
            ),
        )
        .expect("tiers file written");
        let server = &self.servers[0];
        vec![
            format!("--tiers-file={}", path.display()),
            format!("--rds-endpoint-url={endpoint_url}"),
            "--rds-region=us-east-1".into(),
            "--rds-access-key-id=testing".into(),
            "--rds-secret-access-key=testing".into(),
            format!(
                "--rds-endpoint-rewrite=*={}:{}",
                self.tenant_host(),
                server.port()
            ),
            "--rds-poll-min-ms=20".into(),
            "--rds-poll-max-ms=200".into(),
            "--rds-not-found-grace-secs=30".into(),
            "--rds-max-attempts=3".into(),
            "--rds-reconcile-interval-secs=0".into(),
        ]
    }

    /// The control plane's configuration for the `rds` provisioner; a flag in `extra`
    /// replaces the default of the same name.
    pub fn rds_config(
        &self,
        endpoint_url: &str,
        tier: RdsTier,
        extra: &[&str],
    ) -> ControlPlaneConfig {
        let name = |flag: &str| flag.split('=').next().unwrap_or(flag).to_owned();
        let overridden: Vec<String> = extra.iter().map(|f| name(f)).collect();
        let mut flags = self.rds_flags(endpoint_url, tier);
        flags.retain(|flag| !overridden.contains(&name(flag)));
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.config(&flags)
    }
}

/// An RDS client for inspecting the peer from a test.
pub async fn rds_client(endpoint_url: &str) -> aws_sdk_rds::Client {
    use aws_config::{BehaviorVersion, Region};
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint_url)
        .credentials_provider(aws_sdk_rds::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    aws_sdk_rds::Client::new(&config)
}

/// Deletes the tenant through the API and waits for the operation to finish.
pub async fn delete_tenant(cp: &TestControlPlane, tenant: &str) -> pb::Operation {
    let deletion = cp
        .client()
        .delete_tenant(with_token(
            pb::DeleteTenantRequest {
                tenant_id: tenant.into(),
                keep_database: false,
                request_id: format!("del-{tenant}"),
            },
            &token("admin"),
        ))
        .await
        .expect("delete accepted")
        .into_inner();
    cp.wait_done(&deletion.operation_id, Duration::from_secs(60))
        .await
}

/// The tenant is served: the route a router gets from ResolveTenant logs in to the
/// tenant's own migrated database, with the route's TLS settings.
pub async fn assert_serves(cp: &TestControlPlane, tenant: &str) {
    let route = cp.resolve(tenant).await.expect("tenant resolves");
    assert_eq!(route.state(), pb::TenantState::Active);
    let mut config = tokio_postgres::Config::new();
    config
        .host(&route.host)
        .port(u16::try_from(route.port).expect("port"))
        .user(&route.user)
        .password(&route.password)
        .dbname(&route.database);
    let tls = silo_tls::postgres::PgTls::new(
        Some(route.sslmode.as_str()).filter(|mode| !mode.is_empty()),
        Some(route.sslrootcert.as_str()),
    )
    .expect("the route's TLS settings");
    tls.apply(&mut config);
    let (client, connection) = config
        .connect(tls.connector().expect("connector"))
        .await
        .expect("the tenant logs in with its route");
    tokio::spawn(connection);
    let baseline: String = client
        .query_one(
            "SELECT value FROM silo_tenant_info WHERE key = 'schema_baseline'",
            &[],
        )
        .await
        .expect("tenant schema present")
        .get(0);
    assert_eq!(baseline, "1");
}
