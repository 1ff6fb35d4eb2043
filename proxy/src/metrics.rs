//! Prometheus metrics of the proxy (prefix `mcpgate_`).

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// What `/metrics` encodes.
    pub registry: Registry,
    /// The name of every metric family registered (alerts and dashboards may query these).
    pub names: Vec<String>,
    /// 1 when the last configuration load succeeded.
    pub config_synchronized: IntGauge,
    /// Configuration loads by outcome.
    pub config_reloads: IntCounterVec,
    /// Proxied requests by route kind, method and status class.
    pub requests: IntCounterVec,
    /// Proxied request latency to the first response byte.
    pub latency: HistogramVec,
    /// Refused bearer tokens by reason (a fixed set).
    pub auth_failures: IntCounterVec,
    /// Authenticated requests refused because no collaborator grants access, by route.
    pub access_denied: IntCounterVec,
    /// Tool calls by namespace, server, tool and outcome.
    pub tool_calls: IntCounterVec,
    /// Tool call latency to the answer, by namespace, server, tool and outcome.
    pub tool_call_duration: HistogramVec,
    /// Audit records dropped because the writer fell behind.
    pub audit_dropped: IntCounter,
    /// Requests whose handling panicked (answered 500, or their response body cut short).
    pub request_panics: IntCounter,
    /// Open connections on the MCP port.
    pub connections: IntGauge,
    /// Connections and requests refused with 503 because a limit was reached, by limit.
    pub refused: IntCounterVec,
    /// Tool census listings by outcome (recorded, unchanged, unrecordable, failed).
    pub tool_census: IntCounterVec,
    /// Tool calls refused with 429, by server and budget (perServer, perUser, perTool).
    pub rate_limited: IntCounterVec,
    /// Upstream requests sent again, by server and outcome (sent, budget_spent).
    pub upstream_retries: IntCounterVec,
    /// 1 while a server's circuit is open (or probing).
    pub circuit_open: IntGaugeVec,
    /// Requests failed at once because the server's circuit was open, by server.
    pub circuit_rejected: IntCounterVec,
    /// Requests the gateway answered with an error of its own, by kind.
    pub errors: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let mut m = Self {
            registry: Registry::new(),
            names: Vec::new(),
            config_synchronized: IntGauge::new(
                "mcpgate_config_synchronized",
                "1 when the last configuration load succeeded",
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "mcpgate_config_reloads_total",
                    "Configuration loads by outcome",
                ),
                &["outcome"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "mcpgate_http_requests_total",
                    "Requests by HTTP method and status",
                ),
                &["method", "status"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "mcpgate_upstream_latency_seconds",
                    "Time to the upstream's response headers",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
                &["method"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "mcpgate_auth_failures_total",
                    "Requests refused for their bearer token, by reason",
                ),
                &["reason"],
            )?,
            access_denied: IntCounterVec::new(
                Opts::new(
                    "mcpgate_access_denied_total",
                    "Authenticated requests refused because no collaborator grants access",
                ),
                &["server_namespace", "server"],
            )?,
            tool_calls: IntCounterVec::new(
                Opts::new(
                    "mcpgate_tool_calls_total",
                    "Tool calls by server (its namespace and name), tool and outcome",
                ),
                &["server_namespace", "server", "tool", "outcome"],
            )?,
            tool_call_duration: HistogramVec::new(
                HistogramOpts::new(
                    "mcpgate_tool_call_duration_seconds",
                    "Tool call latency to the answer",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
                ]),
                &["server_namespace", "server", "tool", "outcome"],
            )?,
            audit_dropped: IntCounter::new(
                "mcpgate_audit_records_dropped_total",
                "Audit records dropped because the audit log writer fell behind",
            )?,
            request_panics: IntCounter::new(
                "mcpgate_request_panics_total",
                "Requests whose handling panicked in the gateway (answered 500, or their response body cut short)",
            )?,
            connections: IntGauge::new(
                "mcpgate_connections_open",
                "Open connections on the MCP port",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "mcpgate_refused_total",
                    "Connections and requests answered 503 because the gateway was at a limit",
                ),
                &["limit"],
            )?,
            tool_census: IntCounterVec::new(
                Opts::new(
                    "mcpgate_tool_census_total",
                    "Servers whose tools the proxy listed for the operator, by outcome",
                ),
                &["outcome"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "mcpgate_rate_limited_total",
                    "Tool calls refused with 429 because a budget of spec.rateLimits was spent, by server and budget",
                ),
                &["server_namespace", "server", "limit"],
            )?,
            upstream_retries: IntCounterVec::new(
                Opts::new(
                    "mcpgate_upstream_retries_total",
                    "Upstream requests sent again after a failure (sent), or not because the retry budget was spent (budget_spent)",
                ),
                &["server_namespace", "server", "outcome"],
            )?,
            circuit_open: IntGaugeVec::new(
                Opts::new(
                    "mcpgate_circuit_open",
                    "1 while a server's circuit is open or probing, 0 while closed",
                ),
                &["server_namespace", "server"],
            )?,
            circuit_rejected: IntCounterVec::new(
                Opts::new(
                    "mcpgate_circuit_rejected_total",
                    "Requests failed at once because the server's circuit was open",
                ),
                &["server_namespace", "server"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "mcpgate_errors_total",
                    "Requests the gateway answered with an error of its own (refused, failed upstream, ...), by kind",
                ),
                &["kind"],
            )?,
        };
        let collectors: [Box<dyn Collector>; 18] = [
            Box::new(m.config_synchronized.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.latency.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.access_denied.clone()),
            Box::new(m.tool_calls.clone()),
            Box::new(m.tool_call_duration.clone()),
            Box::new(m.audit_dropped.clone()),
            Box::new(m.request_panics.clone()),
            Box::new(m.connections.clone()),
            Box::new(m.refused.clone()),
            Box::new(m.tool_census.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.upstream_retries.clone()),
            Box::new(m.circuit_open.clone()),
            Box::new(m.circuit_rejected.clone()),
            Box::new(m.errors.clone()),
        ];
        for collector in collectors {
            m.names
                .extend(collector.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(collector)?;
        }
        Ok(m)
    }
}
