//! [`Throttle`]: a warning that can repeat once per call or per retry (an outage, a
//! failing server) is logged at most once per interval, with the count of those held back,
//! instead of flooding the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One call site's log budget: at most one line per `every`.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// A budget of one line per `every`. `const`, so a call site can keep its own in a
    /// `static`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last: None,
                held_back: 0,
            }),
        }
    }

    /// `Some(n)` when this occurrence may be logged, `n` being how many were held back
    /// since the last one logged; `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let now = Instant::now();
        match state.last {
            Some(last) if now.duration_since(last) < self.every => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..9 {
            assert_eq!(throttle.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.allow(), Some(9));
        assert_eq!(throttle.allow(), None);
    }
}
