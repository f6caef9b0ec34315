//! A minimal client of the daemon's API: one HTTP/1.1 request per
//! connection over the Unix socket (`Connection: close`). `xdpctl` and the
//! tests use it; it owns nothing beyond the socket of one call.

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Any other I/O error.
    #[error("Talking to xdpathd at {path} failed: {source}.")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon answered something that is not HTTP.
    #[error("The daemon's response is malformed.")]
    Malformed,
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

/// One request; returns the status and the raw body.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), ClientError> {
    let io = |source| ClientError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(sock).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(sock.to_path_buf()),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(sock.to_path_buf())
        }
        _ => io(e),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io)?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: xdpathd\r\nConnection: close\r\n");
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or(ClientError::Malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ClientError::Malformed)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    ))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
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
    let v: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if !(200..300).contains(&status) {
        return Err(ClientError::Refused {
            status,
            message: v
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_string),
            field: v.get("field").and_then(Value::as_str).map(str::to_string),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
