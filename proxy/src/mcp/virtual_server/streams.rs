//! The session's GET stream: every member's stream merged (or one resumed), with
//! keep-alives; and the session's end.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::*;
use crate::error::{Body, ProxyError, full};
use crate::mcp::asking::{self, Asking};
use crate::mcp::relay::{self, EventIds};
use crate::mcp::shared::{Shared, hop_failure};
use crate::mcp::sse::message_event;
use crate::source::Member;

/// How often an idle merged stream gets an SSE comment.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);

impl Ctx<'_> {
    /// The session's stream: every member's stream merged, with keep-alives. It replaces the
    /// stream the session had open here. With a `Last-Event-ID` of one member's event, that
    /// member's stream resumed instead.
    pub(super) async fn stream(&self) -> Response<Body> {
        if let Some((member, last)) = self.resumption() {
            return self.resume(member, last).await;
        }
        let replaced = self
            .session()
            .map(|(sid, _)| self.fwd.sessions.open_stream(sid));
        let opened = join_all(self.route.members.iter().map(|member| async move {
            let hop = self.hop(member, self.caller);
            let response = self.send(&hop, &Method::GET, Bytes::new()).await;
            match response {
                Ok(r) if r.status().is_success() => Some(relay::sse(
                    r.into_body(),
                    from_member(member.name().to_owned()),
                    EventIds::Member(member.name().to_owned()),
                    hop.limits.event_bytes,
                )),
                Ok(_) => None,
                Err(error) => {
                    tracing::debug!(%error, "a member has no stream");
                    None
                }
            }
        }))
        .await;
        let changes = list_changes(
            self.fwd.current.clone(),
            self.route.config.path.clone(),
            LIST_CHANGED.iter().map(|k| k.method),
            None,
        );
        let streams =
            opened
                .into_iter()
                .flatten()
                .chain([keep_alive(), changes, self.completions()]);
        event_stream(self.fwd, replaced, futures::stream::select_all(streams))
    }

    /// `notifications/elicitation/complete` as this session's user supplies a credential
    /// (naming it as the URL elicitation that asked for it did), for clients that take URL
    /// elicitations.
    pub(super) fn completions(&self) -> relay::Chunks {
        let (Some((_, state)), Some(owner), Some(vault)) =
            (self.session(), self.owner, self.fwd.outbound.vault())
        else {
            return futures::stream::empty().boxed();
        };
        if Asking::in_session("tools/call", &state.capabilities) != Asking::UrlError {
            return futures::stream::empty().boxed();
        }
        let prefix = format!("{owner}-");
        futures::stream::unfold(
            (vault.stored(), prefix),
            |(mut stored, prefix)| async move {
                loop {
                    match stored.recv().await {
                        Ok(id) if id.starts_with(&prefix) => {
                            let event = message_event(&asking::complete(&id));
                            return Some((Ok(event), (stored, prefix)));
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
        .boxed()
    }

    /// The member, and its own event id, a GET's `Last-Event-ID` resumes (see
    /// [`EventIds::Member`]).
    pub(super) fn resumption(&self) -> Option<(&Member, HeaderValue)> {
        let last = self.caller.get("last-event-id")?.to_str().ok()?;
        let (server, id) = relay::resumed(last)?;
        Some((self.route.member(server)?, HeaderValue::from_str(id).ok()?))
    }

    /// `member`'s stream resumed after its event `last` (the upstream replays what the
    /// client missed), ids kept for the next resumption.
    pub(super) async fn resume(&self, member: &Member, last: HeaderValue) -> Response<Body> {
        let mut caller = self.caller.clone();
        caller.insert("last-event-id", last);
        let hop = self.hop(member, &caller);
        let name = member.name().to_owned();
        match self.send(&hop, &Method::GET, Bytes::new()).await {
            Ok(response) => {
                let ids = EventIds::Member(name.clone());
                relay::response(response, from_member(name), ids, &hop)
                    .await
                    .map(|body| self.fwd.long_lived(None, body))
            }
            Err(error) => hop_failure(&Method::GET, None, error, Asking::Body)
                .unwrap_or_else(ProxyError::respond),
        }
    }

    /// Ends every member's session.
    pub(super) async fn delete(&self) -> Response<Body> {
        join_all(self.route.members.iter().map(|member| async move {
            let hop = self.hop(member, self.caller);
            let _ = self.send(&hop, &Method::DELETE, Bytes::new()).await;
        }))
        .await;
        if let Some((sid, _)) = self.session() {
            self.fwd.sessions.end(sid);
        }
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::OK;
        response
    }
}

/// An SSE response made of `chunks`, ended when `replaced` fires (see
/// [`Shared::long_lived`]) or the gateway stops.
pub(super) fn event_stream(
    fwd: &Shared,
    replaced: Option<tokio::sync::oneshot::Receiver<()>>,
    chunks: impl futures::Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
) -> Response<Body> {
    let body = fwd.long_lived(
        replaced,
        BodyExt::boxed_unsync(StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data)))),
    );
    crate::mcp::sse::stream_response(body)
}

/// An SSE comment every [`KEEP_ALIVE`], so idle streams survive proxies.
pub(super) fn keep_alive() -> relay::Chunks {
    futures::stream::unfold((), |()| async {
        tokio::time::sleep(KEEP_ALIVE).await;
        Some((Ok(Bytes::from_static(crate::mcp::sse::KEEP_ALIVE)), ()))
    })
    .boxed()
}
