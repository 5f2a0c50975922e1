//! The four algorithms as pure functions of a key's state, the time and the cost: what the
//! in-process store runs under a key's lock, and what the Redis scripts (`super::redis`) mirror
//! operation for operation. Both use f64 arithmetic on integer microseconds in the same order,
//! so for the same sequence of times and costs they reach the same decisions (Lua has only
//! doubles; times below 2^53 µs and counts below 10^9 are exact).
//!
//! Decisions are two-phase: [`evaluate`] says what would happen and what the state would become;
//! the store writes the new state only when every policy of the request admitted it, so a
//! request refused by one policy takes nothing from the others.

use super::Params;
use crate::config::Algorithm;

/// A key's state. `None` in the store = never seen (or forgotten: equivalent to fresh).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum State {
    /// Token bucket: tokens left at `at`.
    Tokens { tokens: f64, at: i64 },
    /// GCRA: the theoretical arrival time of the next unit (µs).
    Tat(f64),
    /// Fixed window: units counted in window number `window`.
    Fixed { window: i64, count: f64 },
    /// Sliding window: units in window `window` and in the one before it.
    Sliding { window: i64, curr: f64, prev: f64 },
}

/// One policy's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether this policy admits the request.
    pub allowed: bool,
    /// Units left after this decision (rounded down).
    pub remaining: u64,
    /// Microseconds until the quota is whole again (bucket full, window over).
    pub reset_us: i64,
    /// When refused: microseconds until a request of this cost could be admitted.
    pub retry_us: i64,
}

/// What a decision would do: the verdict, and the state to store if every policy admits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub(crate) verdict: Verdict,
    pub(crate) next: Option<State>,
}

fn ceil_us(x: f64) -> i64 {
    // Saturating: a float beyond i64 (never expected with validated settings) stays finite.
    x.ceil().max(0.0) as i64
}

fn floor_units(x: f64) -> u64 {
    x.floor().max(0.0) as u64
}

/// Decides one request of `cost` units at `now` (µs) for a key in `state`.
pub(crate) fn evaluate(p: &Params, state: Option<State>, now: i64, cost: u64) -> Step {
    let (l, per, b, c, t) = (
        p.limit as f64,
        p.period_us as f64,
        p.burst as f64,
        cost as f64,
        now as f64,
    );
    match p.algorithm {
        Algorithm::TokenBucket => {
            let (mut tokens, at) = match state {
                Some(State::Tokens { tokens, at }) => (tokens, at as f64),
                _ => (b, t),
            };
            let mut elapsed = t - at;
            if elapsed < 0.0 {
                elapsed = 0.0;
            }
            tokens += elapsed * l / per;
            if tokens > b {
                tokens = b;
            }
            if c > b {
                return refused(floor_units(tokens), ceil_us((b - tokens) * per / l), per);
            }
            if tokens >= c {
                tokens -= c;
                admitted(
                    floor_units(tokens),
                    ceil_us((b - tokens) * per / l),
                    State::Tokens { tokens, at: now },
                )
            } else {
                refused(
                    floor_units(tokens),
                    ceil_us((b - tokens) * per / l),
                    (c - tokens) * per / l,
                )
            }
        }
        Algorithm::LeakyBucket => {
            let interval = per / l;
            let mut tat = match state {
                Some(State::Tat(tat)) => tat,
                _ => t,
            };
            if tat < t {
                tat = t;
            }
            let new_tat = tat + c * interval;
            let allow_at = new_tat - b * interval;
            if c > b {
                return refused(
                    floor_units((b * interval - (tat - t)) / interval),
                    ceil_us(tat - t),
                    per,
                );
            }
            if allow_at <= t {
                admitted(
                    floor_units((b * interval - (new_tat - t)) / interval),
                    ceil_us(new_tat - t),
                    State::Tat(new_tat),
                )
            } else {
                refused(
                    floor_units((b * interval - (tat - t)) / interval),
                    ceil_us(tat - t),
                    allow_at - t,
                )
            }
        }
        Algorithm::FixedWindow => {
            let window = (t / per).floor();
            let count = match state {
                Some(State::Fixed { window: w, count }) if w as f64 == window => count,
                _ => 0.0,
            };
            let reset = (window + 1.0) * per - t;
            if c > l {
                return refused(floor_units(l - count), ceil_us(reset), per);
            }
            if count + c <= l {
                admitted(
                    floor_units(l - count - c),
                    ceil_us(reset),
                    State::Fixed {
                        window: window as i64,
                        count: count + c,
                    },
                )
            } else {
                refused(floor_units(l - count), ceil_us(reset), reset)
            }
        }
        Algorithm::SlidingWindow => {
            let window = (t / per).floor();
            let (curr, prev) = match state {
                Some(State::Sliding {
                    window: w,
                    curr,
                    prev,
                }) => {
                    let w = w as f64;
                    if w == window {
                        (curr, prev)
                    } else if w == window - 1.0 {
                        (0.0, curr)
                    } else {
                        (0.0, 0.0)
                    }
                }
                _ => (0.0, 0.0),
            };
            let elapsed = t - window * per;
            let estimate = prev * ((per - elapsed) / per) + curr;
            let reset = per - elapsed;
            if c > l {
                return refused(floor_units(l - estimate), ceil_us(reset), per);
            }
            if estimate + c <= l {
                admitted(
                    floor_units(l - estimate - c),
                    ceil_us(reset),
                    State::Sliding {
                        window: window as i64,
                        curr: curr + c,
                        prev,
                    },
                )
            } else {
                // When would the weighted estimate leave room: later in this window (the
                // previous window's share decays), or in the next one (this one's does)?
                let wait = if curr + c <= l {
                    (per - (l - c - curr) * per / prev) - elapsed
                } else if curr > 0.0 {
                    reset + (per - (l - c) * per / curr)
                } else {
                    reset
                };
                refused(floor_units(l - estimate), ceil_us(reset), wait)
            }
        }
    }
}

fn admitted(remaining: u64, reset_us: i64, next: State) -> Step {
    Step {
        verdict: Verdict {
            allowed: true,
            remaining,
            reset_us,
            retry_us: 0,
        },
        next: Some(next),
    }
}

fn refused(remaining: u64, reset_us: i64, wait: f64) -> Step {
    Step {
        verdict: Verdict {
            allowed: false,
            remaining,
            reset_us,
            // At least a microsecond: a refusal always says to wait.
            retry_us: ceil_us(wait).max(1),
        },
        next: None,
    }
}

/// How long an idle key takes to be equivalent to a fresh one (the in-process store forgets it
/// after this much idleness; Redis keys expire after it).
pub(crate) fn forget_after_us(p: &Params) -> i64 {
    match p.algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            ceil_us(p.burst as f64 * p.period_us as f64 / p.limit as f64)
        }
        Algorithm::FixedWindow => p.period_us,
        Algorithm::SlidingWindow => 2 * p.period_us,
    }
}
