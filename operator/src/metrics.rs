//! Prometheus metrics of the operator (prefix `mcpgate_operator_`).

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// The name of every metric family registered (alerts and dashboards may query these).
    pub names: Vec<String>,
    /// Reconciles run.
    pub reconciles: IntCounter,
    /// Reconciles that failed, by what failed.
    pub failures: IntCounterVec,
    /// How long a reconcile took.
    pub duration: Histogram,
    /// Objects the operator currently manages, by kind.
    pub managed_objects: IntGaugeVec,
    /// API writes, by kind and operation; zero when nothing changed.
    pub writes: IntCounterVec,
    /// 1 while this replica holds the lease.
    pub leader: IntGauge,
    /// Resources per condition outcome (`ready`/`not_ready`), by kind.
    pub resources: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let mut m = Self {
            reconciles: IntCounter::new("mcpgate_operator_reconciles_total", "Reconciles run")?,
            failures: IntCounterVec::new(
                Opts::new(
                    "mcpgate_operator_reconcile_failures_total",
                    "Reconciles that failed, by what failed",
                ),
                &["reason"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "mcpgate_operator_reconcile_duration_seconds",
                    "Time to render and apply",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            managed_objects: IntGaugeVec::new(
                Opts::new(
                    "mcpgate_operator_managed_objects",
                    "Objects written and kept in sync, by kind",
                ),
                &["kind"],
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "mcpgate_operator_writes_total",
                    "API writes, by kind and operation",
                ),
                &["kind", "op"],
            )?,
            leader: IntGauge::new(
                "mcpgate_operator_leader",
                "1 while this replica holds the lease",
            )?,
            resources: IntGaugeVec::new(
                Opts::new(
                    "mcpgate_operator_resources",
                    "mcpgate resources by kind and readiness",
                ),
                &["kind", "ready"],
            )?,
            registry,
            names: Vec::new(),
        };
        let collectors: [Box<dyn Collector>; 7] = [
            Box::new(m.reconciles.clone()),
            Box::new(m.failures.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.managed_objects.clone()),
            Box::new(m.writes.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.resources.clone()),
        ];
        for collector in collectors {
            m.names
                .extend(collector.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(collector)?;
        }
        Ok(m)
    }

    /// Counts one API write.
    pub fn write(&self, kind: &str, op: &str) {
        self.writes.with_label_values(&[kind, op]).inc();
    }
}
