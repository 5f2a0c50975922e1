//! A limit on how often one kind of log line is written: at most one per interval, the lines held
//! back counted and reported with the next one written. The policy keeps one per backend for its
//! "backend call failed" warning, so a backend failing a thousand calls a second costs one line a
//! second that still says how many failed.
//!
//! Time is tokio's clock (`tokio::time::Instant`), so a test can drive a policy under paused time
//! and know exactly which failures fall in one interval.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::lock;

/// At most one line per `every`. `Send + Sync`; one per backend.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was written; `None` before the first.
    last: Option<Instant>,
    /// Lines held back since then.
    suppressed: u64,
}

impl LogLimit {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a line may be written now: `Some(n)` — write it, saying `n` lines were held back
    /// since the last one; `None` — hold it back (it is counted for the next line).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`Self::admit`] at a given instant (tests).
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = lock(&self.state);
        match s.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                s.suppressed = s.suppressed.saturating_add(1);
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_says_how_many_were_held_back() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0), "the first line is written");
        let held = (1..100)
            .filter(|i| {
                limit
                    .admit_at(t0 + Duration::from_millis(*i * 10 % 1000))
                    .is_none()
            })
            .count();
        assert_eq!(held, 99, "everything else within the second is held back");
        assert_eq!(
            limit.admit_at(t0 + Duration::from_secs(1)),
            Some(99),
            "the next line counts them"
        );
        assert_eq!(limit.admit_at(t0 + Duration::from_millis(1500)), None);
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(5)), Some(1));
        assert_eq!(
            limit.admit_at(t0 + Duration::from_secs(6)),
            Some(0),
            "the count restarts after each line"
        );
    }
}
