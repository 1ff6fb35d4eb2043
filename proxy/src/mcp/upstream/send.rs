//! How a hop sends: with the credential the route's mode gives the caller (renewed once when
//! the upstream refuses one the gateway obtained), as the server's traffic policy says
//! (circuit, retries within their budget), each attempt in a span whose trace context the
//! upstream gets.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mcpgate_crds::gateway_config::UpstreamAuth;
use tracing::Instrument;

use super::hop::{Hop, HopError};
use super::reply::status_text;
use crate::error::full;
use crate::outbound::Resolved;
use crate::outbound::discovery::Challenge;
use crate::traffic::breaker::Outcome;
use crate::traffic::retry::{backoff, resendable};

impl Hop<'_> {
    /// Sends a request with the credential the route's mode gives this caller; the answer's
    /// headers must arrive within the route's timeout. A token the gateway obtained that the
    /// upstream refuses (401) is renewed and the request sent once more; a credential the
    /// upstream still refuses is an error, never a 401 the client would take as the
    /// gateway's own challenge.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response<Incoming>, HopError> {
        let resolved = self
            .outbound
            .resolve(self.route, self.identity, self.caller)
            .await?;
        let again = resolved.renewable.then(|| copy(&request));
        let mut response = self.dispatch(self.with(request, &resolved)).await?;
        if response.status() == StatusCode::UNAUTHORIZED
            && let Some(request) = again
        {
            self.outbound
                .refused(self.route, self.identity, self.caller, &resolved);
            let renewed = self
                .outbound
                .resolve(self.route, self.identity, self.caller)
                .await?;
            response = self.dispatch(self.with(request, &renewed)).await?;
        }
        if response.status() == StatusCode::FORBIDDEN
            && let Some(challenge) = Challenge::of(response.headers())
            && challenge.error.as_deref() == Some("insufficient_scope")
            && let Some(error) = self
                .outbound
                .insufficient_scope(self.route, self.identity, challenge.scope.as_deref())
                .await
        {
            return Err(error.into());
        }
        if response.status() != StatusCode::UNAUTHORIZED
            || matches!(
                self.route.config.auth,
                UpstreamAuth::None | UpstreamAuth::Passthrough
            )
        {
            return Ok(response);
        }
        if self.extra_headers().is_empty()
            && let Some(error) = self.outbound.refused_error(self.route, self.identity)
        {
            return Err(error.into());
        }
        Err(HopError::Status(
            self.server(),
            401,
            format!(
                "(it refused the credential it was sent): {}",
                status_text(response.into_body()).await
            ),
        ))
    }

    /// `request` with `resolved`'s headers, except those the caller set for this upstream.
    fn with(&self, mut request: Request<Bytes>, resolved: &Resolved) -> Request<Bytes> {
        let Some(headers) = &resolved.headers else {
            return request;
        };
        let own = self.extra_headers();
        for (name, value) in headers.iter() {
            if !own.iter().any(|(n, _)| n == name) {
                request.headers_mut().insert(name.clone(), value.clone());
            }
        }
        request
    }

    /// Sends `request` as the server's policy says: not at all while its circuit is open;
    /// again, after a backoff and within the retry budget, when it failed in a way that
    /// cannot have been acted on twice (see [`crate::traffic::retry`]).
    async fn dispatch(&self, request: Request<Bytes>) -> Result<Response<Incoming>, HopError> {
        let Some(policy) = self.policy.as_deref() else {
            return self.attempt(request).await.map_err(|(error, _)| error);
        };
        let retries = policy.retries.as_ref();
        if let Some(retries) = retries {
            retries.budget.deposit();
        }
        let mut request = request;
        let mut retried = 0;
        loop {
            let admitted = policy
                .admit(self.timeout())
                .map_err(|left| HopError::CircuitOpen(self.server(), left))?;
            let again = retries
                .filter(|r| retried < r.config.attempts)
                .map(|_| copy(&request));
            let sent = self.attempt(request).await;
            admitted.report(match &sent {
                Ok(response) if !response.status().is_server_error() => Outcome::Success,
                _ => Outcome::Failure,
            });
            let (Some(again), Some(retries)) = (again, retries) else {
                return sent.map_err(|(error, _)| error);
            };
            let retry = match &sent {
                Err((_, not_sent)) => *not_sent,
                Ok(response) => {
                    matches!(response.status().as_u16(), 502..=504)
                        && resendable(again.method(), again.body(), &retries.hints)
                }
            };
            // Nor when this failure opened the circuit: the caller gets the upstream's error.
            if !retry || policy.breaker.as_ref().is_some_and(|b| b.is_open()) {
                return sent.map_err(|(error, _)| error);
            }
            if !retries.budget.withdraw() {
                policy.count_retry(false);
                return sent.map_err(|(error, _)| error);
            }
            policy.count_retry(true);
            retried += 1;
            drop(sent);
            let base = Duration::from_millis(retries.config.backoff_ms);
            tokio::time::sleep(backoff(base, retried)).await;
            request = again;
        }
    }

    /// Sends `request` once, as it is, in a span of its own whose trace context the upstream
    /// gets (`traceparent`); when spans are not exported, the caller's trace context is
    /// passed on instead, so the upstream can still join the caller's trace. A failure says
    /// whether the request never left (no connection).
    async fn attempt(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Incoming>, (HopError, bool)> {
        let span = tracing::info_span!(
            "upstream",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            server = %self.server(),
            method = %request.method(),
            status = tracing::field::Empty,
        );
        let mut request = request.map(full);
        if !mcpgate_telemetry::propagate(&span, request.headers_mut()) {
            for (name, value) in mcpgate_telemetry::caller_context(self.caller) {
                request.headers_mut().insert(name, value);
            }
        }
        let timeout = self.timeout();
        let sent = tokio::time::timeout(timeout, self.client.request(request))
            .instrument(span.clone())
            .await;
        match sent {
            Ok(Ok(response)) => {
                span.record("status", response.status().as_u16());
                if response.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                Ok(response)
            }
            Ok(Err(error)) => {
                span.record("otel.status_code", "ERROR");
                span.in_scope(|| {
                    tracing::warn!(server = %self.server(), %error, "upstream request failed");
                });
                Err((HopError::Unreachable(self.server()), error.is_connect()))
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
                Err((
                    HopError::Timeout(self.server(), timeout.as_secs_f32()),
                    false,
                ))
            }
        }
    }
}

/// A copy of a request the gateway built (to send again).
fn copy(request: &Request<Bytes>) -> Request<Bytes> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}
