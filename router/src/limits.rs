//! Fairness: each tenant's call rate (token bucket) and concurrent calls, from its tier.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tenant::TierLimits;

/// A call the tenant's limits refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("tenant call rate limit reached")]
    /// Over the tier's calls per second (its token bucket is empty).
    Rate {
        /// When the bucket has a token again; sent to the caller as `retry-after-ms`.
        retry_after: Duration,
    },
    /// As many calls as the tier allows are already running.
    #[error("tenant concurrent call limit reached")]
    Concurrency,
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// One tenant's limits. A rate or concurrency of 0 means unlimited.
pub struct TenantLimiter {
    rate_per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    calls: Option<Arc<Semaphore>>,
}

impl TenantLimiter {
    /// A limiter for a tier's rate, burst and concurrency; 0 means unlimited.
    pub fn new(limits: &TierLimits) -> Self {
        let burst = f64::from(limits.burst.max(1));
        Self {
            rate_per_second: f64::from(limits.rate_per_second),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled_at: Instant::now(),
            }),
            calls: (limits.max_concurrent_calls > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_concurrent_calls as usize))),
        }
    }

    /// Admits one call: takes a token and a concurrency slot (held by the permit).
    pub fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, LimitError> {
        if self.rate_per_second > 0.0 {
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate_per_second).min(self.burst);
            bucket.refilled_at = now;
            if bucket.tokens < 1.0 {
                let wait = (1.0 - bucket.tokens) / self.rate_per_second;
                return Err(LimitError::Rate {
                    retry_after: Duration::from_secs_f64(wait),
                });
            }
            bucket.tokens -= 1.0;
        }
        match &self.calls {
            None => Ok(None),
            Some(calls) => calls
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| LimitError::Concurrency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, concurrent: u32) -> TierLimits {
        TierLimits {
            rate_per_second: rate,
            burst,
            max_concurrent_calls: concurrent,
            ..TierLimits::default()
        }
    }

    #[test]
    fn the_bucket_admits_a_burst_then_refuses_with_a_wait() {
        let limiter = TenantLimiter::new(&limits(10, 3, 0));
        for _ in 0..3 {
            assert!(limiter.admit().is_ok());
        }
        match limiter.admit() {
            Err(LimitError::Rate { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
            }
            other => panic!("expected a rate error, got {other:?}"),
        }
    }

    #[test]
    fn concurrency_is_capped_while_permits_are_held() {
        let limiter = TenantLimiter::new(&limits(0, 0, 2));
        let first = limiter.admit().expect("admitted");
        let _second = limiter.admit().expect("admitted");
        assert_eq!(limiter.admit().err(), Some(LimitError::Concurrency));
        drop(first);
        assert!(limiter.admit().is_ok());
    }
}
