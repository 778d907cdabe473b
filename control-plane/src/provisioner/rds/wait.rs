//! silo's own wait for `available`: one describe per call, the delay until the next one
//! returned to the onboarding loop (which persists nothing until the instance is ready, so
//! a restarted control plane simply polls the same instance again).

use super::{
    RdsDetails, RdsProvisioner,
    status::{InstanceStatus, classify, poll_delay},
    tenant_tag,
};
use crate::{
    catalog::Placement,
    provisioner::{Availability, ProvisionError},
};

impl RdsProvisioner {
    pub(super) async fn poll(
        &self,
        placement: &Placement,
    ) -> Result<(Availability, Placement), ProvisionError> {
        let mut details = RdsDetails::from_placement(placement)?;
        let timing = self.inner.timing;
        let elapsed = details.since_created();
        let retry_after = poll_delay(elapsed, timing.min, timing.max);
        let waiting = |status: String| Availability::Waiting {
            status,
            retry_after,
        };
        let Some(instance) = self.describe(&details.instance_id).await? else {
            if elapsed.is_none_or(|e| e < timing.not_found_grace) {
                let status = format!("RDS does not show instance {} yet", details.instance_id);
                return Ok((waiting(status), placement.clone()));
            }
            tracing::warn!(instance_id = %details.instance_id, "rds instance vanished; creating it again");
            details.created_at = None;
            self.ensure_instance(&mut details).await?;
            let status = format!(
                "instance {} was gone; created it again",
                details.instance_id
            );
            return Ok((waiting(status), placement.clone()));
        };
        if tenant_tag(&instance) != Some(details.tenant_id.as_str()) {
            return Err(ProvisionError::Permanent(format!(
                "RDS instance {} no longer carries this tenant's tag; left untouched",
                details.instance_id
            )));
        }
        let status = instance.db_instance_status().unwrap_or("unknown");
        match classify(status) {
            InstanceStatus::Transitional => Ok((
                waiting(format!("instance {} is {status}", details.instance_id)),
                placement.clone(),
            )),
            InstanceStatus::Failed { reason } => Err(ProvisionError::Permanent(format!(
                "RDS instance {}: {reason}",
                details.instance_id
            ))),
            InstanceStatus::Available => {
                let endpoint = instance.endpoint().and_then(|e| {
                    let port = u16::try_from(e.port()?).ok()?;
                    Some((e.address()?.to_owned(), port))
                });
                let Some((host, port)) = endpoint else {
                    let status = format!("instance {} has no endpoint yet", details.instance_id);
                    return Ok((waiting(status), placement.clone()));
                };
                if let Some(arn) = instance.master_user_secret().and_then(|s| s.secret_arn()) {
                    details.master_secret_arn = Some(arn.to_owned());
                }
                details.rds_endpoint = Some(format!("{host}:{port}"));
                let (host, port) = self.rewrite(&host, port);
                Ok((Availability::Ready, details.into_placement(host, port)?))
            }
        }
    }
}
