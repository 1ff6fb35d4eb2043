//! Circuit breaking per upstream: `consecutive_failures` failures in a row open the circuit
//! for `open`; then one request probes the upstream (half-open) while the others still fail
//! fast, and its success closes the circuit, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcpgate_crds::gateway_config::CircuitBreaker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; none other goes until it reports.
    HalfOpen,
}

/// The circuit of one upstream.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreaker,
    state: Mutex<State>,
}

/// What became of a request the breaker let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (anything but a 5xx).
    Success,
    /// No connection, no answer in time, or a 5xx.
    Failure,
    /// Neither: the request was given up before it ended (the caller went away).
    Abandoned,
}

/// A change of state worth telling (logged and counted by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The circuit opened.
    Opened,
    /// A probe succeeded and the circuit closed.
    Closed,
}

impl Breaker {
    /// A closed circuit.
    pub fn new(config: CircuitBreaker) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> CircuitBreaker {
        self.config
    }

    fn open_for(&self) -> Duration {
        Duration::from_millis(self.config.open_ms.max(1))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request may go now: Ok(true) when it is the half-open probe, Err with how
    /// long the circuit stays open (zero while a probe is out).
    pub fn admit(&self) -> Result<bool, Duration> {
        let now = Instant::now();
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Ok(false),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *state = State::HalfOpen;
                Ok(true)
            }
            State::HalfOpen => Err(Duration::ZERO),
        }
    }

    /// Records what became of a request [`Self::admit`] let through (`probe` as it said).
    pub fn report(&self, probe: bool, outcome: Outcome) -> Option<Transition> {
        let mut state = self.state();
        match (*state, outcome) {
            (State::HalfOpen, Outcome::Success) if probe => {
                *state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (State::HalfOpen, Outcome::Failure) if probe => {
                *state = State::Open {
                    until: Instant::now() + self.open_for(),
                };
                Some(Transition::Opened)
            }
            // A probe given up lets the next request probe.
            (State::HalfOpen, Outcome::Abandoned) if probe => {
                *state = State::Open {
                    until: Instant::now(),
                };
                None
            }
            (State::Closed { .. }, Outcome::Success) => {
                *state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, Outcome::Failure) => {
                let failures = failures + 1;
                if failures >= self.config.consecutive_failures {
                    *state = State::Open {
                        until: Instant::now() + self.open_for(),
                    };
                    Some(Transition::Opened)
                } else {
                    *state = State::Closed { failures };
                    None
                }
            }
            // Requests that went before the circuit opened, ending after: they change nothing.
            _ => None,
        }
    }

    /// Whether the circuit is open (or probing) now.
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> Breaker {
        Breaker::new(CircuitBreaker {
            consecutive_failures: failures,
            open_ms,
        })
    }

    #[test]
    fn failures_in_a_row_open_it_and_a_success_between_resets_the_count() {
        let b = breaker(3, 60_000);
        for _ in 0..2 {
            assert_eq!(b.admit(), Ok(false));
            assert_eq!(b.report(false, Outcome::Failure), None);
        }
        b.report(false, Outcome::Success);
        for _ in 0..2 {
            b.report(false, Outcome::Failure);
        }
        assert!(!b.is_open());
        assert_eq!(b.report(false, Outcome::Failure), Some(Transition::Opened));
        let wait = b.admit().unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_it_or_opens_it_again() {
        let b = breaker(1, 20);
        b.report(false, Outcome::Failure);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            b.admit(),
            Ok(true),
            "the first request after the cool-down probes"
        );
        assert_eq!(b.admit(), Err(Duration::ZERO), "only one probe at a time");
        assert_eq!(b.report(true, Outcome::Failure), Some(Transition::Opened));
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Ok(true));
        assert_eq!(b.report(true, Outcome::Success), Some(Transition::Closed));
        assert_eq!(b.admit(), Ok(false));
        assert!(!b.is_open());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = breaker(1, 1);
        b.report(false, Outcome::Failure);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.admit(), Ok(true));
        assert_eq!(b.report(true, Outcome::Abandoned), None);
        assert_eq!(b.admit(), Ok(true));
    }

    #[test]
    fn late_answers_of_requests_sent_before_it_opened_change_nothing() {
        let b = breaker(1, 60_000);
        b.report(false, Outcome::Failure);
        assert_eq!(b.report(false, Outcome::Success), None);
        assert!(b.is_open());
    }
}
