//! [`Breaker`]: a circuit breaker in front of the control plane, so that while it cannot be
//! reached the router does not try to connect once per call.
//!
//! Closed, every resolution goes through. A resolution that fails because the control
//! plane is unreachable opens the breaker for an interval (250 ms, doubling to 1 s while
//! failures go on); while open, resolutions fail at once. When the interval has passed,
//! one resolution at a time goes through as a probe (half-open): its success closes the
//! breaker, its failure opens it again. The tenant-event stream reports its own
//! connection too: a stream that is up closes the breaker at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const OPEN_FIRST: Duration = Duration::from_millis(250);
const OPEN_MAX: Duration = Duration::from_secs(1);

/// A circuit breaker for ResolveTenant: after a failure it refuses calls for 250 ms,
/// doubling per failure in a row up to 1 s, so unknown tenants fail fast while the control
/// plane is down.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Failures in a row.
    failures: u32,
    /// Open until then.
    open_until: Option<Instant>,
    /// A probe is out (half-open).
    probing: bool,
}

/// Leave to make one resolution; report how it went.
#[must_use]
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    /// Leave to resolve now, or `None` while the breaker is open (or a probe is out).
    pub fn admit(&self) -> Option<Attempt<'_>> {
        let mut state = self.state.lock().ok()?;
        let probe = match state.open_until {
            None => false,
            Some(until) if Instant::now() < until || state.probing => return None,
            Some(_) => {
                state.probing = true;
                true
            }
        };
        Some(Attempt {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Whether resolutions are refused right now.
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|state| state.open_until.is_some())
            .unwrap_or(false)
    }

    /// The control plane answered (a resolution, or the event stream is up).
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = State::default();
        }
    }

    fn open(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.failures = state.failures.saturating_add(1);
            let interval = OPEN_FIRST
                .saturating_mul(1 << state.failures.min(8).saturating_sub(1))
                .min(OPEN_MAX);
            state.open_until = Some(Instant::now() + interval);
            state.probing = false;
        }
    }
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.close();
    }

    /// The control plane could not be reached.
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.open();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        // A probe dropped unreported (its call was cancelled) frees the half-open slot.
        if self.probe
            && !self.reported
            && let Ok(mut state) = self.breaker.state.lock()
        {
            state.probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_lets_one_probe_through_and_closes_on_success() {
        let breaker = Breaker::default();
        breaker.admit().expect("closed").failed();
        assert!(breaker.admit().is_none(), "open");
        std::thread::sleep(OPEN_FIRST + Duration::from_millis(20));
        let probe = breaker.admit().expect("half-open: one probe");
        assert!(breaker.admit().is_none(), "only one probe at a time");
        probe.failed();
        assert!(breaker.admit().is_none(), "open again, for longer");
        std::thread::sleep((OPEN_FIRST * 2).min(OPEN_MAX) + Duration::from_millis(20));
        breaker.admit().expect("probe").succeeded();
        assert!(!breaker.is_open());
        breaker.admit().expect("closed").succeeded();
    }

    #[test]
    fn a_cancelled_probe_frees_the_slot() {
        let breaker = Breaker::default();
        breaker.admit().expect("closed").failed();
        std::thread::sleep(OPEN_FIRST + Duration::from_millis(20));
        drop(breaker.admit().expect("probe"));
        assert!(breaker.admit().is_some(), "another probe may go");
    }
}
