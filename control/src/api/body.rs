//! Request bodies: the cap of each route, what reading a body can fail
//! with, and the bridge that lets a parser on a blocking thread read a body
//! as it arrives.
//!
//! - [`body_limit`]: how many bytes each route takes. A body announced
//!   larger (`Content-Length`) is refused with 413 before a byte of it is
//!   read; a chunked one is cut off at the cap ([`Capped`]).
//! - [`BodyError`]: every way reading a body fails (too large, stalled, too
//!   slow, the client's error), each with its HTTP status. The server's
//!   timeouts (`super::server`) and the caps here both report through it.
//! - [`read_small`]: a whole small body (one rule), under its cap.
//! - [`parse_streaming`]: a bulk list is parsed on a blocking thread from a
//!   [`BodyReader`] fed by the body's pieces as they arrive, through a
//!   queue of a few pieces: the text is never held whole, and a parser that
//!   stops early (a bad or one-too-many rule) stops the reading too.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::io::Read;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use xdpath_api::Endpoint;
use xdpath_common::{MAX_FLOWS, MAX_PREFIXES};

/// The body cap of every route that takes no bulk list: a rule is a few
/// hundred bytes.
pub const SMALL_BODY: usize = 64 << 10;

/// Bytes a bulk list may spend per rule the maps hold: a compact exact rule
/// with IPv6 addresses and every field is about 170 bytes, the same
/// pretty-printed (`jq .`) about 230.
pub const BULK_BYTES_PER_RULE: usize = 256;

/// The body cap of `e`: a bulk replace may carry as many rules as the maps
/// hold at [`BULK_BYTES_PER_RULE`] each (256 MiB for `PUT /v1/flows`, 16
/// MiB for `PUT /v1/prefixes`); everything else [`SMALL_BODY`].
pub const fn body_limit(e: Endpoint) -> usize {
    match e {
        Endpoint::ReplaceFlows => MAX_FLOWS as usize * BULK_BYTES_PER_RULE,
        Endpoint::ReplacePrefixes => MAX_PREFIXES as usize * BULK_BYTES_PER_RULE,
        _ => SMALL_BODY,
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the route takes (413).
    #[error(
        "The request body is larger than {limit} bytes, the most {route} takes; nothing was changed."
    )]
    TooLarge {
        /// The cap.
        limit: usize,
        /// `PUT /v1/flows`, ...
        route: String,
    },
    /// No data for this long while more was expected (408).
    #[error("The request body stalled: no data for {} s; nothing was changed.", .0.as_secs())]
    Stalled(Duration),
    /// Not complete within this long (408).
    #[error("The request body did not arrive within {} s; nothing was changed.", .0.as_secs())]
    TooSlow(Duration),
    /// The connection broke or the body was malformed (400).
    #[error("Reading the request body failed: {0}; nothing was changed.")]
    Client(String),
    /// The handler stopped reading (its connection was closed): nobody
    /// sees this.
    #[error("The request was abandoned.")]
    Abandoned,
}

impl BodyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Stalled(_) | Self::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Client(_) => StatusCode::BAD_REQUEST,
            Self::Abandoned => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body error inside an error of a body read through axum (which
    /// boxes it), or the error as the client's.
    pub fn from_axum(e: axum::Error) -> Self {
        match e.into_inner().downcast::<BodyError>() {
            Ok(b) => *b,
            Err(other) => Self::Client(other.to_string()),
        }
    }

    /// The body error inside an I/O error (a `BodyReader`'s), if any.
    pub fn from_io(e: std::io::Error) -> Result<Self, std::io::Error> {
        if e.get_ref().is_some_and(|i| i.is::<BodyError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(b) = inner.downcast::<BodyError>() {
                    return Ok(*b);
                }
            }
            return Ok(Self::Client("unreadable I/O error".into()));
        }
        Err(e)
    }
}

/// The announced size of a body: its `Content-Length` or, for a body
/// built in memory, its exact size; the larger of the two.
pub fn announced(headers: &axum::http::HeaderMap, body: &Body) -> u64 {
    let header = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    header.max(body.size_hint().lower())
}

/// A body cut off at a cap: a piece that would take it over the cap is an
/// error ([`BodyError::TooLarge`]) instead.
pub struct Capped {
    inner: Body,
    left: usize,
    limit: usize,
    route: &'static str,
    failed: bool,
}

impl Capped {
    /// `inner`, cut off after `limit` bytes of route `route`.
    pub fn new(inner: Body, limit: usize, route: &'static str) -> Self {
        Self {
            inner,
            left: limit,
            limit,
            route,
            failed: false,
        }
    }
}

impl HttpBody for Capped {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => {
                self.failed = true;
                return Poll::Ready(Some(Err(BodyError::from_axum(e))));
            }
            Some(Ok(f)) => f,
        };
        if let Some(data) = frame.data_ref() {
            match self.left.checked_sub(data.len()) {
                Some(left) => self.left = left,
                None => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(BodyError::TooLarge {
                        limit: self.limit,
                        route: self.route.to_string(),
                    })));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A whole small body (it went through [`Capped`]).
pub async fn read_small(body: Body) -> Result<Bytes, BodyError> {
    Ok(body
        .collect()
        .await
        .map_err(BodyError::from_axum)?
        .to_bytes())
}

/// One piece of a body on its way to a [`BodyReader`].
enum Piece {
    Data(Bytes),
    End,
    Failed(BodyError),
}

/// Pieces in flight between the body and its parser: the parser reads at
/// most this many pieces (a piece is at most one read of the socket) behind
/// the body.
const PIECES_IN_FLIGHT: usize = 4;

/// A body as [`std::io::Read`], on a blocking thread: it waits for the next
/// piece when it has read the last. A failure of the body is an I/O error
/// carrying the [`BodyError`] ([`BodyError::from_io`]).
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    cur: Bytes,
    pos: usize,
    done: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let rest = self.cur.get(self.pos..).unwrap_or_default();
            if !rest.is_empty() {
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Some(Piece::End) => self.done = true,
                Some(Piece::Failed(e)) => {
                    self.done = true;
                    return Err(std::io::Error::other(e));
                }
                None => {
                    self.done = true;
                    return Err(std::io::Error::other(BodyError::Abandoned));
                }
            }
        }
    }
}

/// Runs `parse` on a blocking thread over `body` as it arrives and returns
/// its result. The body is read only as fast as `parse` consumes it; when
/// `parse` returns early the rest is not read. If this future is dropped
/// (the connection closed), `parse` sees an error at its next read and
/// ends.
pub async fn parse_streaming<T: Send + 'static>(
    mut body: Body,
    parse: impl FnOnce(BodyReader) -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let (tx, rx) = tokio::sync::mpsc::channel(PIECES_IN_FLIGHT);
    let reader = BodyReader {
        rx,
        cur: Bytes::new(),
        pos: 0,
        done: false,
    };
    let parsed = tokio::task::spawn_blocking(move || parse(reader));
    let pump = async move {
        loop {
            let piece = match body.frame().await {
                None => Piece::End,
                Some(Err(e)) => Piece::Failed(BodyError::from_axum(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) if !d.is_empty() => Piece::Data(d),
                    // Trailers and empty pieces carry nothing to parse.
                    _ => continue,
                },
            };
            let last = !matches!(piece, Piece::Data(_));
            if tx.send(piece).await.is_err() || last {
                return;
            }
        }
    };
    tokio::pin!(parsed);
    tokio::select! {
        r = &mut parsed => return r,
        () = pump => {}
    }
    parsed.await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body delivered in these pieces, like a chunked request.
    struct Pieces(std::collections::VecDeque<&'static [u8]>);

    impl HttpBody for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|p| Ok(Frame::data(Bytes::from_static(p)))),
            )
        }
    }

    fn chunked(pieces: Vec<&'static [u8]>) -> Body {
        Body::new(Pieces(pieces.into()))
    }

    #[tokio::test]
    async fn a_capped_body_stops_at_its_cap() {
        let body = Body::new(Capped::new(
            chunked(vec![b"0123", b"4567", b"89"]),
            9,
            "PUT /v1/x",
        ));
        let e = read_small(body).await.unwrap_err();
        assert_eq!(
            e,
            BodyError::TooLarge {
                limit: 9,
                route: "PUT /v1/x".into()
            }
        );
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = Body::new(Capped::new(chunked(vec![b"0123", b"45"]), 6, "x"));
        assert_eq!(&read_small(body).await.unwrap()[..], b"012345");
    }

    #[tokio::test]
    async fn a_parser_reads_the_body_piece_by_piece_and_stops_it_early() {
        let body = chunked(vec![b"[1, ", b"2, 3", b"]"]);
        let got = parse_streaming(body, |mut r| {
            let mut s = String::new();
            r.read_to_string(&mut s).map(|_| s)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, "[1, 2, 3]");
        // A parser that returns early: the pump stops (no hang).
        let body = chunked(vec![b"x"; 64]);
        let n = parse_streaming(body, |mut r| {
            let mut b = [0u8; 1];
            r.read(&mut b).unwrap_or(0)
        })
        .await
        .unwrap();
        assert_eq!(n, 1);
        // A failing body reaches the parser as its error.
        let body = Body::new(Capped::new(chunked(vec![b"0123", b"4567"]), 5, "x"));
        let e = parse_streaming(body, |mut r| r.read_to_end(&mut Vec::new()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(
            BodyError::from_io(e),
            Ok(BodyError::TooLarge { limit: 5, .. })
        ));
    }

    #[test]
    fn caps_by_route() {
        assert_eq!(body_limit(Endpoint::ReplaceFlows), 256 << 20);
        assert_eq!(body_limit(Endpoint::ReplacePrefixes), 16 << 20);
        assert_eq!(body_limit(Endpoint::AddFlow), 64 << 10);
        assert_eq!(body_limit(Endpoint::Health), 64 << 10);
    }
}
