//! What an RDS instance status means for onboarding, and how often to ask again. The SDK's
//! waiter is not used: it keeps polling `storage-full` and `insufficient-capacity` forever
//! and gives up on a NotFound right after create.

use std::time::Duration;

/// An instance status, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    /// `available`: the instance takes connections.
    Available,
    /// On its way (creating, backing-up, modifying, configuring-*, ...): ask again later.
    Transitional,
    /// Will not become available without an operator: the tenant goes to FAILED.
    Failed {
        /// The status RDS reported, and what it means for the tenant.
        reason: String,
    },
}

/// Classifies a `DBInstanceStatus`. Unknown statuses count as transitional: RDS adds
/// statuses over time, and a new one is far more likely a passing state than a dead end.
pub fn classify(status: &str) -> InstanceStatus {
    let failed = |why: &str| InstanceStatus::Failed {
        reason: format!("instance status is {status}: {why}"),
    };
    match status {
        "available" => InstanceStatus::Available,
        "failed" => failed("RDS could not create or recover the instance"),
        "inaccessible-encryption-credentials"
        | "inaccessible-encryption-credentials-recoverable" => {
            failed("RDS cannot use the KMS key; check the key policy and that the key is enabled")
        }
        "insufficient-capacity" => failed(
            "no capacity for this instance class in the availability zone; try another class or AZ",
        ),
        "storage-full" => failed("the instance ran out of allocated storage"),
        "deleting" | "deleted" => failed("the instance is being deleted"),
        other if other.starts_with("incompatible-") => failed(
            "the instance's configuration (network, parameters, option group or restore) is incompatible",
        ),
        _ => InstanceStatus::Transitional,
    }
}

/// The pause before the next status poll: a tenth of the time the instance has been on its
/// way, between `min` and `max` — quick answers for a fast create, few calls for a slow one.
pub fn poll_delay(elapsed: Option<Duration>, min: Duration, max: Duration) -> Duration {
    elapsed.map_or(min, |elapsed| (elapsed / 10).clamp(min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_issue_lists_them() {
        assert_eq!(classify("available"), InstanceStatus::Available);
        for waiting in [
            "creating",
            "backing-up",
            "modifying",
            "configuring-enhanced-monitoring",
            "configuring-log-exports",
            "rebooting",
            "some-new-status",
        ] {
            assert_eq!(classify(waiting), InstanceStatus::Transitional, "{waiting}");
        }
        for dead in [
            "failed",
            "incompatible-network",
            "incompatible-parameters",
            "incompatible-restore",
            "inaccessible-encryption-credentials",
            "insufficient-capacity",
            "storage-full",
        ] {
            match classify(dead) {
                InstanceStatus::Failed { reason } => assert!(reason.contains(dead), "{reason}"),
                other => panic!("{dead}: {other:?}"),
            }
        }
    }

    #[test]
    fn polls_back_off_within_bounds() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(poll_delay(None, min, max), min);
        assert_eq!(poll_delay(Some(Duration::from_secs(10)), min, max), min);
        assert_eq!(
            poll_delay(Some(Duration::from_secs(200)), min, max),
            Duration::from_secs(20)
        );
        assert_eq!(poll_delay(Some(Duration::from_secs(3600)), min, max), max);
    }
}
