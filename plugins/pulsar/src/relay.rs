//! A loopback relay between the `pulsar` client and a plain-TCP broker
//! that gives every delivered message the payload checksum the client
//! insists on.
//!
//! *Why.* In Pulsar's binary protocol the checksum section of a payload
//! command (magic `0x0e01` + CRC32C) is optional: the Java and C++ clients
//! look for the magic (`Commands.hasChecksum`) and verify only when it is
//! there, and the Java broker itself delivers frames without it. The
//! `pulsar` crate (6.9, and every version before) does not: its decoder
//! reads `magic, checksum, metadata_size` unconditionally, so a
//! `CommandMessage` whose payload is `[metadata_size][metadata][payload]`
//! is misread (the metadata's first bytes become its size) and the whole
//! connection is dropped with "Error decoding payload frame". pulsar-lite
//! (0.2) stores messages without the checksum the producer sent and
//! delivers every stored message that way, so without this relay the
//! client could never read a topic's backlog — and everything else on
//! that connection (GetLastMessageId, ConsumerStats) failed with it.
//!
//! *What.* For each broker address the plugin talks to there is one
//! listener on `127.0.0.1`; the client connects there instead. Each
//! accepted connection is joined to a fresh connection to the broker.
//! Client to broker, the bytes pass untouched. Broker to client, frames are
//! read (buffered), passed in order, gathered into one write per read, and
//! two kinds are changed:
//! - a `CommandMessage` payload without the checksum gets magic and CRC32C
//!   (broker entry metadata, magic `0x0e02`, which this client never asked
//!   for, is dropped first); a payload with a checksum passes as is, for
//!   the client to verify;
//! - a `CommandLookupTopicResponse` naming a `pulsar://` broker names that
//!   broker's relay instead, so the client's connection to the topic's
//!   owner goes through a relay too.
//!
//! `pulsar+ssl://` brokers are reached directly: a relay would have to
//! end TLS. (Apache Pulsar brokers deliver what the producer sent, and this
//! plugin's producer always sends the checksum.)
//!
//! The relay can go once the `pulsar` crate's decoder accepts payloads
//! without the checksum.
//!
//! Public for the gateway's bench (`gateway/benches/pulsar.rs`): its bare
//! `pulsar` reader needs the relay against pulsar-lite as much as the
//! plugin does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pulsar::proto::BaseCommand;
use pulsar::proto::base_command::Type;
use pulsar_prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::lock;

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
const CHECKSUM_MAGIC: [u8; 2] = [0x0e, 0x01];
const BROKER_ENTRY_MAGIC: [u8; 2] = [0x0e, 0x02];
/// Larger frames are refused: Pulsar's own limit is the 5 MiB message plus
/// a little framing.
const MAX_FRAME: usize = 64 << 20;
/// Bytes read from the broker at a time, and gathered before a write.
const BUFFER: usize = 64 << 10;

/// The relays of one plugin: one listener per broker address. Dropping it
/// stops the listeners; connections already relayed end with the
/// client's.
#[derive(Debug)]
pub struct Relays {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connect_timeout: Duration,
    /// Broker `host:port` → the relay's address and its listener task.
    listeners: Mutex<HashMap<String, (SocketAddr, AbortHandle)>>,
}

impl Drop for Relays {
    fn drop(&mut self) {
        for (_, (_, task)) in lock(&self.inner.listeners).drain() {
            task.abort();
        }
    }
}

impl Relays {
    pub fn new(connect_timeout: Duration) -> Self {
        Self { inner: Arc::new(Inner { connect_timeout, listeners: Mutex::default() }) }
    }

    /// The URL the client should use for `service_url`: a relay's for a
    /// `pulsar://` broker, `service_url` itself otherwise.
    pub fn url(&self, service_url: &str) -> std::io::Result<String> {
        match broker_address(service_url) {
            Some(broker) => Ok(format!("pulsar://{}", relay_for(&self.inner, broker)?)),
            None => Ok(service_url.to_owned()),
        }
    }
}

/// `host:port` of a `pulsar://` URL.
fn broker_address(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("pulsar://")?;
    let address = rest.split('/').next().unwrap_or(rest);
    (!address.is_empty()).then_some(address)
}

/// The address of `broker`'s relay, started on first need.
/// Synchronous (binding a loopback port does not block), so that a relay
/// can start relays. Runs on a tokio runtime.
fn relay_for(inner: &Arc<Inner>, broker: &str) -> std::io::Result<SocketAddr> {
    let mut listeners = lock(&inner.listeners);
    if let Some((address, _)) = listeners.get(broker) {
        return Ok(*address);
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(accept(Arc::downgrade(inner), listener, broker.to_owned()));
    listeners.insert(broker.to_owned(), (address, task.abort_handle()));
    Ok(address)
}

async fn accept(inner: Weak<Inner>, listener: TcpListener, broker: String) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of descriptors, most likely: back off, do not spin.
                tracing::warn!(%error, "pulsar relay: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(strong) = inner.upgrade() else { return };
        let connect_timeout = strong.connect_timeout;
        drop(strong);
        let inner = inner.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            // A broker that cannot be reached: the client sees its
            // connection closed, as it would have seen it refused.
            let Ok(Ok(upstream)) = tokio::time::timeout(connect_timeout, TcpStream::connect(&broker)).await else {
                tracing::debug!("pulsar relay: the broker is unreachable");
                return;
            };
            relay(inner, client, upstream).await;
        });
    }
}

/// Joins `client` and `upstream` until either side closes.
async fn relay(inner: Weak<Inner>, client: TcpStream, upstream: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let to_broker = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    };
    let to_client = async {
        if let Err(e) = frames(&inner, &mut upstream_read, &mut client_write).await {
            tracing::debug!(error = %e, "pulsar relay: connection ended");
        }
        let _ = client_write.shutdown().await;
    };
    // Either direction ending ends the connection.
    tokio::select! {
        () = to_broker => {}
        () = to_client => {}
    }
}

/// Passes the broker's frames to the client, amended (see the module).
///
/// Reads are buffered and writes gathered: the frames one read brought in
/// leave in one write, sent before the relay waits for more, so a backlog
/// costs a few system calls per buffer, not two per frame each way, and
/// no frame waits for a later one.
async fn frames(
    inner: &Weak<Inner>,
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<()> {
    let mut from = BufReader::with_capacity(BUFFER, from);
    let mut out = Vec::with_capacity(BUFFER);
    let mut frame = Vec::new();
    loop {
        if !out.is_empty() && !whole_frame(from.buffer()) {
            to.write_all(&out).await?;
            out.clear();
        }
        let mut size = [0u8; 4];
        match from.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let size = u32::from_be_bytes(size) as usize;
        if size > MAX_FRAME {
            return Err(invalid(format!("a frame of {size} bytes")));
        }
        frame.resize(size, 0);
        from.read_exact(&mut frame).await?;
        match amend(&frame)? {
            Amended::Same => put_frame(&mut out, &frame),
            Amended::Message(amended) => put_frame(&mut out, &amended),
            Amended::Lookup(mut command, broker) => {
                let address = match inner.upgrade() {
                    Some(inner) => relay_for(&inner, &broker)?,
                    None => return Ok(()),
                };
                if let Some(lookup) = command.lookup_topic_response.as_mut() {
                    lookup.broker_service_url = Some(format!("pulsar://{address}"));
                }
                let mut amended = Vec::with_capacity(size + 16);
                put_command(&mut amended, &command);
                put_frame(&mut out, &amended);
            }
        }
        if out.len() >= BUFFER {
            to.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Whether `buffered` starts with a whole frame: one that can be read
/// without waiting.
fn whole_frame(buffered: &[u8]) -> bool {
    match buffered.get(..4) {
        Some(size) => buffered.len() - 4 >= u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize,
        None => false,
    }
}

/// `frame` with its leading total size.
fn put_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// What becomes of one frame (without its leading total size).
#[derive(Debug)]
enum Amended {
    Same,
    /// The message frame with the checksum section added.
    Message(Vec<u8>),
    /// A lookup answer naming this plain-TCP broker: to be sent to its relay.
    Lookup(Box<BaseCommand>, String),
}

fn amend(frame: &[u8]) -> std::io::Result<Amended> {
    let command_size = frame.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let Some(head) = command_size.and_then(|n| frame.get(..4 + n)) else {
        return Err(invalid("a frame shorter than its command".into()));
    };
    let sent = &frame[head.len()..];
    let command =
        BaseCommand::decode(&head[4..]).map_err(|e| invalid(format!("a command that does not decode: {e}")))?;
    match command.r#type() {
        Type::Message if !sent.is_empty() => {
            let mut payload = sent;
            if payload.starts_with(&BROKER_ENTRY_MAGIC) {
                let size = payload.get(2..6).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
                payload = size
                    .and_then(|n| payload.get(6 + n..))
                    .ok_or_else(|| invalid("broker entry metadata longer than its frame".into()))?;
            }
            let checked = payload.starts_with(&CHECKSUM_MAGIC);
            if checked && payload.len() == sent.len() {
                return Ok(Amended::Same);
            }
            let mut out = Vec::with_capacity(head.len() + 6 + payload.len());
            out.extend_from_slice(head);
            if !checked {
                // CRC32C of everything after it: metadata size, metadata, payload.
                out.extend_from_slice(&CHECKSUM_MAGIC);
                out.extend_from_slice(&CRC32C.checksum(payload).to_be_bytes());
            }
            out.extend_from_slice(payload);
            Ok(Amended::Message(out))
        }
        Type::LookupResponse => {
            let broker = command
                .lookup_topic_response
                .as_ref()
                .and_then(|l| l.broker_service_url.as_deref())
                .and_then(broker_address)
                .map(str::to_owned);
            Ok(broker.map_or(Amended::Same, |broker| Amended::Lookup(Box::new(command), broker)))
        }
        _ => Ok(Amended::Same),
    }
}

/// A frame without payload (and without its leading total size).
fn put_command(out: &mut Vec<u8>, command: &BaseCommand) {
    let encoded = command.encode_to_vec();
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("pulsar relay: {what}"))
}

#[cfg(test)]
mod tests {
    use pulsar::proto::{CommandLookupTopicResponse, CommandMessage, MessageIdData};

    use super::*;

    fn message_frame(sent: &[u8]) -> Vec<u8> {
        let command = BaseCommand {
            r#type: Type::Message as i32,
            message: Some(CommandMessage {
                consumer_id: 1,
                message_id: MessageIdData { ledger_id: 1, entry_id: 2, ..MessageIdData::default() },
                ..CommandMessage::default()
            }),
            ..BaseCommand::default()
        };
        let mut frame = Vec::new();
        put_command(&mut frame, &command);
        frame.extend_from_slice(sent);
        frame
    }

    /// `[metadata_size][metadata][payload]`, as pulsar-lite delivers it.
    fn unchecked() -> Vec<u8> {
        let metadata = b"\x0a\x0aproducer-0\x10\x00\x18\x01";
        let mut sent = (metadata.len() as u32).to_be_bytes().to_vec();
        sent.extend_from_slice(metadata);
        sent.extend_from_slice(b"m0");
        sent
    }

    #[test]
    fn a_message_without_checksum_gets_one() {
        let sent = unchecked();
        let frame = message_frame(&sent);
        let Amended::Message(out) = amend(&frame).expect("amends") else { panic!("not amended") };
        let head = frame.len() - sent.len();
        assert_eq!(out[..head], frame[..head], "the command is unchanged");
        assert_eq!(out[head..head + 2], CHECKSUM_MAGIC);
        assert_eq!(out[head + 2..head + 6], CRC32C.checksum(&sent).to_be_bytes());
        assert_eq!(out[head + 6..], sent[..]);

        assert!(matches!(amend(&out), Ok(Amended::Same)), "a checksummed message passes as is");
    }

    #[test]
    fn broker_entry_metadata_is_dropped() {
        let sent = unchecked();
        let mut with_entry = BROKER_ENTRY_MAGIC.to_vec();
        with_entry.extend_from_slice(&3u32.to_be_bytes());
        with_entry.extend_from_slice(b"\x08\x01\x00");
        with_entry.extend_from_slice(&sent);
        let Amended::Message(out) = amend(&message_frame(&with_entry)).expect("amends") else { panic!("not amended") };
        let Amended::Message(plain) = amend(&message_frame(&sent)).expect("amends") else { panic!("not amended") };
        assert_eq!(out, plain);
    }

    #[test]
    fn lookups_of_plain_brokers_are_redirected_and_bad_frames_refused() {
        let command = BaseCommand {
            r#type: Type::LookupResponse as i32,
            lookup_topic_response: Some(CommandLookupTopicResponse {
                broker_service_url: Some("pulsar://10.0.0.1:6650".into()),
                request_id: 3,
                ..CommandLookupTopicResponse::default()
            }),
            ..BaseCommand::default()
        };
        let mut frame = Vec::new();
        put_command(&mut frame, &command);
        assert!(matches!(amend(&frame), Ok(Amended::Lookup(_, broker)) if broker == "10.0.0.1:6650"));

        assert_eq!(broker_address("pulsar+ssl://b:6651"), None, "TLS brokers are reached directly");
        assert_eq!(broker_address("pulsar://b:6650/"), Some("b:6650"));
        assert!(amend(&[0, 0, 0, 9, 1]).is_err(), "a frame shorter than its command");
    }
}
