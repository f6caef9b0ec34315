//! A blocking client of the daemon's API over its Unix socket, on hyper:
//! one HTTP/1.1 request per connection, driven by a current-thread tokio
//! runtime that lives for the one call. `xdpctl` and the tests use it; it
//! owns nothing beyond the socket of one call.
//!
//! A request body is a JSON value ([`call`]) or, for a bulk list, an
//! [`Upload`] streamed from a file or a reader as it is read, never held
//! whole ([`call_upload`]): a file is sent with its length, so the daemon
//! can refuse one over its cap before reading it; a pipe is sent chunked.
//!
//! Every read waits at most [`READ_TIMEOUT`] for the daemon's next bytes
//! (a stuck daemon cannot hang the CLI forever; a slow bulk replace that
//! keeps answering is not cut off).

use crate::ErrorBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};

/// How long a read waits for the daemon's next bytes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there.
    #[error("xdpathd is not running (no API at {0}).")]
    NotRunning(PathBuf),
    /// The socket exists but this user may not use it.
    #[error(
        "Cannot use {0}: permission denied (run as root or as a member of the daemon's api_group)."
    )]
    PermissionDenied(PathBuf),
    /// Any other I/O error (a read that timed out included).
    #[error("Talking to xdpathd at {path} failed: {source}.")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading the body to send failed.
    #[error("Reading the request body failed: {0}.")]
    Upload(io::Error),
    /// The daemon answered something that is not HTTP.
    #[error("The daemon's response is malformed.")]
    Malformed,
    /// The daemon's answer is not what this client expects (another
    /// version of the API): the route and serde's message.
    #[error("The daemon's answer to {route} is not what this client expects: {detail}.")]
    Unexpected {
        /// `METHOD /path`.
        route: String,
        /// What did not fit.
        detail: String,
    },
    /// The daemon refused the request (non-2xx): its message, the field it
    /// names, and the status.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
        /// The field the message is about, if any.
        field: Option<String>,
    },
}

/// A request body streamed from a source as it is read.
pub struct Upload {
    source: Box<dyn io::Read + Send>,
    len: Option<u64>,
    failed: std::sync::Arc<std::sync::Mutex<Option<io::Error>>>,
    done: bool,
}

impl Upload {
    /// How much one read takes from the source.
    const PIECE: usize = 256 << 10;

    /// A file, sent with its length (`Content-Length`).
    pub fn file(f: std::fs::File) -> io::Result<Self> {
        let meta = f.metadata()?;
        let len = meta.is_file().then_some(meta.len());
        Ok(Self::new(Box::new(f), len))
    }

    /// Any source (stdin, a pipe), sent chunked.
    pub fn reader(r: impl io::Read + Send + 'static) -> Self {
        Self::new(Box::new(r), None)
    }

    fn new(source: Box<dyn io::Read + Send>, len: Option<u64>) -> Self {
        Self {
            source,
            len,
            failed: Default::default(),
            done: false,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = io::Error;

    // The source is read right here, blocking: the runtime serves this one
    // request, and a file (or the pipe feeding it) is what it waits for.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut buf = vec![0u8; Self::PIECE];
        loop {
            match self.source.read(&mut buf) {
                Ok(0) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.done = true;
                    let note = io::Error::new(e.kind(), e.to_string());
                    if let Ok(mut slot) = self.failed.lock() {
                        *slot = Some(e);
                    }
                    return Poll::Ready(Some(Err(note)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.len == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// [`call`] with a body streamed from `body` (a bulk list): the source is
/// read as the request is sent. An error reading it is
/// [`ClientError::Upload`].
pub fn call_upload(
    sock: &Path,
    method: &str,
    path: &str,
    body: Upload,
) -> Result<Value, ClientError> {
    let failed = body.failed.clone();
    let answer = run(sock, |rt| {
        rt.block_on(exchange(sock, method, path, Some(body), READ_TIMEOUT))
    });
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        return Err(ClientError::Upload(e));
    }
    let (status, bytes) = answer?;
    answer_value(status, &String::from_utf8_lossy(&bytes))
}

/// Runs `f` on a fresh current-thread runtime.
fn run<T>(
    sock: &Path,
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| ClientError::Io {
            path: sock.to_path_buf(),
            source,
        })?;
    f(&rt)
}

/// One request; returns the status and the body as text (invalid UTF-8
/// replaced).
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), ClientError> {
    request_with_timeout(sock, method, path, body, READ_TIMEOUT)
}

/// [`request`] with another read timeout.
pub fn request_with_timeout(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    read_timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let body = body.map(|v| Full::new(Bytes::from(v.to_string())));
    let (status, bytes) = run(sock, |rt| {
        rt.block_on(exchange(sock, method, path, body, read_timeout))
    })?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

async fn exchange<B>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<B>,
    read_timeout: Duration,
) -> Result<(u16, Bytes), ClientError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io_err = |source| ClientError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(sock)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(sock.to_path_buf()),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(sock.to_path_buf())
            }
            _ => io_err(e),
        })?;
    let hyper_err = |e: hyper::Error| hyper_error(sock, e);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(IdleTimeout::new(stream, read_timeout)))
            .await
            .map_err(hyper_err)?;
    // The connection makes progress while the request is awaited; it ends
    // when the answer is read and the sender dropped.
    let conn = tokio::spawn(conn);
    let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|_| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{method:?} is not an HTTP method"),
        ))
    })?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "xdpathd")
        .header(hyper::header::CONNECTION, "close");
    let payload = match body {
        Some(b) => {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            if let Some(n) = b.size_hint().exact() {
                req = req.header(hyper::header::CONTENT_LENGTH, n);
            }
            http_body_util::Either::Left(b)
        }
        None => http_body_util::Either::Right(Full::new(Bytes::new())),
    };
    let req = req.body(payload).map_err(|e| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the request cannot be built: {e}"),
        ))
    })?;
    let resp = sender.send_request(req).await.map_err(hyper_err)?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(hyper_err)?
        .to_bytes();
    drop(sender);
    // The answer is complete; how the connection ended does not matter.
    let _ = conn.await;
    Ok((status, bytes))
}

/// Sorts hyper's errors into ours: I/O (a timeout included) as such, bad
/// HTTP as [`ClientError::Malformed`].
fn hyper_error(sock: &Path, e: hyper::Error) -> ClientError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return ClientError::Io {
                path: sock.to_path_buf(),
                source: io::Error::new(io.kind(), io.to_string()),
            };
        }
        source = s.source();
    }
    if e.is_parse() || e.is_parse_status() || e.is_incomplete_message() {
        return ClientError::Malformed;
    }
    ClientError::Io {
        path: sock.to_path_buf(),
        source: io::Error::other(e.to_string()),
    }
}

/// A request whose non-2xx answer becomes [`ClientError::Refused`]; the
/// body is parsed as JSON (`Null` when empty, a string when not JSON).
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let (status, text) = request(sock, method, path, body)?;
    answer_value(status, &text)
}

/// Calls endpoint `e` (with `arg` in its path and `query` after it) and
/// reads the answer as `T`.
fn typed<T: serde::de::DeserializeOwned>(
    sock: &Path,
    e: crate::Endpoint,
    arg: &str,
    query: &str,
    body: Option<&Value>,
) -> Result<T, ClientError> {
    let v = call(
        sock,
        e.method().as_str(),
        &format!("{}{query}", e.uri(arg)),
        body,
    )?;
    serde_json::from_value(v).map_err(|err| ClientError::Unexpected {
        route: format!("{} {}", e.method(), e.path()),
        detail: err.to_string(),
    })
}

/// `GET /v1/guests`: every guest, by id.
pub fn list_guests(sock: &Path) -> Result<Vec<crate::GuestInfo>, ClientError> {
    typed(sock, crate::Endpoint::ListGuests, "", "", None)
}

/// `POST /v1/guests`: adds a guest; the daemon's answer (201) with its id.
/// A refusal names the field ([`ClientError::Refused`]).
pub fn add_guest(sock: &Path, spec: &crate::GuestSpec) -> Result<crate::GuestInfo, ClientError> {
    let body = serde_json::to_value(spec).map_err(|e| ClientError::Upload(io::Error::other(e)))?;
    typed(sock, crate::Endpoint::AddGuest, "", "", Some(&body))
}

/// `GET /v1/guests/{name}`: one guest (404 when there is none by that
/// name).
pub fn get_guest(sock: &Path, name: &str) -> Result<crate::GuestInfo, ClientError> {
    typed(
        sock,
        crate::Endpoint::GetGuest,
        &path_segment(name),
        "",
        None,
    )
}

/// `DELETE /v1/guests/{name}`: removes a guest; with `force`, together
/// with the rules that send to it (without, 409 while there are any).
pub fn delete_guest(sock: &Path, name: &str, force: bool) -> Result<(), ClientError> {
    let e = crate::Endpoint::DeleteGuest;
    let query = if force { "?force=true" } else { "" };
    call(
        sock,
        e.method().as_str(),
        &format!("{}{query}", e.uri(path_segment(name))),
        None,
    )
    .map(drop)
}

/// `name` percent-encoded for a path segment (guest names need none; a
/// bad name still reaches the daemon, which says why it is refused).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An answer as JSON (`Null` when empty, a string when not JSON); a
/// non-2xx answer is [`ClientError::Refused`].
fn answer_value(status: u16, text: &str) -> Result<Value, ClientError> {
    let v: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
    };
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_value::<ErrorBody>(v.clone()) {
            Ok(ErrorBody { error, field }) => ClientError::Refused {
                status,
                message: error,
                field,
            },
            Err(_) => ClientError::Refused {
                status,
                message: v
                    .get("error")
                    .and_then(Value::as_str)
                    .map_or_else(|| v.to_string(), str::to_string),
                field: v.get("field").and_then(Value::as_str).map(str::to_string),
            },
        });
    }
    Ok(v)
}

/// A Unix stream whose reads fail with `TimedOut` after `timeout` without
/// a byte (writes are not limited).
struct IdleTimeout {
    inner: UnixStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(inner: UnixStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let next = Instant::now() + me.timeout;
                me.deadline.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(me.deadline.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", me.timeout.as_secs()),
                )))
            }
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// Serves one connection: reads the request head (and a body of the
    /// announced length), then writes `answer` (or nothing if `None`, then
    /// waits) and returns what it read.
    fn serve_once(answer: Option<Vec<u8>>) -> (PathBuf, std::thread::JoinHandle<String>) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("xdpath-api-client-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let file = path.clone();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Connected: the socket file has done its job.
            let _ = std::fs::remove_file(&file);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            match answer {
                Some(a) => s.write_all(&a).unwrap(),
                None => std::thread::sleep(Duration::from_millis(1500)),
            }
            String::from_utf8_lossy(&req).into_owned()
        });
        (path, t)
    }

    #[test]
    fn a_chunked_answer_split_inside_a_multibyte_character_is_joined() {
        // "é" is two bytes; the first chunk ends between them (the
        // hand-written client sliced a &str there and panicked).
        let mut a = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let body = "{\"name\":\"café ünïcödé\"}".as_bytes();
        let cut = body.iter().position(|&b| b == 0xc3).unwrap() + 1;
        for part in [&body[..cut], &body[cut..]] {
            a.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            a.extend_from_slice(part);
            a.extend_from_slice(b"\r\n");
        }
        a.extend_from_slice(b"0\r\n\r\n");
        let (sock, t) = serve_once(Some(a));
        let v = call(&sock, "GET", "/v1/health", None).unwrap();
        assert_eq!(v["name"], "café ünïcödé");
        let req = t.join().unwrap();
        assert!(req.starts_with("GET /v1/health HTTP/1.1\r\n"), "{req}");
        let _ = std::fs::remove_file(&sock);
    }

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn guest_calls_use_their_routes_and_types() {
        let spec = crate::GuestSpec::new("web1", crate::MacAddr([0x52, 0x54, 0, 0, 0, 1]));
        let info = crate::GuestInfo::new(2, &spec, PathBuf::from("/run/x.sock"), 1, 0o660);
        let text = serde_json::to_string(&info).unwrap();
        let (sock, t) = serve_once(Some(answer("201 Created", &text)));
        assert_eq!(add_guest(&sock, &spec).unwrap(), info);
        let req = t.join().unwrap();
        let (head, got) = req.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/guests HTTP/1.1\r\n"), "{head}");
        assert_eq!(
            serde_json::from_str::<Value>(got).unwrap(),
            serde_json::json!({"name": "web1", "mac": "52:54:00:00:00:01"})
        );
        let (sock, t) = serve_once(Some(answer("204 No Content", "")));
        delete_guest(&sock, "web1", true).unwrap();
        assert!(t
            .join()
            .unwrap()
            .starts_with("DELETE /v1/guests/web1?force=true HTTP/1.1\r\n"));
        let (sock, t) = serve_once(Some(answer("200 OK", &format!("[{text}]"))));
        assert_eq!(list_guests(&sock).unwrap(), vec![info.clone()]);
        assert!(t.join().unwrap().starts_with("GET /v1/guests HTTP/1.1\r\n"));
        let (sock, t) = serve_once(Some(answer("200 OK", r#"{"id": 1}"#)));
        let e = get_guest(&sock, "a b").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "The daemon's answer to GET /v1/guests/{name} is not what this client expects: "
            ),
            "{e}"
        );
        assert!(t
            .join()
            .unwrap()
            .starts_with("GET /v1/guests/a%20b HTTP/1.1\r\n"));
        let _ = std::fs::remove_file(&sock);
    }

    #[test]
    fn refusals_carry_message_field_and_status() {
        let body = r#"{"error":"Field `dst`: \"10.0.0.300\" is not an IPv4 or IPv6 address.","field":"dst"}"#;
        let a = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (sock, t) = serve_once(Some(a.into_bytes()));
        let sent = serde_json::json!({"src": "10.0.0.2", "dst": "10.0.0.300"});
        let e = call(&sock, "POST", "/v1/flows", Some(&sent)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Field `dst`: \"10.0.0.300\" is not an IPv4 or IPv6 address. (HTTP 400)"
        );
        assert!(matches!(
            e,
            ClientError::Refused { status: 400, field: Some(ref f), .. } if f == "dst"
        ));
        let req = t.join().unwrap();
        let (head, got) = req.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/flows HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        assert_eq!(serde_json::from_str::<Value>(got).unwrap(), sent);
        let _ = std::fs::remove_file(&sock);
    }

    #[test]
    fn no_daemon_not_http_and_silence_are_reported() {
        let missing = Path::new("/nonexistent/xdpath/api.sock");
        let e = call(missing, "GET", "/v1/health", None).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "xdpathd is not running (no API at /nonexistent/xdpath/api.sock)."
        );

        let (sock, t) = serve_once(Some(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()));
        let e = call(&sock, "GET", "/v1/health", None).unwrap_err();
        assert!(matches!(e, ClientError::Malformed), "{e}");
        t.join().unwrap();
        let _ = std::fs::remove_file(&sock);

        let (sock, t) = serve_once(None);
        let e = request_with_timeout(&sock, "GET", "/v1/health", None, Duration::from_millis(200))
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Io { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{e:?}"
        );
        t.join().unwrap();
        let _ = std::fs::remove_file(&sock);
    }

    #[test]
    fn empty_and_non_json_answers() {
        let (sock, t) = serve_once(Some(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()));
        assert_eq!(
            call(&sock, "DELETE", "/v1/flows/1", None).unwrap(),
            Value::Null
        );
        t.join().unwrap();
        let _ = std::fs::remove_file(&sock);
        let (sock, t) = serve_once(Some(
            b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ));
        let e = call(&sock, "PATCH", "/v1/flows", None).unwrap_err();
        assert_eq!(e.to_string(), "null (HTTP 405)");
        t.join().unwrap();
        let _ = std::fs::remove_file(&sock);
    }
}
