//! A deliberately small HTTP/1.1 client over the daemon's Unix socket, for
//! the API abuse: exact control over what is sent and when (half a
//! request line, a body that never ends, a declared length far beyond any
//! cap), and a bounded wait for every answer. Each request uses its own
//! connection (`Connection: close`).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of an answer kept at most (headers and body).
const MAX_ANSWER: usize = 1 << 20;

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body (de-chunked), as text.
    pub body: String,
}

/// Waits up to `timeout` for `fd` to become readable (or closed).
fn readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

/// Decodes a chunked body (what a server sends with
/// `Transfer-Encoding: chunked`); `None` if it is not well formed.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = raw.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Parses a whole answer (status line, headers, body).
pub fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let chunked = lines.any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Reads an answer until the server closes the connection or `deadline`.
fn read_answer(s: &mut UnixStream, deadline: Instant) -> Result<Answer, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return parse_answer(&raw).ok_or_else(|| {
                format!("no complete answer in time ({} bytes received)", raw.len())
            });
        }
        if !readable(s.as_raw_fd(), left.min(Duration::from_millis(100))) {
            continue;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                return parse_answer(&raw).ok_or_else(|| {
                    if raw.is_empty() {
                        "the connection was closed without an answer".to_string()
                    } else {
                        format!("a malformed answer: {:?}", String::from_utf8_lossy(&raw))
                    }
                })
            }
            Ok(n) => {
                if raw.len() + n > MAX_ANSWER {
                    return Err("an answer larger than 1 MiB".into());
                }
                raw.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return parse_answer(&raw).ok_or_else(|| format!("reading the answer: {e}"));
            }
        }
    }
}

/// How long a connect may wait for room in the server's backlog.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, waiting at most [`CONNECT_TIMEOUT`] when the server's backlog
/// is full (a plain `UnixStream::connect` would wait forever).
fn connect(sock: &Path) -> Result<UnixStream, String> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let why = |e: std::io::Error| format!("connecting to {}: {e}", sock.display());
    // SAFETY: sockaddr_un is plain data; zeroed is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = sock.as_os_str().as_bytes();
    if path.len() >= addr.sun_path.len() {
        return Err(format!("socket path {} is too long", sock.display()));
    }
    for (d, &b) in addr.sun_path.iter_mut().zip(path) {
        *d = b as libc::c_char;
    }
    // SAFETY: plain socket(2) call, checked below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(why(std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: CONNECT_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval of the size given; a Unix socket's
    // connect waits for backlog room at most SO_SNDTIMEO.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: addr is a valid sockaddr_un of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(why(std::io::Error::last_os_error()));
    }
    let s = UnixStream::from(fd);
    // Back to no write timeout; callers set their own.
    let _ = s.set_write_timeout(None);
    Ok(s)
}

/// One request with body `body` (if any); the answer within `timeout`, or
/// why there was none.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(sock)?;
    let _ = s.set_write_timeout(Some(timeout));
    let b = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: xdpathd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        // The server may have answered (and closed) before reading it all.
        return read_answer(&mut s, deadline).map_err(|_| format!("sending the request: {e}"));
    }
    read_answer(&mut s, deadline)
}

/// A client that sent part of a request and then nothing.
#[derive(Debug)]
pub struct SlowClient {
    s: UnixStream,
}

impl SlowClient {
    /// Connects and sends `partial`.
    pub fn open(sock: &Path, partial: &[u8]) -> Result<Self, String> {
        let mut s = connect(sock)?;
        s.write_all(partial)
            .map_err(|e| format!("sending a partial request: {e}"))?;
        Ok(Self { s })
    }

    /// Whether the server has closed this connection (or answered it).
    pub fn closed_by_server(&mut self) -> bool {
        if !readable(self.s.as_raw_fd(), Duration::ZERO) {
            return false;
        }
        let mut b = [0u8; 512];
        !matches!(self.s.read(&mut b), Err(ref e) if e.kind() == ErrorKind::WouldBlock)
    }
}

/// How an upload of a large body ended.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The server's answer, if any.
    pub answer: Result<Answer, String>,
    /// Body bytes the server took before it answered or closed.
    pub sent: u64,
    /// From the first byte to the answer.
    pub elapsed: Duration,
}

/// How the body of an upload is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: <total>` up front.
    Declared,
    /// `Transfer-Encoding: chunked`, no length.
    Chunked,
}

/// Sends `method path` with a body of `total` bytes (`[` then spaces) in
/// 1 MiB pieces, stopping as soon as the server answers or stops reading.
pub fn upload(
    sock: &Path,
    method: &str,
    path: &str,
    total: u64,
    framing: Framing,
    timeout: Duration,
) -> Upload {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut sent = 0u64;
    let mut s = match connect(sock) {
        Ok(s) => s,
        Err(e) => {
            return Upload {
                answer: Err(e),
                sent,
                elapsed: start.elapsed(),
            }
        }
    };
    // A server that stops reading without answering: the write blocks;
    // give up on it after a while and look for an answer.
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let length = match framing {
        Framing::Declared => format!("Content-Length: {total}\r\n"),
        Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: xdpathd\r\nConnection: close\r\nContent-Type: application/json\r\n{length}\r\n"
    );
    let piece_len: u64 = 1 << 20;
    let mut piece = vec![b' '; piece_len as usize];
    piece[0] = b'[';
    let fail = |s: &mut UnixStream, sent, why: String| {
        let answer = read_answer(s, Instant::now() + Duration::from_secs(5))
            .map_err(|e| format!("{why}; then {e}"));
        Upload {
            answer,
            sent,
            elapsed: start.elapsed(),
        }
    };
    if let Err(e) = s.write_all(head.as_bytes()) {
        return fail(&mut s, sent, format!("sending the headers: {e}"));
    }
    while sent < total && Instant::now() < deadline {
        if readable(s.as_raw_fd(), Duration::ZERO) {
            break;
        }
        let n = piece_len.min(total - sent);
        let data = &piece[..n as usize];
        let r = match framing {
            Framing::Declared => s.write_all(data),
            Framing::Chunked => s
                .write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|()| s.write_all(data))
                .and_then(|()| s.write_all(b"\r\n")),
        };
        if let Err(e) = r {
            return fail(&mut s, sent, format!("the server stopped reading: {e}"));
        }
        sent += n;
        piece[0] = b' ';
    }
    if framing == Framing::Chunked && sent >= total {
        let _ = s.write_all(b"0\r\n\r\n");
    }
    let answer = read_answer(
        &mut s,
        deadline.max(Instant::now() + Duration::from_secs(5)),
    );
    Upload {
        answer,
        sent,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_and_without_chunking() {
        let a =
            parse_answer(b"HTTP/1.1 201 Created\r\ncontent-length: 8\r\n\r\n{\"id\":1}").unwrap();
        assert_eq!(a.status, 201);
        assert_eq!(a.body, "{\"id\":1}");
        let c = parse_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c.status, c.body.as_str()), (200, "[1,2]"));
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\n"),
            None,
            "no end of headers"
        );
        assert_eq!(parse_answer(b"SSH-2.0\r\n\r\n"), None);
    }

    #[test]
    fn requests_and_uploads_against_a_tiny_server() {
        let dir = std::env::temp_dir().join(format!("xdpath-soak-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // Answers 413 after reading the head, like a server with a cap.
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut c, _) = l.accept().unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = c.read(&mut b).unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                c.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\n{}")
                    .unwrap();
            }
        });
        let a = request(&sock, "GET", "/x", None, Duration::from_secs(5)).unwrap();
        assert_eq!(a.status, 413);
        let u = upload(
            &sock,
            "PUT",
            "/v1/flows",
            64 << 20,
            Framing::Declared,
            Duration::from_secs(10),
        );
        assert_eq!(u.answer.map(|a| a.status), Ok(413));
        assert!(u.sent < 64 << 20, "stopped early: {}", u.sent);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
