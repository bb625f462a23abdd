//! `prism-loadtest abuse`: bad input against a gateway while another
//! tenant's requests are measured. Each attack runs for a phase while an
//! open loop of checked GetItems on `--namespace` goes on; the result is
//! that load's p50/p99 and errors per phase, against a phase without an
//! attack before and after, and what each attack was answered.
//!
//! The attacks (each also a function the tests call on their own):
//! - **oversized**: PutItems messages larger than the gateway's
//!   `limits.max_message_bytes` (expected: RESOURCE_EXHAUSTED naming it,
//!   as soon as the message's frame header is in; after one whole request
//!   the attackers send only that much of each);
//! - **nested**: SearchEventRecords whose tag filter nests 10 000 deep, far
//!   past what protobuf decoding allows (expected: INVALID_ARGUMENT naming
//!   `filter`);
//! - **stream-flood**: raw HTTP/2 connections opening streams far past
//!   `limits.max_concurrent_streams` (expected: `REFUSED_STREAM` resets, and
//!   GOAWAY once too many were refused);
//! - **slowloris**: connections that send nothing, or only the HTTP/2
//!   preface, or a request whose body never finishes (expected: closed
//!   after `limits.handshake_timeout_ms`, after the keepalive PING goes
//!   unanswered, and answered UNAVAILABLE after
//!   `limits.request_read_timeout_ms`).
//!
//! Requests that need a gRPC status read go through tonic with a codec of
//! raw bytes ([`Raw`]), so the message can be anything; what tonic will
//! not send (streams past the peer's limit, a preface alone, half a
//! message) is written as HTTP/2 frames by hand ([`raw`]), with header
//! blocks of literal HPACK fields.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use prost::bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::args::{Distribution, RunArgs};
use crate::report::{Latency, RunResult};
use crate::scenario::Scenario;

pub const PUT_ITEMS: &str = "/prism.kv.v1.KeyValueService/PutItems";
pub const GET_ITEMS: &str = "/prism.kv.v1.KeyValueService/GetItems";
pub const SEARCH_EVENTS: &str = "/prism.timeseries.v1.TimeSeriesService/SearchEventRecords";

/// A codec of raw message bytes: the request is sent as given and the
/// response is not decoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Connects a channel to `endpoint` (plaintext or `https://` with the
/// system roots).
pub async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    prism_client::channel(endpoint, &prism_client::Tls::default())
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

/// Sends `message` as one unary request to `path` and returns the status
/// (`Ok` when the call succeeded).
pub async fn unary(channel: Channel, path: &'static str, message: Bytes) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(format!("not ready: {e}"));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc.unary(tonic::Request::new(message), path, Raw).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// Appends a length-delimited protobuf field.
fn field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A PutItemsRequest on `namespace` with one value of `value_bytes` bytes.
pub fn oversized_put(namespace: &str, value_bytes: usize) -> Bytes {
    let mut item = Vec::with_capacity(value_bytes + 16);
    field(&mut item, 2, &vec![b'x'; value_bytes]);
    let mut request = Vec::with_capacity(item.len() + 64);
    field(&mut request, 1, namespace.as_bytes());
    field(&mut request, 2, b"big");
    field(&mut request, 3, &item);
    Bytes::from(request)
}

/// A SearchEventRecordsRequest on `namespace` whose filter nests `depth`
/// levels of `and` (each a TagFilter holding a TagFilterList), around one
/// `equals`.
pub fn nested_search(namespace: &str, depth: usize) -> Bytes {
    let mut equals = Vec::new();
    field(&mut equals, 1, b"k");
    field(&mut equals, 2, b"v");
    let mut filter = Vec::new();
    field(&mut filter, 1, &equals);
    for _ in 0..depth {
        let mut list = Vec::with_capacity(filter.len() + 4);
        field(&mut list, 1, &filter);
        filter.clear();
        field(&mut filter, 3, &list);
    }
    let mut request = Vec::with_capacity(filter.len() + 64);
    field(&mut request, 1, namespace.as_bytes());
    field(&mut request, 4, &filter);
    Bytes::from(request)
}

/// A unary request whose one message is sent but whose body never ends:
/// the gateway must answer it when `limits.request_read_timeout_ms` runs
/// out. Returns the status and how long the answer took.
pub async fn unfinished_body(channel: Channel, message: Bytes) -> (tonic::Status, Duration) {
    use tokio_stream::StreamExt;
    let start = Instant::now();
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return (tonic::Status::unavailable(format!("not ready: {e}")), start.elapsed());
    }
    let body = tokio_stream::iter([message]).chain(tokio_stream::pending());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(GET_ITEMS);
    let status = match grpc.client_streaming(tonic::Request::new(body), path, Raw).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    };
    (status, start.elapsed())
}

/// A GetItemsRequest of `id` on `namespace`.
pub fn get_request(namespace: &str, id: &str) -> Bytes {
    let mut request = Vec::new();
    field(&mut request, 1, namespace.as_bytes());
    field(&mut request, 2, id.as_bytes());
    Bytes::from(request)
}

/// HTTP/2 spoken by hand: just enough to do what a conforming client
/// library will not (RFC 9113 frames; header blocks of literal HPACK
/// fields without indexing, so no table is needed to write them and the
/// peer's blocks are skipped, never decoded).
pub mod raw {
    use std::io;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// RST_STREAM's code for a stream refused over the concurrency limit.
    pub const REFUSED_STREAM: u32 = 0x7;

    /// One frame received.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY.
        pub fn error_code(&self) -> Option<u32> {
            let at = match self.kind {
                RST_STREAM => 0,
                GOAWAY => 4,
                _ => return None,
            };
            let b = self.payload.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
    fn integer(out: &mut Vec<u8>, mut value: usize) {
        if value < 127 {
            out.push(value as u8);
            return;
        }
        out.push(127);
        value -= 127;
        while value >= 128 {
            out.push((value % 128) as u8 | 0x80);
            value /= 128;
        }
        out.push(value as u8);
    }

    /// A header block of literal fields without indexing, new names, no
    /// Huffman coding (RFC 7541 §6.2.2).
    pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            integer(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
            integer(&mut out, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// The header block of a gRPC request to `path`.
    pub fn grpc_request(authority: &str, path: &str, token: Option<&str>) -> Vec<u8> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        if let Some(b) = &bearer {
            fields.push(("authorization", b));
        }
        header_block(&fields)
    }

    /// A gRPC message frame's 5-byte header declaring `len` bytes.
    pub fn message_header(len: u32) -> [u8; 5] {
        let l = len.to_be_bytes();
        [0, l[0], l[1], l[2], l[3]]
    }

    /// One client connection, frames in and out.
    pub struct Conn {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
        next_stream: u32,
        pub authority: String,
    }

    impl Conn {
        /// A TCP connection that has said nothing yet.
        pub async fn connect(addr: &str) -> io::Result<Self> {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (read, writer) = stream.into_split();
            Ok(Self { reader: BufReader::new(read), writer, next_stream: 1, authority: addr.to_owned() })
        }

        /// Connects, sends the preface and empty SETTINGS, and waits for
        /// the server's SETTINGS (acknowledged, so its limits apply).
        pub async fn handshake(addr: &str) -> io::Result<Self> {
            let mut conn = Self::connect(addr).await?;
            conn.send(PREFACE).await?;
            conn.send(&frame(SETTINGS, 0, 0, &[])).await?;
            loop {
                match conn.next().await? {
                    Some(f) if f.kind == SETTINGS && f.flags & ACK == 0 => return Ok(conn),
                    Some(_) => {}
                    None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its SETTINGS")),
                }
            }
        }

        pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.writer.write_all(bytes).await
        }

        /// Takes the next client stream id (odd, increasing) without
        /// opening it.
        pub fn next_stream_id(&mut self) -> u32 {
            let id = self.next_stream;
            self.next_stream += 2;
            id
        }

        /// Opens a stream with `block` as its headers, then `data` (if any),
        /// ending the stream only when `end`. Returns its id.
        pub async fn open(&mut self, block: &[u8], data: Option<&[u8]>, end: bool) -> io::Result<u32> {
            let id = self.next_stream_id();
            let headers_end = if data.is_none() && end { END_STREAM } else { 0 };
            let mut out = frame(HEADERS, END_HEADERS | headers_end, id, block);
            if let Some(data) = data {
                out.extend(frame(DATA, if end { END_STREAM } else { 0 }, id, data));
            }
            self.send(&out).await?;
            Ok(id)
        }

        /// The next frame, `None` when the server closed the connection.
        /// SETTINGS and PINGs are acknowledged on the way, as a live client
        /// would.
        pub async fn next(&mut self) -> io::Result<Option<Frame>> {
            let mut head = [0u8; 9];
            match self.reader.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            match self.reader.read_exact(&mut payload).await {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            let f = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                self.send(&frame(SETTINGS, ACK, 0, &[])).await?;
            }
            if f.kind == PING && f.flags & ACK == 0 {
                self.send(&frame(PING, ACK, 0, &f.payload)).await?;
            }
            Ok(Some(f))
        }

        /// The next frame within `wait`: `Ok(None)` on close, `Err` on
        /// time out.
        pub async fn next_within(&mut self, wait: Duration) -> io::Result<Option<Frame>> {
            tokio::time::timeout(wait, self.next())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no frame"))?
        }
    }

    /// Reads (and discards) until the server closes `stream`, without
    /// acknowledging anything: a peer that has gone quiet. `Ok` once it
    /// is closed.
    pub async fn until_closed(stream: &mut TcpStream) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The attacks `abuse` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    Oversized,
    Nested,
    StreamFlood,
    Slowloris,
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Oversized => "oversized",
            Self::Nested => "nested",
            Self::StreamFlood => "stream-flood",
            Self::Slowloris => "slowloris",
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct AbuseArgs {
    /// The gateway attacked and measured (`host:port`, plaintext: the
    /// raw HTTP/2 attacks speak no TLS).
    #[arg(long)]
    pub target: String,
    /// Another tenant's KeyValue namespace, whose GetItems are measured.
    #[arg(long, default_value = "loadtest/kv")]
    pub namespace: String,
    /// Bearer token of that tenant's load (the attacks send none).
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The other tenant's load: GetItems per second, open loop.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Its bound on requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each phase measures (after `--warmup`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub phase: Duration,
    /// How long each phase's attack (and load) runs before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Records the other tenant's load reads (written once, first).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Attacks to run, each in a phase of its own.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "oversized,nested,stream-flood,slowloris")]
    pub attacks: Vec<Attack>,
    /// Concurrent senders of oversized and nested requests, and
    /// stream-flood connections.
    #[arg(long, default_value_t = 4)]
    pub attackers: usize,
    /// Bytes of an oversized request's value (above the gateway's
    /// `limits.max_message_bytes`; default 80 MiB, over its default).
    #[arg(long, default_value_t = 80 << 20)]
    pub oversized_bytes: usize,
    /// Connections the slowloris attack holds open (a third say nothing,
    /// a third only the preface, a third a request whose body never ends).
    #[arg(long, default_value_t = 300)]
    pub slowloris_connections: usize,
    /// Directory for `abuse.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What an attack saw, by outcome (a gRPC code name, or for the raw
/// attacks `refused_stream`, `goaway`, `closed_by_server`, …).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackStats {
    pub attempts: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Slowloris: how long the server let quiet connections live, seconds.
    pub held_s: Option<Held>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

/// The victim's numbers in one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Victim {
    pub ok: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub ok_per_s: f64,
    pub latency: Latency,
}

impl From<&RunResult> for Victim {
    fn from(r: &RunResult) -> Self {
        let mut errors_by_code = r.errors_by_code.clone();
        for (code, n) in &r.warmup_errors_by_code {
            *errors_by_code.entry(code.clone()).or_default() += n;
        }
        Self {
            ok: r.ok,
            errors: r.errors + r.warmup_errors,
            errors_by_code,
            ok_per_s: r.throughput_ops_per_s,
            latency: r.latency.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// `none` for the phases without an attack.
    pub attack: String,
    pub victim: Victim,
    pub attack_stats: Option<AttackStats>,
    /// The victim's p99 over the first phase's (no attack).
    pub p99_ratio: f64,
    pub p50_ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbuseResult {
    pub target: String,
    pub namespace: String,
    pub rate: u64,
    pub phase_s: f64,
    pub phases: Vec<Phase>,
}

impl AbuseResult {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} at {}/s on {} ({:.0}s a phase); p99 and p50 ratios against the first phase\n\
             {:<13} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9}  attack answered\n",
            self.namespace,
            self.rate,
            self.target,
            self.phase_s,
            "phase",
            "ok/s",
            "errors",
            "p50 µs",
            "p99 µs",
            "p50 ×",
            "p99 ×"
        );
        for p in &self.phases {
            let answered = p.attack_stats.as_ref().map_or(String::new(), |a| {
                let mut parts: Vec<String> = a.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
                if let Some(h) = &a.held_s {
                    parts.push(format!("held {:.1}–{:.1} s", h.min, h.max));
                }
                format!("{} attempts: {}", a.attempts, parts.join(", "))
            });
            s.push_str(&format!(
                "{:<13} {:>9.0} {:>7} {:>10.1} {:>10.1} {:>9.2} {:>9.2}  {answered}\n",
                p.attack,
                p.victim.ok_per_s,
                p.victim.errors,
                p.victim.latency.p50_us,
                p.victim.latency.p99_us,
                p.p50_ratio,
                p.p99_ratio
            ));
        }
        s
    }
}

/// Counts an attack's outcomes, from many tasks.
#[derive(Debug, Default)]
pub struct Tally {
    attempts: AtomicU64,
    outcomes: std::sync::Mutex<BTreeMap<String, u64>>,
    held: std::sync::Mutex<Vec<f64>>,
}

impl Tally {
    pub fn count(&self, outcome: &str) {
        if let Ok(mut m) = self.outcomes.lock() {
            *m.entry(outcome.to_owned()).or_default() += 1;
        }
    }

    pub fn stats(&self) -> AttackStats {
        let held = self.held.lock().map(|h| h.clone()).unwrap_or_default();
        AttackStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            outcomes: self.outcomes.lock().map(|m| m.clone()).unwrap_or_default(),
            held_s: (!held.is_empty()).then(|| Held {
                min: held.iter().copied().fold(f64::INFINITY, f64::min),
                mean: held.iter().sum::<f64>() / held.len() as f64,
                max: held.iter().copied().fold(0.0, f64::max),
            }),
        }
    }
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// Runs `attack` until `stop`, counting what it was answered.
async fn attack(kind: Attack, args: Arc<AbuseArgs>, tally: Arc<Tally>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    match kind {
        Attack::Oversized => {
            // One whole oversized request through tonic, for the status it
            // gets; then only what the gateway reads of one — a frame
            // header declaring the size and the first 16 KiB — by hand,
            // so the attackers do not spend the machine copying messages
            // the gateway never reads.
            let channel = channel(&args.target).await?;
            let status = unary(channel, PUT_ITEMS, oversized_put("attacker/kv", args.oversized_bytes)).await;
            tally.attempts.fetch_add(1, Ordering::Relaxed);
            tally.count(&code_name(&status));
            let declared = u32::try_from(args.oversized_bytes).unwrap_or(u32::MAX);
            let mut start = raw::message_header(declared).to_vec();
            start.resize(5 + (16 << 10), 0);
            for _ in 0..args.attackers {
                let (args, tally, stop, start) = (args.clone(), tally.clone(), stop.clone(), start.clone());
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        raw_requests(&args.target, PUT_ITEMS, &start, &tally, &stop).await;
                    }
                    anyhow::Ok(())
                });
            }
        }
        Attack::Nested => {
            let message = nested_search("attacker/ts", 10_000);
            for _ in 0..args.attackers {
                let (args, tally, stop, message) = (args.clone(), tally.clone(), stop.clone(), message.clone());
                tasks.spawn(async move {
                    let channel = channel(&args.target).await?;
                    while !stop.load(Ordering::Relaxed) {
                        tally.attempts.fetch_add(1, Ordering::Relaxed);
                        tally.count(&code_name(&unary(channel.clone(), SEARCH_EVENTS, message.clone()).await));
                    }
                    anyhow::Ok(())
                });
            }
        }
        Attack::StreamFlood => {
            for _ in 0..args.attackers {
                let (args, tally, stop) = (args.clone(), tally.clone(), stop.clone());
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        flood_once(&args.target, 1000, &tally, &stop).await;
                    }
                    anyhow::Ok(())
                });
            }
        }
        Attack::Slowloris => {
            for i in 0..args.slowloris_connections {
                let (args, tally, stop) = (args.clone(), tally.clone(), stop.clone());
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        tally.attempts.fetch_add(1, Ordering::Relaxed);
                        let outcome = match i % 3 {
                            0 => hold_silent(&args.target, false).await,
                            1 => hold_silent(&args.target, true).await,
                            _ => hold_unfinished(&args.target, &stop).await,
                        };
                        match outcome {
                            Ok((label, held)) => {
                                tally.count(label);
                                if let (Some(held), Ok(mut h)) = (held, tally.held.lock()) {
                                    h.push(held.as_secs_f64());
                                }
                            }
                            Err(e) => tally.count(&format!("error: {}", e.kind())),
                        }
                    }
                    anyhow::Ok(())
                });
            }
        }
    }
    // The holders block on reads: once told to stop, they are dropped.
    while !stop.load(Ordering::Relaxed) {
        if let Some(done) = tasks.try_join_next() {
            done.context("attacker")??;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.abort_all();
    Ok(())
}

/// On one raw connection, request after request to `path` whose body is
/// `data` and never ends, each awaited until the gateway ends its stream
/// (counted `answered` or `reset`), until `stop` or the connection closes.
pub async fn raw_requests(addr: &str, path: &str, data: &[u8], tally: &Tally, stop: &AtomicBool) {
    let Ok(mut conn) = raw::Conn::handshake(addr).await else {
        tally.count("connect_failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    };
    let block = raw::grpc_request(addr, path, None);
    while !stop.load(Ordering::Relaxed) {
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(id) = conn.open(&block, Some(data), false).await else {
            tally.count("closed_by_server");
            return;
        };
        loop {
            match conn.next_within(Duration::from_secs(1)).await {
                Ok(Some(f)) if f.stream == id && f.kind == raw::HEADERS && f.flags & raw::END_STREAM != 0 => {
                    tally.count("answered");
                    break;
                }
                Ok(Some(f)) if f.stream == id && f.kind == raw::RST_STREAM => {
                    tally.count("reset");
                    break;
                }
                Ok(Some(_)) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !stop.load(Ordering::Relaxed) => {}
                Ok(None) | Err(_) => {
                    tally.count("closed_by_server");
                    return;
                }
            }
        }
    }
}

/// One stream flood: a connection opening `streams` request streams at
/// once (headers only, bodies never sent), then reading until the server
/// closes it or has answered them all. Counts `refused_stream`,
/// `goaway`, `answered` and `closed_by_server`.
pub async fn flood_once(addr: &str, streams: usize, tally: &Tally, stop: &AtomicBool) {
    let Ok(mut conn) = raw::Conn::handshake(addr).await else {
        tally.count("connect_failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    };
    let block = raw::grpc_request(addr, GET_ITEMS, None);
    let mut burst = Vec::new();
    for _ in 0..streams {
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        let id = conn.next_stream_id();
        burst.extend(raw::frame(raw::HEADERS, raw::END_HEADERS, id, &block));
    }
    if conn.send(&burst).await.is_err() {
        tally.count("closed_by_server");
        return;
    }
    // A stream counts once, by what ended it first: an answer may be
    // followed by a reset of the request side the client never finished.
    let mut settled = std::collections::HashSet::new();
    while settled.len() < streams && !stop.load(Ordering::Relaxed) {
        match conn.next_within(Duration::from_secs(1)).await {
            Ok(Some(f)) if f.kind == raw::RST_STREAM => {
                if settled.insert(f.stream) {
                    let refused = f.error_code() == Some(raw::REFUSED_STREAM);
                    tally.count(if refused { "refused_stream" } else { "reset" });
                }
            }
            Ok(Some(f)) if f.kind == raw::HEADERS && f.flags & raw::END_STREAM != 0 => {
                if settled.insert(f.stream) {
                    tally.count("answered");
                }
            }
            Ok(Some(f)) if f.kind == raw::GOAWAY => {
                tally.count("goaway");
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) if stop.load(Ordering::Relaxed) => return,
            Ok(None) => {
                tally.count("closed_by_server");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                tally.count("closed_by_server");
                return;
            }
        }
    }
}

/// A connection that sends nothing (or only the HTTP/2 preface) and
/// acknowledges nothing, held until the server closes it. Returns
/// `closed_by_server` and how long that took.
pub async fn hold_silent(addr: &str, preface: bool) -> std::io::Result<(&'static str, Option<Duration>)> {
    use tokio::io::AsyncWriteExt;
    // Timed from before the connect: the server's handshake timer starts
    // at its accept, which can come before this task is polled again
    // after the connect (by 3 ms in a CI run), so a clock started after
    // it could read less than the timeout the server kept.
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    if preface {
        stream.write_all(raw::PREFACE).await?;
    }
    raw::until_closed(&mut stream).await?;
    Ok(("closed_by_server", Some(start.elapsed())))
}

/// A live connection (it answers PINGs) with one request whose message
/// is half sent: held until the server answers that stream. Returns
/// `answered` or `reset` and how long that took, or `closed_by_server`.
pub async fn hold_unfinished(addr: &str, stop: &AtomicBool) -> std::io::Result<(&'static str, Option<Duration>)> {
    let mut conn = raw::Conn::handshake(addr).await?;
    let start = Instant::now();
    let mut data = raw::message_header(100).to_vec();
    data.extend_from_slice(&[0; 10]);
    let id = conn.open(&raw::grpc_request(addr, GET_ITEMS, None), Some(&data), false).await?;
    while !stop.load(Ordering::Relaxed) {
        match conn.next_within(Duration::from_secs(1)).await {
            Ok(Some(f)) if f.stream == id && f.kind == raw::HEADERS && f.flags & raw::END_STREAM != 0 => {
                return Ok(("answered", Some(start.elapsed())));
            }
            Ok(Some(f)) if f.stream == id && f.kind == raw::RST_STREAM => return Ok(("reset", Some(start.elapsed()))),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(("closed_by_server", Some(start.elapsed()))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
    Ok(("stopped", None))
}

/// The victim's load for one phase: checked GetItems of preloaded keys.
fn victim_args(args: &AbuseArgs, preload: bool) -> RunArgs {
    RunArgs {
        target: crate::target::Target::Gateway(args.target.clone()),
        scenario: Scenario::KvGet,
        namespace: args.namespace.clone(),
        token: args.token.clone(),
        rate: Some(args.rate),
        concurrency: args.concurrency,
        connections: 1,
        pool_size: 1,
        duration: args.phase,
        warmup: args.warmup,
        keys: args.keys,
        distribution: Distribution::Uniform,
        zipf_exponent: 0.99,
        value_size: 100,
        read_fraction: 1.0,
        request_timeout: Duration::from_secs(5),
        max_error_rate: 0.0,
        out: None,
        label: None,
        no_preload: !preload,
        quiet: true,
        seed: 1,
    }
}

/// Runs the phases: none, each attack, none again.
pub async fn abuse(args: &AbuseArgs) -> anyhow::Result<AbuseResult> {
    anyhow::ensure!(
        !args.target.contains("://"),
        "--target must be host:port (the raw attacks speak plaintext HTTP/2)"
    );
    anyhow::ensure!(args.rate > 0 && args.attackers > 0, "--rate and --attackers must be at least 1");
    let args = Arc::new(args.clone());
    let mut phases: Vec<Phase> = Vec::new();
    let mut plan: Vec<Option<Attack>> = vec![None];
    plan.extend(args.attacks.iter().copied().map(Some));
    plan.push(None);
    for (i, kind) in plan.into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let attacker = kind.map(|k| tokio::spawn(attack(k, args.clone(), tally.clone(), stop.clone())));
        let victim = crate::runner::run_load(&victim_args(&args, i == 0)).await;
        stop.store(true, Ordering::Relaxed);
        if let Some(attacker) = attacker {
            attacker.await.context("attacker")??;
        }
        let victim = Victim::from(&victim?);
        let (p99_ratio, p50_ratio) = match phases.first() {
            Some(base) => (
                victim.latency.p99_us / base.victim.latency.p99_us.max(1e-9),
                victim.latency.p50_us / base.victim.latency.p50_us.max(1e-9),
            ),
            None => (1.0, 1.0),
        };
        let phase = Phase {
            attack: kind.map_or("none".to_owned(), |k| k.to_string()),
            victim,
            attack_stats: kind.map(|_| tally.stats()),
            p99_ratio,
            p50_ratio,
        };
        eprintln!(
            "{:<13} victim p99 {:.1} µs ({:.2}×), errors {}",
            phase.attack, phase.victim.latency.p99_us, phase.p99_ratio, phase.victim.errors
        );
        phases.push(phase);
    }
    Ok(AbuseResult {
        target: args.target.clone(),
        namespace: args.namespace.clone(),
        rate: args.rate,
        phase_s: args.phase.as_secs_f64(),
        phases,
    })
}

/// `prism-loadtest abuse`: the phases, the table, `abuse.json`; fails when
/// the other tenant saw any error.
pub async fn run(args: &AbuseArgs) -> anyhow::Result<AbuseResult> {
    let result = abuse(args).await?;
    print!("{}", result.table());
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("abuse.json");
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("  results: {}", path.display());
    }
    let errors: u64 = result.phases.iter().map(|p| p.victim.errors).sum();
    anyhow::ensure!(errors == 0, "the other tenant's requests failed {errors} times during the attacks");
    Ok(result)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn crafted_messages_decode_as_what_they_claim() {
        let put = prism_proto::kv::PutItemsRequest::decode(oversized_put("a/b", 1000)).expect("decodes");
        assert_eq!((put.namespace.as_str(), put.id.as_str(), put.items.len()), ("a/b", "big", 1));
        assert_eq!(put.items[0].value.len(), 1000);
        // 20 levels decode (and are refused by validation); 10 000 do not.
        let search = prism_proto::timeseries::SearchEventRecordsRequest::decode(nested_search("a/b", 20))
            .expect("shallow enough");
        let mut depth = 0;
        let mut filter = search.filter;
        while let Some(prism_proto::timeseries::TagFilter {
            filter: Some(prism_proto::timeseries::tag_filter::Filter::And(list)),
        }) = filter
        {
            depth += 1;
            filter = list.filters.into_iter().next();
        }
        assert_eq!(depth, 20);
        let e = prism_proto::timeseries::SearchEventRecordsRequest::decode(nested_search("a/b", 10_000))
            .expect_err("too deep");
        assert!(e.to_string().contains("recursion limit reached"), "{e}");
        let get = prism_proto::kv::GetItemsRequest::decode(get_request("a/b", "7")).expect("decodes");
        assert_eq!(get.id, "7");
    }

    #[test]
    fn header_blocks_are_literal_hpack() {
        let block = raw::header_block(&[("a", "b"), ("long", &"x".repeat(300))]);
        assert_eq!(&block[..5], &[0, 1, b'a', 1, b'b']);
        // 300 = 127 + 173: 0x7f, then 173 = 0xad (45 | 0x80), 1.
        assert_eq!(&block[5..11], &[0, 4, b'l', b'o', b'n', b'g']);
        assert_eq!(&block[11..14], &[0x7f, 0xad, 0x01]);
        assert_eq!(block.len(), 14 + 300);
        let f = raw::frame(raw::RST_STREAM, 0, 3, &7u32.to_be_bytes());
        assert_eq!(&f[..9], &[0, 0, 4, 3, 0, 0, 0, 0, 3]);
    }
}
