//! The MCP port: connections accepted within limits, and the HTTP settings that bound what
//! one client can make the gateway hold. A connection with no request being answered must
//! send its next request head within `header_read_timeout` (a new one its first, an HTTP/1
//! keep-alive one its next; one timer per connection, see `Watched`), in at most
//! `max_header_bytes` and `max_headers` (else 431). HTTP/2: at most `max_concurrent_streams`
//! per connection, header lists bounded the same way, and pings that close a connection
//! whose peer stopped answering. Over `max_connections`, a new connection gets 503 with
//! `Retry-After` and is closed; accept errors (out of file descriptors) back off instead of
//! spinning. At shutdown, connections drain for at most `drain`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::{Body, ProxyError};
use crate::server::{App, handle};

/// What one client, and all of them together, may make the MCP port hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a request head; also how long an HTTP/1 connection may sit idle.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), HTTP/1 and HTTP/2.
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Open connections at most.
    pub max_connections: usize,
    /// Requests being handled at once (until their response starts), at most.
    pub max_in_flight: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 pings; a peer that does not answer one within it is dropped.
    pub keep_alive_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: HYPER_MAX_HEADERS,
            max_connections: 10_000,
            max_in_flight: 4096,
            max_concurrent_streams: 100,
            keep_alive_interval: Duration::from_secs(30),
        }
    }
}

/// The number of headers hyper parses into a stack buffer when not told otherwise.
const HYPER_MAX_HEADERS: usize = 100;
/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection refused for being over the cap may take to read its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause after failed accepts.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The HTTP/1 and HTTP/2 settings of `limits`.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    // The request head must fit in the read buffer, else 431. (Its timeout is kept by
    // `Watched`, not hyper's per-request timer; giving http1 a timer would switch hyper's
    // own 30 s header timeout back on beside it.)
    http1.max_buf_size(limits.max_header_bytes.max(8192));
    // Hyper's own limit is 100 headers, parsed into a buffer on the stack; any explicit
    // value, even 100, makes it fill a new one for every request.
    if limits.max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_interval);
    builder
}

/// Serves MCP until `shutdown`, then lets connections finish (at most `drain`); over TLS
/// when `tls` is set.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = app.limits.clone();
    let builder = Arc::new(builder(&limits));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: wait for some to close.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(%error, ?backoff, "accept failed; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        backoff = Duration::ZERO;
        let _ = stream.set_nodelay(true);
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let permit = connections.clone().try_acquire_owned().ok();
        app.metrics.connections.inc();
        let app = app.clone();
        tokio::spawn(async move {
            let admitted = permit.is_some();
            let first = app.limits.header_read_timeout;
            let result = match tls {
                None => {
                    let stream = Watched::new(stream, first);
                    connection(&builder, watcher, stream, &app, admitted, peer.ip()).await
                }
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let stream = Watched::new(stream, first);
                            connection(&builder, watcher, stream, &app, admitted, peer.ip()).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => Ok(()),
                    }
                }
            };
            // Held until here, so the cap counts connections, not requests.
            drop(permit);
            app.metrics.connections.dec();
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    tracing::info!("draining connections");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
}

/// Serves one connection: MCP when `admitted`, else one 503 and close.
async fn connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    stream: Watched<S>,
    app: &Arc<App>,
    admitted: bool,
    peer: std::net::IpAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !admitted {
        app.metrics
            .refused
            .with_label_values(&["connections"])
            .inc();
        let service = service_fn(|_: Request<Incoming>| async {
            let mut response = busy("connections");
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, Infallible>(response)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        return tokio::time::timeout(REFUSAL_TIMEOUT, conn)
            .await
            .unwrap_or(Ok(()));
    }
    let (app, idle) = (app.clone(), stream.idle.clone());
    let service = service_fn(move |req| {
        let (app, busy) = (app.clone(), idle.start());
        async move {
            let response = handle(&app, req, peer).await;
            Ok::<_, Infallible>(response.map(|body| Answering { body, _busy: busy }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    watcher.watch(conn.into_owned()).await
}

/// The HTTP/2 connection preface, which hyper-util reads (with no timer) to tell the
/// protocols apart.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection has requests being answered, and since when it has had none: shared
/// by the connection's reads and its requests, so that one timer per connection enforces the
/// header-read timeout where hyper's own costs a timer per request.
struct Idle {
    opened: Instant,
    /// Requests being answered: from their head until their response body ends.
    busy: AtomicUsize,
    /// When `busy` last fell to zero, in milliseconds after `opened`.
    since_ms: AtomicU64,
}

impl Idle {
    /// Marks a request as being answered until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the next request head must have arrived: `within` after the connection last had
    /// no request being answered or last wrote (hyper may still be writing an answer whose
    /// body it already let go of), or `within` from now while a request is being answered.
    fn deadline(&self, within: Duration, wrote: Option<Instant>) -> Instant {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Instant::now() + within;
        }
        let since = self.opened + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        wrote.map_or(since, |wrote| wrote.max(since)) + within
    }
}

/// A request being answered (see [`Idle`]).
struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        let idle = &self.0;
        let now = u64::try_from(idle.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the count falls, so whoever sees no request also sees when.
        idle.since_ms.store(now, Ordering::Release);
        idle.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request [`Busy`] until hyper is done with it.
pub struct Answering<B> {
    body: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Answering<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What the first bytes of a connection said.
#[derive(Clone, Copy)]
enum Protocol {
    /// Still matching the HTTP/2 preface: this many bytes of it so far.
    Undecided(usize),
    Http1,
    Http2,
}

/// A connection whose reads fail with `TimedOut` once it has had no request being answered,
/// and written nothing, for `within`: a client that connects and sends nothing, sends a
/// request head too slowly, keeps an HTTP/1 connection idle or stops reading an answer, is
/// let go, while a request that takes long (a stream) or a large answer read slowly is not
/// cut. An HTTP/2 connection is watched until its preface has arrived; hyper's pings watch it
/// from then on. (HTTP/1 upgrades are not served; an upgraded connection would need to be
/// let out of this watch.)
struct Watched<S> {
    inner: S,
    idle: Arc<Idle>,
    within: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    protocol: Protocol,
    /// When a write last made progress (HTTP/1 only).
    wrote: Option<Instant>,
}

impl<S> Watched<S> {
    fn new(inner: S, within: Duration) -> Self {
        let opened = Instant::now();
        Self {
            inner,
            idle: Arc::new(Idle {
                opened,
                busy: AtomicUsize::new(0),
                since_ms: AtomicU64::new(0),
            }),
            within,
            timer: Box::pin(tokio::time::sleep_until(opened + within)),
            protocol: Protocol::Undecided(0),
            wrote: None,
        }
    }

    /// Whether the deadline has passed; otherwise the timer is armed to wake `cx` at it.
    /// The timer is moved only when it fires, not for every request.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.idle.deadline(self.within, self.wrote);
            if deadline <= Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
        false
    }

    /// Notes a write's progress, which keeps a connection writing an answer from counting as
    /// idle.
    fn written(&mut self, polled: &Poll<std::io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0)
            && !matches!(self.protocol, Protocol::Http2)
        {
            self.wrote = Some(Instant::now());
        }
    }

    /// Follows the first bytes until they say HTTP/2 or not.
    fn classify(&mut self, read: &[u8]) {
        if let Protocol::Undecided(matched) = self.protocol {
            let n = read.len().min(H2_PREFACE.len() - matched);
            self.protocol = if read[..n] != H2_PREFACE[matched..matched + n] {
                Protocol::Http1
            } else if matched + n == H2_PREFACE.len() {
                Protocol::Http2
            } else {
                Protocol::Undecided(matched + n)
            };
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.protocol, Protocol::Http2) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => this.classify(&buf.filled()[before..]),
            Poll::Pending if this.expired(cx) => {
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
            _ => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.written(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        this.written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// 503 with `Retry-After` for a gateway at its `limit` (`connections` or `requests`).
pub fn busy(limit: &'static str) -> Response<Body> {
    ProxyError::Busy { limit }.respond()
}
