//! The bridge's upstream sessions: one upstream event stream each, and where each message
//! read from it goes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderMap, Uri};
use serde_json::Value;
use tokio::sync::mpsc;

use super::SESSION_IDLE;

/// One upstream event stream and who waits for what on it.
pub(super) struct Session {
    /// Where messages are POSTed.
    pub endpoint: Uri,
    /// Caller headers sent with every POST (credentials).
    pub headers: HeaderMap,
    /// Shared with the task reading the upstream's events.
    pub routes: Arc<Mutex<Routes>>,
    /// That task, ended with the session.
    pub reader: tokio::task::AbortHandle,
    /// When a request last used it.
    pub used: Mutex<Instant>,
}

#[derive(Default)]
pub(super) struct Routes {
    /// Open requests (by id as JSON text), oldest first, each with its answer stream.
    pub waiting: Vec<(String, mpsc::Sender<Value>)>,
    /// The session's GET stream.
    pub standalone: Option<mpsc::Sender<Value>>,
}

impl Routes {
    /// Sends `message` where it belongs: a response to its request (whose stream then ends);
    /// anything else to the newest open request, or else the GET stream.
    pub fn deliver(&mut self, message: Value) {
        let is_response = message.get("method").is_none();
        if is_response {
            let key = message.get("id").map(Value::to_string).unwrap_or_default();
            if let Some(i) = self.waiting.iter().position(|(id, _)| *id == key) {
                let (_, stream) = self.waiting.remove(i);
                queue(&stream, message);
            }
            return;
        }
        self.waiting.retain(|(_, s)| !s.is_closed());
        if let Some((_, stream)) = self.waiting.last() {
            queue(stream, message);
        } else if let Some(stream) = &self.standalone {
            queue(stream, message);
        }
    }
}

/// Queues `message` for a client's stream, dropping it (with a warning) when the client has
/// let [`QUEUE`](super::QUEUE) messages pile up unread.
fn queue(stream: &mpsc::Sender<Value>, message: Value) {
    if let Err(mpsc::error::TrySendError::Full(_)) = stream.try_send(message) {
        tracing::warn!(
            "a client is not reading its HTTP+SSE bridge stream; an upstream message was dropped"
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Session {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        lock(&self.routes)
    }

    /// Unused for [`SESSION_IDLE`]: no request since, none waiting, no GET stream open.
    pub fn idle(&self) -> bool {
        let routes = self.lock();
        lock(&self.used).elapsed() >= SESSION_IDLE
            && routes.waiting.iter().all(|(_, s)| s.is_closed())
            && routes
                .standalone
                .as_ref()
                .is_none_or(mpsc::Sender::is_closed)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::proptests::{config, message};
    use crate::mcp::upstream::sse_bridge::QUEUE;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #![proptest_config(config())]

        /// Whatever the upstream sends on its event stream goes to a waiting request, the
        /// GET stream, or nowhere.
        #[test]
        fn any_upstream_message_is_delivered_or_dropped(messages in prop::collection::vec(message(), 0..8)) {
            let mut routes = Routes::default();
            let (request, _request_rx) = mpsc::channel(QUEUE);
            let (get, _get_rx) = mpsc::channel(QUEUE);
            routes.waiting.push(("1".into(), request));
            routes.standalone = Some(get);
            for message in messages {
                routes.deliver(message);
            }
        }
    }

    #[test]
    fn responses_go_to_their_request_and_the_rest_to_the_newest_one() {
        let mut routes = Routes::default();
        let (a, mut a_rx) = mpsc::channel(QUEUE);
        let (b, mut b_rx) = mpsc::channel(QUEUE);
        let (get, mut get_rx) = mpsc::channel(QUEUE);
        routes.waiting.push(("1".into(), a));
        routes.waiting.push(("\"x\"".into(), b));
        routes.standalone = Some(get);
        routes.deliver(json!({"jsonrpc": "2.0", "method": "notifications/progress"}));
        assert_eq!(b_rx.try_recv().unwrap()["method"], "notifications/progress");
        routes.deliver(json!({"jsonrpc": "2.0", "id": "x", "result": {}}));
        assert_eq!(b_rx.try_recv().unwrap()["id"], "x");
        routes.deliver(json!({"jsonrpc": "2.0", "id": 5, "method": "roots/list"}));
        assert_eq!(a_rx.try_recv().unwrap()["method"], "roots/list");
        routes.deliver(json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        assert_eq!(a_rx.try_recv().unwrap()["id"], 1);
        routes.deliver(json!({"jsonrpc": "2.0", "method": "notifications/message"}));
        assert_eq!(
            get_rx.try_recv().unwrap()["method"],
            "notifications/message"
        );
    }
}
