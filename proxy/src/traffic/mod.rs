//! Traffic policy per upstream server (`McpServer.spec.rateLimits`, `retry`,
//! `circuitBreaker`): budgets of tool calls, retries within a budget, circuit breaking.
//!
//! State lives here, keyed by the server's route path, so it outlasts configuration reloads
//! that leave a server's policy as it was; a changed policy starts afresh. Servers without
//! a policy never reach the table.

pub mod breaker;
pub mod limits;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mcpgate_crds::gateway_config::ServerConfig;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::source::{Current, ServerRoute};
use breaker::{Breaker, Outcome, Transition};
use limits::{Budget, Limits, Spent};
use retry::Retries;

/// The address a request came from (a request extension): on a public server, each address
/// is a caller of its own for `perUser` budgets.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::IpAddr);

/// Whose `perUser` budget a call takes from: the caller's session owner (a digest of their
/// identity), or on a public server their address.
pub fn budget_key(owner: Option<&str>, extensions: &http::Extensions) -> String {
    match (owner, extensions.get::<ClientAddress>()) {
        (Some(owner), _) => owner.to_owned(),
        (None, Some(address)) => address.0.to_string(),
        (None, None) => String::new(),
    }
}

/// The retries `config` asks for; none when it allows no attempt.
fn retries_of(config: &ServerConfig) -> Option<&mcpgate_crds::gateway_config::Retry> {
    config.retry.as_ref().filter(|r| r.attempts > 0)
}

/// A server's counters, labelled once when its policy is made.
#[derive(Debug)]
struct Counters {
    limited: [IntCounter; 3],
    retried: IntCounter,
    retries_refused: IntCounter,
    open: IntGauge,
    rejected: IntCounter,
}

/// The policy of one server, with its state.
#[derive(Debug)]
pub struct Policy {
    /// `namespace/name`.
    server: String,
    /// Budgets of tool calls.
    pub limits: Option<Limits>,
    /// Retries and their budget.
    pub retries: Option<Retries>,
    /// The circuit.
    pub breaker: Option<Breaker>,
    counters: Counters,
}

impl Policy {
    fn new(config: &ServerConfig, metrics: &Metrics) -> Self {
        let labels = |extra: &str| [config.namespace.clone(), config.name.clone(), extra.into()];
        let limited = |budget: Budget| {
            metrics
                .rate_limited
                .with_label_values(&labels(budget.label()))
        };
        let retries = |outcome: &str| metrics.upstream_retries.with_label_values(&labels(outcome));
        let server = [config.namespace.as_str(), config.name.as_str()];
        Self {
            server: format!("{}/{}", config.namespace, config.name),
            limits: Limits::new(&config.rate_limits),
            retries: retries_of(config).map(Retries::new),
            breaker: config.circuit_breaker.map(Breaker::new),
            counters: Counters {
                // Indexed by `Budget as usize`.
                limited: [
                    limited(Budget::Server),
                    limited(Budget::User),
                    limited(Budget::Tool),
                ],
                retried: retries("sent"),
                retries_refused: retries("budget_spent"),
                open: metrics.circuit_open.with_label_values(&server),
                rejected: metrics.circuit_rejected.with_label_values(&server),
            },
        }
    }

    /// Whether this policy was made from `config`'s settings.
    fn made_from(&self, config: &ServerConfig) -> bool {
        self.limits.as_ref().map(Limits::config)
            == Some(&config.rate_limits).filter(|l| !l.is_empty())
            && self.retries.as_ref().map(|r| &r.config) == retries_of(config)
            && self.breaker.as_ref().map(Breaker::config) == config.circuit_breaker
    }

    /// Takes one call of `tool` by `caller` from the server's budgets, or says which is spent.
    pub fn take(&self, caller: &str, tool: &str) -> Result<(), Spent> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        limits.take(caller, tool).inspect_err(|spent| {
            self.counters.limited[spent.budget as usize].inc();
        })
    }

    /// [`Self::take`] for call `id` on `server` (`namespace/name`), refused as the client is
    /// told: 429 with `Retry-After`.
    pub fn take_for(
        &self,
        caller: &str,
        tool: &str,
        id: Option<&serde_json::Value>,
        server: &str,
    ) -> Result<(), crate::error::ProxyError> {
        self.take(caller, tool)
            .map_err(|spent| crate::error::ProxyError::RateLimited {
                id: id.cloned(),
                server: server.to_owned(),
                spent,
            })
    }

    /// Whether a request may go upstream now (see [`Breaker::admit`]); a refusal is counted.
    /// One given up after `timeout` without an answer (its caller's own deadline ran out
    /// first) counts as failed, not abandoned.
    pub fn admit(&self, timeout: Duration) -> Result<Admitted<'_>, Duration> {
        let started = std::time::Instant::now();
        let Some(breaker) = &self.breaker else {
            return Ok(Admitted {
                policy: self,
                probe: false,
                reported: true,
                started,
                timeout,
            });
        };
        match breaker.admit() {
            Ok(probe) => Ok(Admitted {
                policy: self,
                probe,
                reported: false,
                started,
                timeout,
            }),
            Err(wait) => {
                self.counters.rejected.inc();
                Err(wait)
            }
        }
    }

    fn report(&self, probe: bool, outcome: Outcome) {
        let Some(breaker) = &self.breaker else {
            return;
        };
        match breaker.report(probe, outcome) {
            Some(Transition::Opened) => {
                self.counters.open.set(1);
                tracing::warn!(server = %self.server, "circuit opened: calls to this server fail at once until a probe succeeds");
            }
            Some(Transition::Closed) => {
                self.counters.open.set(0);
                tracing::info!(server = %self.server, "circuit closed: the probe succeeded");
            }
            None => {}
        }
    }

    /// Notes which of the tools of a `tools/list` page (as the upstream sent them) may be
    /// called twice, when this server retries.
    pub fn learn(&self, tools: &[serde_json::Value]) {
        if let Some(retries) = &self.retries {
            retries.hints.learn(tools);
        }
    }

    /// Whether this server needs to see its `tools/list` answers (to learn which tools
    /// retries may resend).
    pub fn learns(&self) -> bool {
        self.retries.is_some()
    }

    /// Counts a retry sent, or one the budget refused.
    pub fn count_retry(&self, sent: bool) {
        match sent {
            true => self.counters.retried.inc(),
            false => self.counters.retries_refused.inc(),
        }
    }
}

/// A request the breaker let through; what became of it must be told with
/// [`Admitted::report`], and one dropped untold counts as abandoned.
pub struct Admitted<'a> {
    policy: &'a Policy,
    probe: bool,
    reported: bool,
    started: std::time::Instant,
    timeout: Duration,
}

impl Admitted<'_> {
    /// Records the request's outcome.
    pub fn report(mut self, outcome: Outcome) {
        self.reported = true;
        self.policy.report(self.probe, outcome);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.reported {
            // Given up at (or past) the route's timeout: the upstream did not answer in time.
            let outcome = match self.started.elapsed() >= self.timeout.mul_f64(0.9) {
                true => Outcome::Failure,
                false => Outcome::Abandoned,
            };
            self.policy.report(self.probe, outcome);
        }
    }
}

/// The policies of every server that has one.
pub struct Traffic {
    policies: RwLock<HashMap<String, Arc<Policy>>>,
    metrics: Metrics,
    current: Arc<Current>,
}

impl Traffic {
    /// An empty table; policies are made as servers are first called, and those of servers
    /// no longer in `current` are dropped as others are made.
    pub fn new(metrics: Metrics, current: Arc<Current>) -> Self {
        Self {
            policies: RwLock::default(),
            metrics,
            current,
        }
    }

    /// The policy of `route`, None when it sets none.
    pub fn of(&self, route: &ServerRoute) -> Option<Arc<Policy>> {
        let config = &route.config;
        if retries_of(config).is_none()
            && config.rate_limits.is_empty()
            && config.circuit_breaker.is_none()
        {
            return None;
        }
        let path = &config.path;
        if let Some(policy) = self
            .policies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .filter(|p| p.made_from(config))
        {
            return Some(policy.clone());
        }
        let mut policies = self
            .policies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(policy) = policies.get(path).filter(|p| p.made_from(config)) {
            return Some(policy.clone());
        }
        // A request that began under an older configuration uses the policy in force, so it
        // neither resets nor escapes the budgets of the current one.
        let current = self.current.load();
        let stale = current.as_ref().is_some_and(|snapshot| {
            snapshot
                .route(path)
                .and_then(|route| route.as_server())
                .is_none_or(|route| route.config != *config)
        });
        if stale && let Some(policy) = policies.get(path) {
            return Some(policy.clone());
        }
        if let Some(snapshot) = current {
            policies.retain(|path, _| snapshot.route(path).is_some());
        }
        let policy = Arc::new(Policy::new(config, &self.metrics));
        policy.counters.open.set(0);
        policies.insert(path.clone(), policy.clone());
        Some(policy)
    }
}
