//! The edge below gRPC: which connections the gateway keeps, how long a
//! connection may take to say it speaks HTTP/2, how large a request
//! message may be and how long it may take to arrive. What hyper and tonic
//! offer is set in `server.rs` (`max_concurrent_streams`, keepalive PINGs,
//! the header list size); this module adds what they do not: a bound on
//! open connections, a deadline for the HTTP/2 preface, a deadline for a
//! request's body, a message-size check that answers RESOURCE_EXHAUSTED
//! naming the setting, and INVALID_ARGUMENT for a message that does not
//! decode (tonic answers INTERNAL). Every limit is a field of
//! `[gateway.limits]` (`config::Limits`), documented there.
//!
//! Nothing here touches a request that behaves: the connection wrapper
//! costs a branch per read once the preface is in, and a body arms a timer
//! only when it has to wait for the rest of itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::codegen::Bytes;
use tonic::codegen::http::Response as HttpResponse;
use tonic::transport::server::Connected;

use crate::config::Limits;
use crate::error::GatewayError;

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_BYTES: usize = 24;

/// How long accepting pauses after an error that is not the client's
/// (out of file descriptors), instead of spinning on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the connection limits refused or cut off, since the start
/// (`/metrics`: `prism_gateway_connections_*`).
#[derive(Debug)]
pub struct ConnectionStats {
    /// Connections accepted and kept.
    pub accepted: AtomicU64,
    /// Connections closed at once: `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed without a full HTTP/2 preface in time.
    pub handshake_timeouts: AtomicU64,
    /// Requests whose message did not arrive in full in time.
    pub read_timeouts: AtomicU64,
    /// Requests refused for a message above `max_message_bytes`.
    pub oversized: AtomicU64,
    /// Connections open now (permits held).
    open: Arc<Semaphore>,
    max: usize,
}

impl ConnectionStats {
    pub fn new(max_connections: usize) -> Self {
        Self {
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            read_timeouts: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            open: Arc::new(Semaphore::new(max_connections)),
            max: max_connections,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.open.available_permits())
    }

    /// The most that may be open (`limits.max_connections`).
    pub fn max(&self) -> usize {
        self.max
    }
}

pin_project_lite::pin_project! {
    /// Accepted connections, at most `max_connections` open at once: one
    /// over the limit is closed as soon as it is accepted. An accept error
    /// that is not about one connection (out of file descriptors) pauses
    /// accepting briefly instead of spinning on it, as the TLS accept loop
    /// does. Each connection yielded must send its HTTP/2 preface within
    /// `handshake_timeout_ms`.
    pub struct Accepted<S> {
        #[pin]
        inner: S,
        stats: Arc<ConnectionStats>,
        handshake_timeout: Duration,
        pause: Option<Pin<Box<Sleep>>>,
    }
}

impl<S> Accepted<S> {
    pub fn new(inner: S, limits: &Limits, stats: Arc<ConnectionStats>) -> Self {
        Self { inner, stats, handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms), pause: None }
    }
}

impl<S, IO> Stream for Accepted<S>
where
    S: Stream<Item = io::Result<IO>>,
{
    type Item = io::Result<Connection<IO>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                *this.pause = None;
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    use io::ErrorKind::*;
                    // A connection that died in the queue is simply skipped.
                    if !matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        *this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                    }
                }
                Some(Ok(io)) => match this.stats.open.clone().try_acquire_owned() {
                    Ok(permit) => {
                        this.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let connection = Connection {
                            io,
                            _permit: permit,
                            preface_left: PREFACE_BYTES,
                            deadline: Some(Box::pin(tokio::time::sleep(*this.handshake_timeout))),
                            stats: this.stats.clone(),
                        };
                        return Poll::Ready(Some(Ok(connection)));
                    }
                    Err(_) => {
                        // Dropped: closed before a byte is read, so the
                        // client fails at once and may try elsewhere.
                        this.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("connection closed: limits.max_connections are open");
                    }
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// One accepted connection: holds its place among `max_connections`
    /// until closed, and fails its reads (hyper then closes it) when the
    /// HTTP/2 preface has not arrived by the handshake deadline.
    pub struct Connection<IO> {
        #[pin]
        io: IO,
        _permit: OwnedSemaphorePermit,
        preface_left: usize,
        deadline: Option<Pin<Box<Sleep>>>,
        stats: Arc<ConnectionStats>,
    }
}

impl<IO: AsyncRead> AsyncRead for Connection<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.preface_left == 0 {
            return this.io.poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                *this.preface_left = this.preface_left.saturating_sub(read);
                // The preface is in (or the peer closed): no deadline left.
                if *this.preface_left == 0 || read == 0 {
                    *this.preface_left = 0;
                    *this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("connection closed: no http/2 preface within limits.handshake_timeout_ms");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no http/2 preface within limits.handshake_timeout_ms",
                )))
            }
            failed => failed,
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for Connection<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Requests see the connection's own info (its peer address and, over
/// TLS, its certificates), as without the wrapper.
impl<IO: Connected> Connected for Connection<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// What a request body may be: its messages' size and how long it may
/// take to arrive.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    max_message_bytes: usize,
    read_timeout: Duration,
    stats: Arc<ConnectionStats>,
}

impl ReadLimits {
    pub fn new(limits: &Limits, stats: Arc<ConnectionStats>) -> Self {
        Self {
            max_message_bytes: limits.max_message_bytes,
            read_timeout: Duration::from_millis(limits.request_read_timeout_ms),
            stats,
        }
    }

    /// `body`, held to these limits.
    pub fn limit<B>(&self, body: B) -> LimitedBody<B> {
        LimitedBody { inner: body, limits: self.clone(), frames: Frames::default(), stall: None }
    }
}

/// Where a body is in its gRPC messages (a 1-byte flag, a 4-byte
/// big-endian length, then the message): only the headers are looked at.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Frames {
    /// Walks `data`; the declared length of a message above `max`, if one
    /// starts in it.
    fn scan(&mut self, mut data: &[u8], max: usize) -> Option<u64> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - self.have);
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.header;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                if len > max as u64 {
                    return Some(len);
                }
                self.remaining = len;
            }
        }
        None
    }
}

pin_project_lite::pin_project! {
    /// A request body held to [`ReadLimits`]: a message declared larger
    /// than `max_message_bytes` fails the body with RESOURCE_EXHAUSTED when
    /// its header arrives, and a body not complete `request_read_timeout_ms`
    /// after it first had to be waited for fails with UNAVAILABLE. tonic
    /// answers the request with that status (it passes a body's
    /// `tonic::Status` through) and the stream is released.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        limits: ReadLimits,
        frames: Frames,
        stall: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes, Error = tonic::Status>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(size) = this.frames.scan(data, this.limits.max_message_bytes)
                {
                    this.limits.stats.oversized.fetch_add(1, Ordering::Relaxed);
                    let error = GatewayError::MessageTooLarge { size, limit: this.limits.max_message_bytes };
                    return Poll::Ready(Some(Err(prism_proto::error::into_status(error.report()))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                *this.stall = None;
                Poll::Ready(end)
            }
            Poll::Pending => {
                let timeout = this.limits.read_timeout;
                let stall = this.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                this.limits.stats.read_timeouts.fetch_add(1, Ordering::Relaxed);
                // A stalled sender is not the gateway's failure: debug, and
                // not through `GatewayError::into_status`, which warns.
                tracing::debug!(?timeout, "request body timed out");
                let error = GatewayError::ReadTimeout(timeout);
                Poll::Ready(Some(Err(prism_proto::error::into_status(error.report()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What tonic-prost answers for a message that does not decode (truncated,
/// a bad varint, nested deeper than prost's recursion limit of 100):
/// INTERNAL with this prefix, its reading of gRPC's status table.
const UNDECODABLE: &str = "failed to decode Protobuf message: ";

/// A response of the KeyValue or TimeSeries server, with tonic-prost's
/// INTERNAL for an undecodable request turned into what Prism promises for
/// malformed input (SPEC §7): INVALID_ARGUMENT naming the field, from
/// prost's decode stack (`Message.field: … : description`, innermost
/// first). Every other response is returned as it is, after one header
/// lookup (a success carries its status in trailers).
pub fn malformed_is_invalid_argument<B: Default>(response: HttpResponse<B>) -> HttpResponse<B> {
    if response.headers().get("grpc-status").map(|v| v.as_bytes()) != Some(b"13") {
        return response;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else { return response };
    let Some(decode_error) = status.message().strip_prefix(UNDECODABLE) else { return response };
    let mut parts: Vec<&str> = decode_error.split(": ").collect();
    let description = parts.pop().unwrap_or_default();
    // The outermost entry of the stack is the request's own field.
    let field = parts.last().and_then(|p| p.rsplit_once('.')).map_or("request", |(_, field)| field);
    let description = match description {
        "recursion limit reached" => "nested too deep to decode (more than 100 levels of messages)".to_owned(),
        other => format!("the message does not decode: {other}"),
    };
    tonic::Status::into_http(prism_proto::error::into_status(GatewayError::invalid(field, description).report()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend(len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn frames_are_scanned_across_chunk_boundaries() {
        let mut body = frame(10);
        body.extend(frame(3));
        body.extend(&frame(1000)[..5]);
        for split in 0..body.len() {
            let mut frames = Frames::default();
            let (a, b) = body.split_at(split);
            let found = frames.scan(a, 100).or_else(|| frames.scan(b, 100));
            assert_eq!(found, Some(1000), "split at {split}");
        }
        let mut frames = Frames::default();
        assert_eq!(frames.scan(&frame(100), 100), None, "at the limit is allowed");
        assert_eq!(frames.scan(&frame(0), 100), None);
        assert_eq!(frames.scan(&[0, 0, 0, 0x10, 0], 100), Some(4096));
    }

    #[test]
    fn undecodable_requests_become_invalid_argument_naming_the_field() {
        let stack = "TagFilterList.filters: TagFilter.and: SearchEventRecordsRequest.filter: recursion limit reached";
        let internal = tonic::Status::internal(format!("{UNDECODABLE}{stack}"));
        let response = malformed_is_invalid_argument(internal.into_http::<()>());
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("filter: nested too deep"), "{}", status.message());

        let truncated = tonic::Status::internal(format!("{UNDECODABLE}invalid varint"));
        let status =
            tonic::Status::from_header_map(malformed_is_invalid_argument(truncated.into_http::<()>()).headers())
                .expect("a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "request: the message does not decode: invalid varint");

        // Any other INTERNAL, and every other code, is left alone.
        for other in [tonic::Status::internal("internal error"), tonic::Status::not_found(UNDECODABLE)] {
            let code = other.code();
            let status =
                tonic::Status::from_header_map(malformed_is_invalid_argument(other.into_http::<()>()).headers())
                    .expect("a status");
            assert_eq!(status.code(), code);
        }
    }
}
