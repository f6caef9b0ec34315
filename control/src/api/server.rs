//! The API's server: its Unix socket, bound so that it is never reachable
//! with looser permissions than asked ([`bind`]), and the accept loop
//! ([`serve`]) with a connection cap, a timeout on every read from a client
//! and on every write to one, and a shutdown that never waits for a slow
//! client.
//!
//! Each connection is one HTTP/1.1 request (no keep-alive), served by
//! hyper with the router. What a client may cost ([`Limits`], defaults):
//!
//! | limit | default | when exceeded |
//! |---|---|---|
//! | connections at once | 64 | one more waits until a served one ends, or until the oldest one still sending its head after 2 s is closed for it; further ones wait in the listen backlog |
//! | the request head (line and headers) in full, from the connection's start | 10 s, 64 KiB | the connection is closed (431 when too large) |
//! | between two pieces of the body | 10 s | 408 |
//! | the whole body, from the head | 60 s | 408 |
//! | an answer write that makes no progress | 10 s | the connection is closed |
//! | body size | per route (`super::body`) | 413 |
//!
//! Every connection is in one phase (`Phase`). On shutdown the listener
//! closes and every connection that is reading its head or body, or
//! writing its answer, is closed at once; one whose request is being
//! handled (its body read in full) gets at most `Limits::grace` to answer,
//! then it is closed too. Work already on a blocking thread (a map write)
//! finishes on its own; the runtime's end waits for it.

use super::body::BodyError;
use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// What a client may cost the server (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// When a connection waits over the cap, the oldest served one still
    /// sending its request head after this long is closed for it.
    pub evict_after: Duration,
    /// The request head must arrive in full within this long of the
    /// connection's start.
    pub head_timeout: Duration,
    /// Largest request head (hyper's read buffer; at least 8 KiB).
    pub max_head: usize,
    /// Longest wait for the next piece of a body.
    pub body_idle: Duration,
    /// Longest a whole body may take, from the head.
    pub body_total: Duration,
    /// Longest an answer write may make no progress.
    pub write_stall: Duration,
    /// At shutdown, how long a request being handled may take to answer.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            evict_after: Duration::from_secs(2),
            head_timeout: Duration::from_secs(10),
            max_head: 64 << 10,
            body_idle: Duration::from_secs(10),
            body_total: Duration::from_secs(60),
            write_stall: Duration::from_secs(10),
            grace: Duration::from_secs(1),
        }
    }
}

/// Where a connection stands (what shutdown does with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Reading the request head: closed at shutdown.
    Head = 0,
    /// Reading the body: closed at shutdown.
    Body = 1,
    /// The request is read; the handler works on it: `grace` at shutdown.
    Handling = 2,
    /// Writing the answer: closed at shutdown.
    Answering = 3,
}

/// A connection's [`Phase`], shared by its task, its service and its body.
#[derive(Clone, Default)]
struct PhaseCell(Arc<AtomicU8>);

impl PhaseCell {
    fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::Release);
    }

    fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            1 => Phase::Body,
            2 => Phase::Handling,
            3 => Phase::Answering,
            _ => Phase::Head,
        }
    }
}

/// Who may use a socket: its mode and, if given, its owner and group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (0o660: owner and group read and write).
    pub mode: u32,
    /// Owner uid (`None`: the process's).
    pub owner: Option<u32>,
    /// Group gid (`None`: the process's).
    pub group: Option<u32>,
}

/// Binds a Unix socket at `path` that is never reachable with looser
/// permissions than `access`: it is bound in a fresh private directory
/// (mode 0700) beside `path`, given its owner, group and mode there, and
/// only then renamed into place (atomically replacing a stale socket of an
/// earlier run). The private directory is removed again, also on error.
pub fn bind(path: &Path, access: SocketAccess) -> io::Result<std::os::unix::net::UnixListener> {
    bind_observed(path, access, |_| {})
}

/// [`bind`], calling `before_rename` with the socket's private path just
/// before it is renamed into place (a test seam).
fn bind_observed(
    path: &Path,
    access: SocketAccess,
    before_rename: impl FnOnce(&Path),
) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut private = None;
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".api{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                private = Some(dir);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let dir = private.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free private directory in {}", parent.display()),
        )
    })?;
    let tmp = dir.join("s");
    let placed = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        if access.owner.is_some() || access.group.is_some() {
            std::os::unix::fs::chown(&tmp, access.owner, access.group)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(access.mode))?;
        before_rename(&tmp);
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let _ = std::fs::remove_dir(&dir);
    placed
}

/// How long the loop waits after an accept error (out of fds, say) before
/// accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then ends every connection as the module docs say and
/// returns.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    // Each served connection's phase and start, by task.
    let mut slots: HashMap<tokio::task::Id, Slot> = HashMap::new();
    // One connection accepted over the cap, waiting for a slot.
    let mut waiting: Option<UnixStream> = None;
    tokio::pin!(shutdown);
    loop {
        if let Some(stream) = waiting.take() {
            if conns.len() < limits.max_connections {
                spawn(&mut conns, &mut slots, stream, &router, limits, &stop_rx);
            } else {
                evict_one(&mut slots, limits.evict_after, &stats);
                waiting = Some(stream);
            }
        }
        // At the cap the loop takes one more connection and holds it
        // until a slot frees: a served one ends (each is bounded by the
        // timeouts above), or the oldest one still sending its head after
        // `evict_after` is closed for it. Further ones wait in the
        // kernel's listen backlog; the clients' own timeouts bound that.
        tokio::select! {
            () = &mut shutdown => break,
            Some(ended) = conns.join_next_with_id(), if !conns.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                slots.remove(&id);
            }
            accepted = listener.accept(), if waiting.is_none() => match accepted {
                Ok((stream, _)) => waiting = Some(stream),
                Err(e) => {
                    tracing::warn!("API: accepting a connection failed: {e}; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = tokio::time::sleep(EVICT_CHECK), if waiting.is_some() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Each connection ends at once, or after at most `grace` if it is
    // handling a request; the margin is for the tasks to run.
    let all_ended = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace + Duration::from_millis(500), all_ended)
        .await
        .is_err()
    {
        tracing::warn!(
            "API: {} connection(s) did not end at shutdown; closing them",
            conns.len()
        );
        conns.abort_all();
    }
}

/// What the accept loop did that a client would want counted (shown in
/// `/metrics`).
#[derive(Debug, Default)]
pub struct ConnStats {
    slow_heads_closed: AtomicU64,
}

impl ConnStats {
    /// Connections closed to give their slot to one waiting, because they
    /// had not sent a full request head after `Limits::evict_after`.
    pub fn slow_heads_closed(&self) -> u64 {
        self.slow_heads_closed.load(Ordering::Relaxed)
    }
}

/// A served connection, as the accept loop sees it.
struct Slot {
    phase: PhaseCell,
    since: Instant,
    task: tokio::task::AbortHandle,
    /// Closed for a connection waiting; its task is ending.
    evicted: bool,
}

/// How often a connection waiting for a slot looks for one to free.
const EVICT_CHECK: Duration = Duration::from_millis(100);

fn spawn(
    conns: &mut JoinSet<()>,
    slots: &mut HashMap<tokio::task::Id, Slot>,
    stream: UnixStream,
    router: &Router,
    limits: Limits,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    let phase = PhaseCell::default();
    let task = conns.spawn(connection(
        stream,
        router.clone(),
        limits,
        stop.clone(),
        phase.clone(),
    ));
    slots.insert(
        task.id(),
        Slot {
            phase,
            since: Instant::now(),
            task,
            evicted: false,
        },
    );
}

/// Closes the oldest connection that has been sending its request head
/// for `after` or longer, if there is one, so that a connection waiting
/// over the cap gets its slot (a client that trickles its head cannot
/// hold a slot while others wait). Its slot comes back when its task ends.
fn evict_one(slots: &mut HashMap<tokio::task::Id, Slot>, after: Duration, stats: &ConnStats) {
    if slots.values().any(|s| s.evicted) {
        // One is already giving its slot.
        return;
    }
    let oldest = slots
        .values_mut()
        .filter(|s| s.phase.get() == Phase::Head && !s.task.is_finished())
        .filter(|s| s.since.elapsed() >= after)
        .min_by_key(|s| s.since);
    if let Some(s) = oldest {
        s.evicted = true;
        stats.slow_heads_closed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "API: closing a connection that sent no full request head in {:?}, for one waiting",
            s.since.elapsed()
        );
        s.task.abort();
    }
}

/// Serves one connection (one request) until it ends or the server stops.
async fn connection(
    stream: UnixStream,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    phase: PhaseCell,
) {
    let service = {
        let phase = phase.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let phase = phase.clone();
            let router = router.clone();
            async move {
                phase.set(if req.body().is_end_stream() {
                    Phase::Handling
                } else {
                    Phase::Body
                });
                let req = req.map(|b| Body::new(TimedBody::new(b, phase.clone(), limits)));
                let answer = router.oneshot(req).await;
                phase.set(Phase::Answering);
                answer
            }
        })
    };
    let io = TokioIo::new(StallTimeout::new(stream, limits.write_stall));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .keep_alive(false);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!("API connection: {e}");
            }
        }
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            if phase.get() == Phase::Handling {
                let _ = tokio::time::timeout(limits.grace, conn.as_mut()).await;
            }
        }
    }
}

/// A request body with the server's read timeouts: at most `body_idle`
/// between two pieces and `body_total` in all, from when its handler first
/// reads it (a bulk replace waiting for its turn reads nothing). Its end
/// moves the connection to [`Phase::Handling`].
struct TimedBody {
    inner: Incoming,
    phase: PhaseCell,
    idle: Duration,
    total: Duration,
    /// When the next piece is due (reset whenever a wait starts).
    idle_deadline: Pin<Box<Sleep>>,
    waiting: bool,
    total_deadline: Pin<Box<Sleep>>,
    started: bool,
    done: bool,
}

impl TimedBody {
    fn new(inner: Incoming, phase: PhaseCell, limits: Limits) -> Self {
        Self {
            inner,
            phase,
            idle: limits.body_idle,
            total: limits.body_total,
            idle_deadline: Box::pin(tokio::time::sleep(limits.body_idle)),
            waiting: false,
            total_deadline: Box::pin(tokio::time::sleep(limits.body_total)),
            started: false,
            done: false,
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let me = &mut *self;
        if me.done {
            return Poll::Ready(None);
        }
        if !me.started {
            me.started = true;
            let due = Instant::now() + me.total;
            me.total_deadline.as_mut().reset(due);
        }
        if !me.waiting {
            me.waiting = true;
            let due = Instant::now() + me.idle;
            me.idle_deadline.as_mut().reset(due);
        }
        match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(piece) => {
                me.waiting = false;
                match piece {
                    None => {
                        me.done = true;
                        me.phase.set(Phase::Handling);
                        Poll::Ready(None)
                    }
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                    Some(Err(e)) => me.fail(BodyError::Client(e.to_string())),
                }
            }
            Poll::Pending => {
                if me.total_deadline.as_mut().poll(cx).is_ready() {
                    return me.fail(BodyError::TooSlow(me.total));
                }
                if me.idle_deadline.as_mut().poll(cx).is_ready() {
                    return me.fail(BodyError::Stalled(me.idle));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A Unix stream whose writes fail with `TimedOut` after making no
/// progress for `stall` (reads pass through: the head's and the body's
/// timeouts are hyper's and [`TimedBody`]'s).
struct StallTimeout {
    inner: UnixStream,
    stall: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl StallTimeout {
    fn new(inner: UnixStream, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            deadline: Box::pin(tokio::time::sleep(stall)),
            armed: false,
        }
    }

    /// The outcome of a write-side poll: progress disarms the timer, a
    /// wait arms it (once) and fails when it runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    let due = Instant::now() + self.stall;
                    self.deadline.as_mut().reset(due);
                }
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing for {} s", self.stall.as_secs()),
                )))
            }
        }
    }
}

impl AsyncRead for StallTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{body, build, BodyError, SMALL_BODY};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{on, MethodFilter};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdStream;
    use xdpath_api::Endpoint;

    /// A private directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "xdpath-api-server-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Stand-in handlers: every route reads its whole body and answers 200
    /// with its length; `GET /v1/flows` answers 4 MiB; `GET /v1/health`
    /// takes 300 ms.
    fn stand_in() -> Router {
        build(|e| {
            let m = match e.method() {
                xdpath_api::Method::Get => MethodFilter::GET,
                xdpath_api::Method::Post => MethodFilter::POST,
                xdpath_api::Method::Put => MethodFilter::PUT,
                xdpath_api::Method::Delete => MethodFilter::DELETE,
            };
            on(m, move |b: Body| async move {
                match e {
                    Endpoint::ListFlows => vec![b'x'; 4 << 20].into_response(),
                    Endpoint::Health => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        "ok".into_response()
                    }
                    _ => match body::read_small(b).await {
                        Ok(bytes) => bytes.len().to_string().into_response(),
                        Err(e) => crate::api::ApiError::from(e).into_response(),
                    },
                }
            })
        })
    }

    /// A server on a fresh socket in its own thread; `stop` ends it and
    /// says how long `serve` took to return after that.
    struct Running {
        sock: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: std::sync::mpsc::Receiver<Instant>,
        stats: Arc<ConnStats>,
        _dir: Dir,
    }

    impl Running {
        fn start(limits: Limits) -> Self {
            let dir = Dir::new("serve");
            let sock = dir.0.join("api.sock");
            let std_listener = bind(
                &sock,
                SocketAccess {
                    mode: 0o600,
                    owner: None,
                    group: None,
                },
            )
            .unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (done_tx, done) = std::sync::mpsc::channel();
            let stats = Arc::new(ConnStats::default());
            let served = stats.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    std_listener.set_nonblocking(true).unwrap();
                    let listener = UnixListener::from_std(std_listener).unwrap();
                    serve(listener, stand_in(), limits, served, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                    let _ = done_tx.send(Instant::now());
                });
            });
            Self {
                sock,
                stop: Some(stop_tx),
                done,
                stats,
                _dir: dir,
            }
        }

        /// Stops the server; how long `serve` took to return.
        fn stop(&mut self) -> Duration {
            let asked = Instant::now();
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            let ended = self
                .done
                .recv_timeout(Duration::from_secs(30))
                .expect("serve returns");
            ended.saturating_duration_since(asked)
        }

        fn connect(&self) -> StdStream {
            let s = StdStream::connect(&self.sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if self.stop.is_some() {
                self.stop();
            }
        }
    }

    /// Reads an answer to its end (the server closes after one): status
    /// and body.
    fn answer(s: &mut StdStream) -> (u16, String) {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn quick() -> Limits {
        Limits {
            head_timeout: Duration::from_secs(5),
            body_idle: Duration::from_secs(5),
            ..Limits::default()
        }
    }

    #[test]
    fn an_oversize_content_length_is_refused_before_a_byte_is_read() {
        let srv = Running::start(quick());
        for (head, limit) in [
            (
                "PUT /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n",
                body::body_limit(Endpoint::ReplaceFlows),
            ),
            (
                "POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
                SMALL_BODY,
            ),
            (
                "PUT /v1/prefixes HTTP/1.1\r\nHost: x\r\nContent-Length: 16777217\r\n\r\n",
                16 << 20,
            ),
        ] {
            let mut s = srv.connect();
            // The head only: the answer must come without the body.
            s.write_all(head.as_bytes()).unwrap();
            let (status, body) = answer(&mut s);
            assert_eq!(status, 413, "{head}: {body}");
            assert!(
                body.contains(&format!("larger than {limit} bytes")),
                "{body}"
            );
        }
        // At the cap exactly, the body is read.
        let mut s = srv.connect();
        let text = vec![b'x'; SMALL_BODY];
        write!(
            s,
            "POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            text.len()
        )
        .unwrap();
        s.write_all(&text).unwrap();
        assert_eq!(answer(&mut s), (200, SMALL_BODY.to_string()));
    }

    #[test]
    fn a_chunked_body_is_cut_off_at_the_cap() {
        let srv = Running::start(quick());
        let mut s = srv.connect();
        s.write_all(b"POST /v1/prefixes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        // One byte over the cap, and then nothing: the answer must not wait
        // for the rest (that would be a 408 after body_idle).
        let piece = vec![b'x'; 4096];
        let mut sent = 0;
        while sent <= SMALL_BODY {
            write!(s, "{:x}\r\n", piece.len()).unwrap();
            s.write_all(&piece).unwrap();
            s.write_all(b"\r\n").unwrap();
            sent += piece.len();
        }
        let (status, body) = answer(&mut s);
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("the most POST /v1/prefixes takes"), "{body}");
    }

    #[test]
    fn a_stalled_head_or_body_is_ended() {
        let srv = Running::start(Limits {
            head_timeout: Duration::from_millis(300),
            body_idle: Duration::from_millis(300),
            ..Limits::default()
        });
        // Half a request line, then silence: closed without an answer.
        let mut s = srv.connect();
        s.write_all(b"GET /v1/hea").unwrap();
        let mut rest = Vec::new();
        let read = s.read_to_end(&mut rest);
        assert!(
            read.is_ok() && !String::from_utf8_lossy(&rest).contains(" 200 "),
            "{read:?} {rest:?}"
        );
        // A body that stops: 408.
        let mut s = srv.connect();
        s.write_all(b"POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"src\"")
            .unwrap();
        let (status, body) = answer(&mut s);
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("stalled"), "{body}");
        // A body that trickles in too slowly in all: 408 too.
        drop(srv);
        let srv = Running::start(Limits {
            body_total: Duration::from_millis(400),
            ..quick()
        });
        let mut s = srv.connect();
        s.write_all(b"POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..100 {
                if w.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (status, body) = answer(&mut s);
        trickle.join().unwrap();
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("did not arrive within"), "{body}");
    }

    #[test]
    fn slow_clients_do_not_delay_shutdown() {
        // A long grace: only the request being handled may use it.
        let mut srv = Running::start(Limits {
            grace: Duration::from_secs(10),
            ..Limits::default()
        });
        // 50 connections with half a request line each, and one whose
        // request is being handled.
        let slow = slow_clients(&srv, 50);
        let mut busy = srv.connect();
        busy.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let took = srv.stop();
        assert!(
            took < Duration::from_secs(2),
            "the server took {took:?} to stop"
        );
        // The request being handled got its answer; the slow ones were
        // closed.
        assert_eq!(answer(&mut busy), (200, "ok".into()));
        for mut s in slow {
            let mut rest = Vec::new();
            assert!(s.read_to_end(&mut rest).is_ok() && rest.is_empty());
        }
    }

    /// `n` clients that sent half a request line and then nothing.
    fn slow_clients(srv: &Running, n: usize) -> Vec<StdStream> {
        (0..n)
            .map(|_| {
                let mut s = srv.connect();
                s.write_all(b"GET /v1/hea").unwrap();
                s
            })
            .collect()
    }

    #[test]
    fn a_connection_over_the_cap_waits_for_a_slot_and_is_served() {
        let srv = Running::start(Limits {
            max_connections: 3,
            write_stall: Duration::from_millis(300),
            evict_after: Duration::from_secs(60),
            ..quick()
        });
        let held = slow_clients(&srv, 3);
        std::thread::sleep(Duration::from_millis(100));
        // Over the cap: no answer while the three are held ...
        let (tx, rx) = std::sync::mpsc::channel();
        let sock = srv.sock.clone();
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(xdpath_api::client::request(&sock, "GET", "/v1/stats", None));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a fourth connection was served while three were held"
        );
        // ... and served, not refused, once a client closes.
        drop(held);
        let answer = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the waiting request was served once a slot freed");
        assert!(
            matches!(answer, Ok((200, _))),
            "the waiting request: {answer:?}"
        );
        waiter.join().unwrap();
        // A client that never reads its (large) answer loses its slot once
        // the write stalls.
        let hogs: Vec<StdStream> = (0..3)
            .map(|_| {
                let mut s = srv.connect();
                s.write_all(b"GET /v1/flows HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        let served = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            xdpath_api::client::request(&srv.sock, "GET", "/v1/stats", None)
                .is_ok_and(|(status, _)| status == 200)
        });
        assert!(served, "a stalled answer gave its slot back");
        drop(hogs);
    }

    #[test]
    fn a_client_trickling_its_head_gives_its_slot_to_one_waiting() {
        let srv = Running::start(Limits {
            max_connections: 3,
            evict_after: Duration::from_millis(500),
            ..quick()
        });
        let held = slow_clients(&srv, 3);
        // The slow clients keep their slots while nobody waits ...
        std::thread::sleep(Duration::from_millis(800));
        for s in &held {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            assert!(
                matches!(Read::read(&mut &*s, &mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "a slow client was closed while nobody waited"
            );
            s.set_nonblocking(false).unwrap();
        }
        // ... and one waiting is served while they are all still there:
        // the oldest slow one is closed for it.
        let answer = xdpath_api::client::request_with_timeout(
            &srv.sock,
            "GET",
            "/v1/stats",
            None,
            Duration::from_secs(5),
        );
        assert!(matches!(answer, Ok((200, _))), "{answer:?}");
        let closed = held
            .iter()
            .filter(|s| {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut rest = Vec::new();
                (&mut &**s).read_to_end(&mut rest).is_ok()
            })
            .count();
        assert_eq!(closed, 1, "one slow client gave its slot");
        assert_eq!(srv.stats.slow_heads_closed(), 1, "and it is counted");
    }
    #[test]
    fn an_early_refusal_reaches_a_streaming_client() {
        let srv = Running::start(quick());
        let refused_413 = |upload| {
            let e = xdpath_api::client::call_upload(&srv.sock, "PUT", "/v1/prefixes", upload)
                .unwrap_err();
            assert!(
                matches!(
                    &e,
                    xdpath_api::client::ClientError::Refused { status: 413, .. }
                ),
                "{e:?}"
            );
        };
        let dir = Dir::new("upload");
        // Announced over the cap: refused before the body is sent.
        let big = dir.0.join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(17 << 20).unwrap();
        let upload = xdpath_api::client::Upload::file(std::fs::File::open(&big).unwrap()).unwrap();
        refused_413(upload);
        // Chunked from a pipe: cut off at the cap.
        let upload = xdpath_api::client::Upload::reader(std::io::repeat(b' ').take(20 << 20));
        refused_413(upload);
    }

    #[test]
    fn the_socket_is_never_reachable_with_looser_permissions() {
        let dir = Dir::new("bind");
        let path = dir.0.join("api.sock");
        // A stale socket (and one with loose permissions) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let access = SocketAccess {
            mode: 0o660,
            owner: None,
            group: None,
        };
        let mut seen = None;
        let listener = bind_observed(&path, access, |private| {
            // Bound and set up, not yet in place: the socket's directory
            // admits its owner only, and its mode is already the final one.
            let dir_mode = std::fs::metadata(private.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            let sock_mode = std::fs::metadata(private).unwrap().permissions().mode();
            seen = Some((dir_mode & 0o777, sock_mode & 0o777, private.to_path_buf()));
        })
        .unwrap();
        let (dir_mode, sock_mode, private) = seen.expect("the seam ran");
        assert_eq!((dir_mode, sock_mode), (0o700, 0o660));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        assert!(!private.exists() && !private.parent().unwrap().exists());
        // It is the listening socket.
        let _c = StdStream::connect(&path).unwrap();
        assert!(listener.accept().is_ok());
        // Only the socket is left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);
        // A failure leaves nothing behind either.
        let e = bind(&dir.0.join("no/such/dir/\0bad"), access).unwrap_err();
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn body_errors_have_their_statuses() {
        assert_eq!(
            BodyError::Stalled(Duration::from_secs(10)).status(),
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(
            BodyError::Client("reset".into()).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
