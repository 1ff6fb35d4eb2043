//! Logs and traces for mcpgate's binaries. Logs: text or one JSON object per line on stderr,
//! filtered by `RUST_LOG`. Traces: when an OTLP endpoint is set in the standard environment
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, OTLP over HTTP with
//! protobuf), every span the code opens at the level `RUST_LOG` allows is exported too, with
//! the service name `OTEL_SERVICE_NAME` (default: the binary's); W3C trace context is read
//! from incoming requests and written into outgoing ones.

use http::HeaderMap;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The W3C headers a request carries its trace in.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// What was set up; [`Telemetry::shutdown`] sends the spans still buffered.
#[must_use = "call shutdown() before the process exits, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (a few seconds at most).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("exporting the last spans failed: {error}");
        }
    }
}

fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Installs the global subscriber: logs on stderr (`json` or text), and spans over OTLP when
/// an endpoint is configured. An exporter that cannot be built is reported on stderr and
/// tracing goes on without it: traces never keep the gateway from starting.
pub fn init(service: &'static str, json: bool) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        // The current span's fields (a request's id) on every line.
        logs.json().with_current_span(true).boxed()
    } else {
        logs.boxed()
    };
    let mut problem = None;
    let provider =
        if set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => {
                    let mut resource = opentelemetry_sdk::Resource::builder();
                    if !set("OTEL_SERVICE_NAME") {
                        resource = resource.with_service_name(service);
                    }
                    Some(
                        SdkTracerProvider::builder()
                            .with_batch_exporter(exporter)
                            .with_resource(resource.build())
                            .build(),
                    )
                }
                Err(error) => {
                    problem = Some(error.to_string());
                    None
                }
            }
        } else {
            None
        };
    let traces = provider.as_ref().map(|p| {
        // Trace context only: a caller's `baggage` is theirs, not something to hand upstream.
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    if let Some(error) = problem {
        tracing::error!(%error, "the OTLP span exporter could not be built: spans are not exported");
    }
    Telemetry { provider }
}

/// Makes the trace context of `headers` (a caller's `traceparent`) the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key(TRACE_HEADERS[0]) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when tracing is off: then there is nothing to continue.
    let _ = span.set_parent(parent);
}

/// Writes `span`'s trace context into `headers` (`traceparent`, `tracestate`); false when
/// there is none (spans are not exported).
pub fn propagate(span: &tracing::Span, headers: &mut HeaderMap) -> bool {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return false;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
    true
}

/// The caller's `traceparent` and `tracestate` when they are well formed (W3C: version 00,
/// lower-case hex ids, not all zero; a state of at most 512 visible characters), to pass on
/// as they came when spans are not exported.
pub fn caller_context(headers: &HeaderMap) -> Vec<(&'static str, http::HeaderValue)> {
    let Some(parent) = headers
        .get(TRACE_HEADERS[0])
        .filter(|v| well_formed_parent(v.as_bytes()))
    else {
        return Vec::new();
    };
    let mut context = vec![(TRACE_HEADERS[0], parent.clone())];
    if let Some(state) = headers
        .get(TRACE_HEADERS[1])
        .filter(|v| v.len() <= 512 && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)))
    {
        context.push((TRACE_HEADERS[1], state.clone()));
    }
    context
}

fn well_formed_parent(value: &[u8]) -> bool {
    let hex = |part: &[u8]| {
        part.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let parts: Vec<&[u8]> = value.split(|b| *b == b'-').collect();
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == b"00"
            && trace.len() == 32 && hex(trace) && trace.iter().any(|b| *b != b'0')
            && span.len() == 16 && hex(span) && span.iter().any(|b| *b != b'0')
            && flags.len() == 2 && hex(flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(parent: &str, state: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            parent
                .parse()
                .unwrap_or(http::HeaderValue::from_static("x")),
        );
        if let Some(state) = state {
            headers.insert(
                "tracestate",
                state.parse().unwrap_or(http::HeaderValue::from_static("x")),
            );
        }
        headers
    }

    #[test]
    fn only_a_well_formed_caller_context_is_passed_on() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(caller_context(&headers(good, Some("vendor=x"))).len(), 2);
        assert_eq!(
            caller_context(&headers(good, Some(&"a".repeat(513)))).len(),
            1
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(
                caller_context(&headers(bad, Some("vendor=x"))).is_empty(),
                "{bad}"
            );
        }
    }
}
