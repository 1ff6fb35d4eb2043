//! Upstreams that speak only the MCP 2024-11-05 HTTP+SSE transport. A loopback service inside
//! the proxy speaks Streamable HTTP to the rest of the gateway (sessions, POST answered as
//! SSE, GET, DELETE, 404 for sessions it does not hold) and the old transport to the upstream:
//! one upstream event stream per session, the messages POSTed to the endpoint the upstream
//! named, responses matched back to their request by id. The rest of the gateway reaches it
//! like any upstream, so sealed sessions, re-initialization after a 404, virtual servers and
//! stateless clients work unchanged. Its sessions live in this replica; another replica (or
//! a restarted proxy) finds them unknown and the gateway opens fresh ones. What it holds is
//! bounded: sessions idle for [`SESSION_IDLE`] are closed (at most [`MAX_SESSIONS`] open),
//! each answer stream queues at most [`QUEUE`] messages for a client that does not read, and
//! upstream events are read up to the gateway's event limit.

mod session;
mod wire;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::sync::mpsc;

use self::session::{Routes, Session, lock};
use self::wire::{event_stream, resolve, sse_messages};
use crate::error::{Body, ProxyError, code, full};
use crate::mcp::message::SESSION_ID;
use crate::mcp::sse::EVENT_STREAM;
use crate::upstream::HttpClient;

/// How long the upstream may take to name its message endpoint.
const ENDPOINT_WAIT: Duration = Duration::from_secs(30);
/// Largest message the gateway hands the bridge (the gateway enforces its own limit first).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// A session no request used for this long is closed (its upstream stream with it).
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Upstream sessions the bridge holds at most.
pub const MAX_SESSIONS: usize = 10_000;
/// Messages queued for one answer stream whose client does not read; more are dropped.
pub const QUEUE: usize = 256;
/// Caller headers that stay at the bridge (the rest, credentials included, go upstream).
const DROPPED: [&str; 7] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "connection",
    "mcp-session-id",
    "transfer-encoding",
];

/// The bridge of one proxy (held by the shared context), started when a route first needs it.
pub struct SseBridge {
    started: OnceLock<Result<Arc<Bridge>, String>>,
    /// Largest upstream SSE event read.
    max_event: usize,
}

impl SseBridge {
    /// A bridge that reads upstream events up to `max_event` bytes, not started yet.
    pub fn new(max_event: usize) -> Self {
        Self {
            started: OnceLock::new(),
            max_event,
        }
    }

    /// Where the gateway sends requests meant for the HTTP+SSE upstream at `upstream` (its
    /// event stream URL); the bridge starts on first use.
    pub fn address(&self, upstream: &Uri) -> Result<Uri, String> {
        let bridge = self
            .started
            .get_or_init(|| Bridge::start(self.max_event).map_err(|e| e.to_string()));
        let bridge = bridge
            .as_ref()
            .map_err(|e| format!("the SSE bridge did not start: {e}"))?;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(upstream.to_string());
        format!("http://{}/{}/{encoded}", bridge.addr, bridge.token)
            .parse()
            .map_err(|e| format!("bridge address: {e}"))
    }
}

struct Bridge {
    addr: SocketAddr,
    /// Part of every path, so other local processes cannot drive upstream connections.
    token: String,
    client: HttpClient,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Largest upstream SSE event read.
    max_event: usize,
}

impl Bridge {
    fn start(max_event: usize) -> std::io::Result<Arc<Self>> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let mut token = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token)
            .map_err(|_| std::io::Error::other("no randomness"))?;
        let bridge = Arc::new(Self {
            addr: listener.local_addr()?,
            token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
            client: crate::upstream::client()?,
            sessions: Mutex::default(),
            max_event,
        });
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // Idle sessions are closed within a minute of going idle, opens or not.
        let sweeping = Arc::downgrade(&bridge);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                let Some(bridge) = sweeping.upgrade() else {
                    return;
                };
                bridge.lock().retain(|_, s| !s.idle());
            }
        });
        let serving = bridge.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let bridge = serving.clone();
                let service = service_fn(move |req| {
                    let bridge = bridge.clone();
                    async move { Ok::<_, Infallible>(bridge.handle(req).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        tracing::info!(addr = %bridge.addr, "HTTP+SSE bridge listening on loopback");
        Ok(bridge)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let upstream = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(token, _)| *token == self.token)
            .and_then(|(_, encoded)| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(encoded)
                    .ok()
            })
            .and_then(|url| String::from_utf8(url).ok())
            .and_then(|url| url.parse::<Uri>().ok());
        let Some(upstream) = upstream else {
            return ProxyError::NoRoute {
                path: req.uri().path().to_owned(),
            }
            .respond();
        };
        let (parts, body) = req.into_parts();
        let session_id = parts
            .headers
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let session = session_id.as_ref().map(|id| self.lock().get(id).cloned());
        if let Some(Some(session)) = &session {
            *lock(&session.used) = Instant::now();
        }
        if let Some(None) = session {
            return ProxyError::SessionNotFound { id: None }.respond();
        }
        let session = session.flatten();
        match (parts.method.clone(), session) {
            (Method::POST, session) => {
                let bytes = match http_body_util::Limited::new(body, MAX_MESSAGE)
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(_) => {
                        return ProxyError::BodyTooLarge { limit: MAX_MESSAGE }.respond();
                    }
                };
                let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
                    return ProxyError::Malformed {
                        id: None,
                        code: code::PARSE_ERROR,
                        message: "Parse error".into(),
                    }
                    .respond();
                };
                match session {
                    Some(session) => self.post(&session, message, bytes).await,
                    None => {
                        self.initialize(&upstream, &parts.headers, message, bytes)
                            .await
                    }
                }
            }
            (Method::GET, Some(session)) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                session.lock().standalone = Some(tx);
                event_stream(rx, false)
            }
            (Method::DELETE, Some(_)) => {
                if let Some(id) = session_id {
                    self.lock().remove(&id);
                }
                Response::new(full(Bytes::new()))
            }
            _ => ProxyError::BadRequest {
                id: None,
                message: "Bad Request: Missing session ID".into(),
            }
            .respond(),
        }
    }

    /// Opens the upstream event stream, learns the endpoint, and sends `initialize` there.
    async fn initialize(
        self: &Arc<Self>,
        upstream: &Uri,
        caller: &HeaderMap,
        message: Value,
        bytes: Bytes,
    ) -> Response<Body> {
        let id = message.get("id").cloned();
        if message["method"] != "initialize" {
            // An HTTP+SSE upstream has no server/discover: say so the way a server would.
            return ProxyError::MethodNotFound {
                id,
                message: "Method not found: the upstream speaks MCP 2024-11-05 (initialize first)"
                    .into(),
                status: StatusCode::OK,
            }
            .respond();
        }
        let mut headers = HeaderMap::new();
        for (name, value) in caller {
            if !DROPPED.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        match tokio::time::timeout(ENDPOINT_WAIT, self.open(upstream, headers)).await {
            Ok(Ok((sid, session))) => {
                let mut response = self.post(&session, message, bytes).await;
                if let Ok(value) = HeaderValue::try_from(sid) {
                    response.headers_mut().insert(SESSION_ID, value);
                }
                response
            }
            Ok(Err(error)) => upstream_error(id.as_ref(), &error),
            Err(_) => upstream_error(
                id.as_ref(),
                "the upstream did not name its message endpoint in time",
            ),
        }
    }

    async fn open(
        self: &Arc<Self>,
        upstream: &Uri,
        headers: HeaderMap,
    ) -> Result<(String, Arc<Session>), String> {
        let mut request = Request::get(upstream.clone());
        if let Some(h) = request.headers_mut() {
            h.extend(headers.clone());
            h.insert(header::ACCEPT, HeaderValue::from_static(EVENT_STREAM));
        }
        let request = request
            .body(full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("event stream: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("event stream: HTTP {}", response.status().as_u16()));
        }
        let mut events = sse_messages(response.into_body(), self.max_event);
        // The first event names where messages go.
        let endpoint = loop {
            match events.next().await {
                Some(Ok((Some(kind), data))) if kind == "endpoint" => break data,
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(format!("event stream: {error}")),
                None => return Err("the event stream ended before naming an endpoint".into()),
            }
        };
        let endpoint = resolve(upstream, endpoint.trim())?;
        let mut sid = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut sid)
            .map_err(|_| "no randomness".to_owned())?;
        let sid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sid);
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let (bridge, key, feed) = (Arc::downgrade(self), sid.clone(), routes.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok((_, data))) = events.next().await {
                if let Ok(message) = serde_json::from_str::<Value>(&data) {
                    lock(&feed).deliver(message);
                }
            }
            // The upstream ended the stream: the session is gone; the gateway re-opens it.
            if let Some(bridge) = bridge.upgrade() {
                bridge.lock().remove(&key);
            }
        });
        let session = Arc::new(Session {
            endpoint,
            headers,
            routes,
            reader: reader.abort_handle(),
            used: Mutex::new(Instant::now()),
        });
        let mut sessions = self.lock();
        sessions.retain(|_, s| !s.idle());
        if sessions.len() >= MAX_SESSIONS {
            return Err(format!(
                "the HTTP+SSE bridge holds its maximum of {MAX_SESSIONS} upstream sessions"
            ));
        }
        sessions.insert(sid.clone(), session.clone());
        Ok((sid, session))
    }

    /// Sends one message to the upstream endpoint; a request is answered with an event
    /// stream that carries what the upstream sends while it works and ends with its response.
    async fn post(&self, session: &Session, message: Value, bytes: Bytes) -> Response<Body> {
        let id = message.get("id").cloned();
        let is_request = message.get("method").is_some() && id.is_some();
        let answers = is_request.then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            session
                .lock()
                .waiting
                .push((id.as_ref().map(Value::to_string).unwrap_or_default(), tx));
            rx
        });
        let mut request = Request::post(session.endpoint.clone());
        if let Some(h) = request.headers_mut() {
            h.extend(session.headers.clone());
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let sent = match request.body(full(bytes)) {
            Ok(request) => self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let failed = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
            Err(error) => Some(error),
        };
        if let Some(error) = failed {
            if let Some(key) = id.as_ref().map(Value::to_string) {
                session.lock().waiting.retain(|(k, _)| *k != key);
            }
            return upstream_error(id.as_ref(), &format!("message endpoint: {error}"));
        }
        match answers {
            Some(rx) => event_stream(rx, true),
            None => {
                let mut response = Response::new(full(Bytes::new()));
                *response.status_mut() = StatusCode::ACCEPTED;
                response
            }
        }
    }
}

fn upstream_error(id: Option<&Value>, message: &str) -> Response<Body> {
    ProxyError::Bridge {
        id: id.cloned(),
        message: message.to_owned(),
    }
    .respond()
}
