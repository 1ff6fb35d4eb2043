//! Retries: which requests may be sent again, how long to wait, and the budget that keeps
//! retries from multiplying the load on an upstream that is already failing.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use mcpgate_crds::gateway_config::Retry;
use serde_json::Value;

use crate::mcp::message::{Envelope, Kind};

/// JSON-RPC requests that only read or set state idempotently: sent twice, they do what
/// they did once.
const IDEMPOTENT_METHODS: [&str; 12] = [
    "initialize",
    "ping",
    "tools/list",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
];

/// Retries a budget always allows per second, so a quiet server can still retry.
const MIN_PER_SECOND: f64 = 1.0;
/// The most retries a budget holds for a burst.
const MOST_SAVED: f64 = 100.0;
/// What a new budget holds.
const FIRST_SAVED: f64 = 10.0;

/// The retry budget of one server: each request adds `percent`/100 of a retry, each retry
/// spends one, and [`MIN_PER_SECOND`] come back every second regardless.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    /// A budget of `percent` of requests.
    pub fn new(percent: u32) -> Self {
        Self {
            ratio: f64::from(percent.clamp(1, 100)) / 100.0,
            state: Mutex::new((FIRST_SAVED, Instant::now())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (saved, at) = &mut *state;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *saved = (*saved + elapsed * MIN_PER_SECOND).min(MOST_SAVED);
        *at = now;
        f(saved)
    }

    /// A first attempt went out.
    pub fn deposit(&self) {
        self.with(|saved| *saved = (*saved + self.ratio).min(MOST_SAVED));
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.with(|saved| {
            if *saved >= 1.0 {
                *saved -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

/// The wait before retry `n` (1 for the first): `base` doubled each time, at most 30 s,
/// with "equal jitter" (half fixed, half random) so callers that failed together do not
/// come back together.
pub fn backoff(base: Duration, n: u32) -> Duration {
    let full = base
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(Duration::from_secs(30));
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// The tools of one server its upstream says may be called twice safely
/// (`annotations.idempotentHint` or `annotations.readOnlyHint`), as last listed.
#[derive(Debug, Default)]
pub struct Hints(RwLock<HashSet<String>>);

impl Hints {
    /// Notes the tools of one `tools/list` page (tool objects as the upstream sent them).
    pub fn learn(&self, tools: &[Value]) {
        let mut safe = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let hint = |key| {
                tool.pointer(&format!("/annotations/{key}"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            };
            if hint("idempotentHint") || hint("readOnlyHint") {
                safe.insert(name.to_owned());
            } else {
                safe.remove(name);
            }
        }
    }

    fn safe(&self, tool: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(tool)
    }
}

/// Whether a request with `method` and `body` may be sent again after the upstream answered
/// 502, 503 or 504 (it may have acted on it): streams and session ends may; a JSON-RPC
/// request may when its method only reads, or it calls a tool `hints` says is safe;
/// notifications may; responses to the upstream's own requests may not.
pub fn resendable(method: &http::Method, body: &[u8], hints: &Hints) -> bool {
    if *method != http::Method::POST {
        return true;
    }
    let Ok(envelope) = Envelope::parse(body) else {
        return false;
    };
    match envelope.kind() {
        Kind::Notification => true,
        Kind::Request if envelope.method() == "tools/call" => hints.safe(envelope.name()),
        Kind::Request => IDEMPOTENT_METHODS.contains(&envelope.method()),
        Kind::Response | Kind::Invalid => false,
    }
}

/// The settings and state of retries on one server.
#[derive(Debug)]
pub struct Retries {
    /// As configured.
    pub config: Retry,
    /// Spent by retries.
    pub budget: Budget,
    /// Which tools may be called twice.
    pub hints: Hints,
}

impl Retries {
    /// Retries as `config` says, with a fresh budget.
    pub fn new(config: &Retry) -> Self {
        Self {
            budget: Budget::new(config.budget_percent),
            config: config.clone(),
            hints: Hints::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_budget_allows_its_share_of_requests() {
        let budget = Budget::new(20);
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                allowed += 1;
            }
        }
        // 10 saved at the start, 0.2 per request, and the second's refill while this ran.
        assert!((210..=212).contains(&allowed), "{allowed}");
        assert!(!budget.withdraw());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for n in 1..=4 {
            let full = base * (1 << (n - 1));
            let wait = backoff(base, n);
            assert!(wait >= full / 2 && wait <= full, "{n}: {wait:?}");
        }
        assert!(backoff(base, 40) <= Duration::from_secs(30));
    }

    #[test]
    fn only_requests_that_cannot_act_twice_are_resent() {
        let hints = Hints::default();
        hints.learn(&[
            json!({"name": "get", "annotations": {"readOnlyHint": true}}),
            json!({"name": "put", "annotations": {"idempotentHint": true}}),
            json!({"name": "send", "annotations": {"idempotentHint": false}}),
            json!({"name": "bare"}),
        ]);
        let post =
            |body: Value| resendable(&http::Method::POST, body.to_string().as_bytes(), &hints);
        let call = |name| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}});
        assert!(post(call("get")));
        assert!(post(call("put")));
        assert!(!post(call("send")));
        assert!(!post(call("bare")));
        assert!(!post(call("never-listed")));
        assert!(post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        ));
        assert!(post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ));
        assert!(!post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "vendor/doSomething"})
        ));
        assert!(!post(json!({"jsonrpc": "2.0", "id": 1, "result": {}})));
        assert!(resendable(&http::Method::GET, b"", &hints));
        // A tool the upstream lists again without its hint is no longer resent.
        hints.learn(&[json!({"name": "put"})]);
        assert!(!post(call("put")));
    }
}
