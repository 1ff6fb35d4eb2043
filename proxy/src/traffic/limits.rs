//! Budgets of tool calls: token buckets per server, for all callers, for each caller and for
//! each tool that has its own. A call takes one token from every budget that applies, or,
//! when one is spent, from none of them (so a call the server's budget refuses costs the
//! caller nothing). All buckets of a server sit under one lock to make that atomic; crates
//! such as `governor` keep each limiter apart, which cannot give all-or-nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcpgate_crds::gateway_config::{RateLimit, RateLimits};

/// Which budget refused a call (the `limit` label of `mcpgate_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// All callers of the server together.
    Server = 0,
    /// One caller.
    User = 1,
    /// One tool, all callers together.
    Tool = 2,
}

impl Budget {
    /// The metric label, also the `spec.rateLimits` field it comes from.
    pub fn label(self) -> &'static str {
        match self {
            Self::Server => "perServer",
            Self::User => "perUser",
            Self::Tool => "perTool",
        }
    }
}

/// A call over a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    /// Which budget.
    pub budget: Budget,
    /// The budget as configured.
    pub limit: RateLimit,
    /// When the next call would fit, in whole seconds (as `Retry-After` says it), at least 1.
    pub retry_after: Duration,
}

/// A token bucket: `requests` at most, one token back every `period / requests`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.requests),
            at: now,
        }
    }

    /// Tokens back per second.
    fn rate(limit: RateLimit) -> f64 {
        f64::from(limit.requests) / f64::from(limit.period_seconds.max(1))
    }

    /// Tokens now, after refilling since the last look.
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let rate = Self::rate(limit);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limit.requests));
        self.at = now;
    }

    /// Ok when a token is there (not taken yet), else how long until one is.
    fn ready(&self, limit: RateLimit) -> Result<(), Duration> {
        if self.tokens >= 1.0 {
            return Ok(());
        }
        let wait = ((1.0 - self.tokens) / Self::rate(limit)).ceil().max(1.0);
        Err(Duration::from_secs_f64(wait))
    }

    fn is_full(&self, limit: RateLimit) -> bool {
        self.tokens >= f64::from(limit.requests)
    }
}

/// Callers' buckets are dropped once full again (a full bucket is what a new caller gets);
/// once there are this many, the full ones are swept before another is added, so a flood of
/// distinct callers costs time, not unbounded memory.
const SWEEP_AT: usize = 16_384;

#[derive(Debug)]
struct Buckets {
    server: Option<Bucket>,
    tools: Vec<Bucket>,
    users: HashMap<String, Bucket>,
    /// Callers' bucket count at which the next sweep runs.
    sweep_at: usize,
}

/// The budgets of one server.
#[derive(Debug)]
pub struct Limits {
    /// As configured.
    config: RateLimits,
    /// As applied: sorted by tool, no zero.
    rules: RateLimits,
    buckets: Mutex<Buckets>,
}

impl Limits {
    /// The buckets of `limits`, full; None when it sets no budget.
    pub fn new(limits: &RateLimits) -> Option<Self> {
        if limits.is_empty() {
            return None;
        }
        // What the operator renders is sorted and at least 1; a hand-written configuration
        // is made so here, so lookups by tool work and no bucket divides by zero.
        let given = limits.clone();
        let mut limits = limits.clone();
        let sane = |l: &mut RateLimit| {
            l.requests = l.requests.max(1);
            l.period_seconds = l.period_seconds.max(1);
        };
        for limit in [limits.per_user.as_mut(), limits.per_server.as_mut()]
            .into_iter()
            .flatten()
        {
            sane(limit);
        }
        limits.per_tool.iter_mut().for_each(|t| sane(&mut t.limit));
        limits.per_tool.sort_by(|a, b| a.tool.cmp(&b.tool));
        limits.per_tool.dedup_by(|a, b| a.tool == b.tool);
        let limits = &limits;
        let now = Instant::now();
        Some(Self {
            config: given,
            rules: limits.clone(),
            buckets: Mutex::new(Buckets {
                server: limits.per_server.map(|l| Bucket::full(l, now)),
                tools: limits
                    .per_tool
                    .iter()
                    .map(|t| Bucket::full(t.limit, now))
                    .collect(),
                users: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        })
    }

    /// The budgets these buckets were made for.
    pub fn config(&self) -> &RateLimits {
        &self.config
    }

    /// Takes one call of `tool` by `caller` from every budget that applies, or from none and
    /// says which is spent (the widest first: server, tool, caller).
    pub fn take(&self, caller: &str, tool: &str) -> Result<(), Spent> {
        let now = Instant::now();
        let config = &self.rules;
        let mut guard = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let buckets = &mut *guard;
        let spent = |budget, limit, retry_after| Spent {
            budget,
            limit,
            retry_after,
        };
        let mut server = None;
        if let (Some(limit), Some(bucket)) = (config.per_server, buckets.server.as_mut()) {
            bucket.refill(limit, now);
            bucket
                .ready(limit)
                .map_err(|wait| spent(Budget::Server, limit, wait))?;
            server = Some(bucket);
        }
        let mut tool_bucket = None;
        if let Ok(i) = config
            .per_tool
            .binary_search_by(|t| t.tool.as_str().cmp(tool))
        {
            let (limit, bucket) = (config.per_tool[i].limit, &mut buckets.tools[i]);
            bucket.refill(limit, now);
            bucket
                .ready(limit)
                .map_err(|wait| spent(Budget::Tool, limit, wait))?;
            tool_bucket = Some(bucket);
        }
        if let Some(limit) = config.per_user {
            if !buckets.users.contains_key(caller) && buckets.users.len() >= buckets.sweep_at {
                buckets.users.retain(|_, b| {
                    b.refill(limit, now);
                    !b.is_full(limit)
                });
                buckets.sweep_at = (buckets.users.len() * 2).max(SWEEP_AT);
            }
            let bucket = buckets
                .users
                .entry(caller.to_owned())
                .or_insert_with(|| Bucket::full(limit, now));
            bucket.refill(limit, now);
            bucket
                .ready(limit)
                .map_err(|wait| spent(Budget::User, limit, wait))?;
            bucket.tokens -= 1.0;
        }
        for bucket in [server, tool_bucket].into_iter().flatten() {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }

    /// Callers with a bucket of their own.
    #[cfg(test)]
    fn callers(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .users
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgate_crds::gateway_config::ToolRateLimit;

    fn limit(requests: u32, period_seconds: u32) -> RateLimit {
        RateLimit {
            requests,
            period_seconds,
        }
    }

    #[test]
    fn no_budget_no_limits() {
        assert!(Limits::new(&RateLimits::default()).is_none());
    }

    #[test]
    fn each_caller_has_a_budget_of_their_own() {
        let limits = Limits::new(&RateLimits {
            per_user: Some(limit(2, 3600)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(limits.take("alice", "t"), Ok(()));
        assert_eq!(limits.take("alice", "t"), Ok(()));
        let spent = limits.take("alice", "t").unwrap_err();
        assert_eq!(spent.budget, Budget::User);
        assert_eq!(spent.limit, limit(2, 3600));
        // One token back every 1800 s.
        assert!(
            spent.retry_after > Duration::from_secs(1790)
                && spent.retry_after <= Duration::from_secs(1800),
            "{spent:?}"
        );
        assert_eq!(limits.take("bob", "t"), Ok(()));
        assert_eq!(limits.callers(), 2);
    }

    #[test]
    fn a_refused_call_costs_no_other_budget() {
        let limits = Limits::new(&RateLimits {
            per_server: Some(limit(3, 3600)),
            per_user: Some(limit(2, 3600)),
            per_tool: vec![ToolRateLimit {
                tool: "costly".into(),
                limit: limit(1, 3600),
            }],
        })
        .unwrap();
        assert_eq!(limits.take("a", "costly"), Ok(()));
        let spent = limits.take("a", "costly").unwrap_err();
        assert_eq!(spent.budget, Budget::Tool);
        // The refused call spent neither the server's budget nor a's: a has one call left,
        // the server two.
        assert_eq!(limits.take("a", "cheap"), Ok(()));
        assert_eq!(limits.take("a", "cheap").unwrap_err().budget, Budget::User);
        assert_eq!(limits.take("b", "cheap"), Ok(()));
        assert_eq!(
            limits.take("c", "cheap").unwrap_err().budget,
            Budget::Server
        );
    }

    #[test]
    fn short_periods_refill() {
        let limits = Limits::new(&RateLimits {
            per_server: Some(limit(1000, 1)),
            ..Default::default()
        })
        .unwrap();
        for _ in 0..1000 {
            limits.take("a", "t").unwrap();
        }
        let spent = limits.take("a", "t").unwrap_err();
        // Refilled at 1 per ms; Retry-After never says less than a second.
        assert_eq!(spent.retry_after, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(limits.take("a", "t"), Ok(()));
    }

    #[test]
    fn full_caller_buckets_are_swept() {
        let limits = Limits::new(&RateLimits {
            per_user: Some(limit(5, 1)),
            ..Default::default()
        })
        .unwrap();
        for n in 0..SWEEP_AT {
            limits.take(&format!("caller-{n}"), "t").unwrap();
        }
        assert_eq!(limits.callers(), SWEEP_AT);
        // A fifth of a second refills each caller's one token.
        std::thread::sleep(Duration::from_millis(250));
        limits.take("one-more", "t").unwrap();
        assert_eq!(limits.callers(), 1);
    }
}
