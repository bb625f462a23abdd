//! The one admin request rdkafka does not wrap: `IncrementalAlterConfigs`
//! (Kafka API key 44, KIP-339), which sets some of a topic's configs and
//! leaves the others as they are.
//!
//! Why by hand: rdkafka 0.38 wraps only the legacy `AlterConfigs` (key
//! 33), which *replaces* a topic's dynamic configs — every one not sent
//! goes back to the broker's default, so changing `retention.ms` would
//! drop the `max.message.bytes` and `segment.ms` set at creation — and
//! which tansu, the broker the tests run, does not serve. librdkafka has
//! the incremental call, but reaching it from Rust takes `unsafe` FFI,
//! which the workspace forbids. Version 0 of the request is a few fixed
//! fields, so it is written here, with a unit test of its bytes.
//!
//! One request per call, on a connection of its own to the first broker of
//! the namespace's list that answers, bounded by the plugin's request
//! timeout: config changes are rare (a spec update), so nothing is pooled.
//! Any broker takes a topic's config change (it forwards it to the
//! controller). Plaintext only, like every connection of this plugin.

use std::time::Duration;

use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{KafkaError, Result};

const INCREMENTAL_ALTER_CONFIGS: i16 = 44;
const RESOURCE_TOPIC: i8 = 2;
const OP_SET: i8 = 0;
const CLIENT_ID: &str = "prism";
/// The largest response read: one resource's answer is far smaller.
const MAX_RESPONSE: usize = 1 << 20;

/// Sets `configs` (name, value) of `topic` on the brokers of `bootstrap`
/// (`host:port,host:port`), leaving its other configs as they are. The
/// broker's refusal is `Err(Refused(code, message))`; everything else that
/// fails (no broker answers, a timeout, a garbled answer) is
/// `Err(Failed(error))`.
pub async fn set_topic_configs(
    bootstrap: &str,
    topic: &str,
    configs: &[(&str, &str)],
    timeout: Duration,
) -> std::result::Result<(), Outcome> {
    let request = incremental_alter_configs(1, topic, configs);
    let response = tokio::time::timeout(timeout, exchange(bootstrap, &request))
        .await
        .map_err(|_| Outcome::Failed(KafkaError::Timeout("alter topic configs")))?
        .map_err(Outcome::Failed)?;
    match parse_response(1, &response).map_err(Outcome::Failed)? {
        (0, _) => Ok(()),
        (code, message) => Err(Outcome::Refused(code_name(code), message.unwrap_or_default())),
    }
}

/// Why [`set_topic_configs`] did not set them.
#[derive(Debug)]
pub enum Outcome {
    /// The broker answered with this error (its name, and its message).
    Refused(String, String),
    /// No answer, or none that could be read.
    Failed(KafkaError),
}

/// The name of a Kafka error code (`INVALID_CONFIG`), as librdkafka knows
/// them, else the number.
fn code_name(code: i16) -> String {
    match RDKafkaRespErr::try_from(i32::from(code)) {
        Ok(known) => format!("{:?}", RDKafkaErrorCode::from(known)),
        Err(_) => format!("error code {code}"),
    }
}

/// Sends `request` to the first broker of `bootstrap` that accepts a
/// connection and returns its response (without the size prefix).
async fn exchange(bootstrap: &str, request: &[u8]) -> Result<Vec<u8>> {
    let mut last = None;
    for broker in bootstrap.split(',') {
        match TcpStream::connect(broker).await {
            Ok(mut stream) => {
                stream.write_all(request).await.map_err(io("send an admin request"))?;
                let size = stream.read_i32().await.map_err(io("read an admin response"))?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s <= MAX_RESPONSE)
                    .ok_or_else(|| KafkaError::Corrupt(format!("an admin response of {size} bytes")))?;
                let mut body = vec![0; size];
                stream.read_exact(&mut body).await.map_err(io("read an admin response"))?;
                return Ok(body);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(io("connect to a broker")(last.unwrap_or_else(|| std::io::Error::other("no broker listed"))))
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> KafkaError {
    move |e| KafkaError::Io { what, source: e }
}

/// The bytes of an `IncrementalAlterConfigs` v0 request, size prefix
/// included: request header v1 (api key, version, correlation id, client
/// id), then one TOPIC resource with `configs` to SET, not validate-only.
fn incremental_alter_configs(correlation: i32, topic: &str, configs: &[(&str, &str)]) -> Vec<u8> {
    let mut b =
        Vec::with_capacity(64 + topic.len() + configs.iter().map(|(n, v)| 5 + n.len() + v.len()).sum::<usize>());
    b.extend_from_slice(&[0; 4]); // size, filled in below
    b.extend_from_slice(&INCREMENTAL_ALTER_CONFIGS.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes()); // version 0
    b.extend_from_slice(&correlation.to_be_bytes());
    string(&mut b, CLIENT_ID);
    b.extend_from_slice(&1i32.to_be_bytes()); // one resource
    b.extend_from_slice(&RESOURCE_TOPIC.to_be_bytes());
    string(&mut b, topic);
    b.extend_from_slice(&i32::try_from(configs.len()).unwrap_or(i32::MAX).to_be_bytes());
    for (name, value) in configs {
        string(&mut b, name);
        b.extend_from_slice(&OP_SET.to_be_bytes());
        string(&mut b, value);
    }
    b.push(0); // validate_only = false
    let size = i32::try_from(b.len() - 4).unwrap_or(i32::MAX);
    b[..4].copy_from_slice(&size.to_be_bytes());
    b
}

/// A Kafka `STRING` (also a non-null `NULLABLE_STRING`): an `i16` length,
/// then the bytes. Topic and config names are short; values are numbers.
fn string(b: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// Reads an `IncrementalAlterConfigs` v0 response (header v0: the
/// correlation id; then throttle time and one result per resource) and
/// returns the one resource's error code and message.
fn parse_response(correlation: i32, body: &[u8]) -> Result<(i16, Option<String>)> {
    let mut r = Reader { b: body };
    let got = r.i32()?;
    if got != correlation {
        return Err(KafkaError::Corrupt(format!("an admin response for request {got}, not {correlation}")));
    }
    let _throttle_ms = r.i32()?;
    if r.i32()? < 1 {
        return Err(KafkaError::Corrupt("an admin response without a result".into()));
    }
    let code = r.i16()?;
    let message = r.nullable_string()?;
    Ok((code, message))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self.b.split_first_chunk::<N>().ok_or_else(truncated)?;
        self.b = rest;
        Ok(*head)
    }

    fn i16(&mut self) -> Result<i16> {
        self.take().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32> {
        self.take().map(i32::from_be_bytes)
    }

    fn nullable_string(&mut self) -> Result<Option<String>> {
        let Ok(len) = usize::try_from(self.i16()?) else { return Ok(None) };
        let bytes = self.b.get(..len).ok_or_else(truncated)?;
        self.b = &self.b[len..];
        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
    }
}

fn truncated() -> KafkaError {
    KafkaError::Corrupt("a truncated admin response".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let got = incremental_alter_configs(7, "t", &[("retention.ms", "60000")]);
        let mut want: Vec<u8> = Vec::new();
        let body: &[&[u8]] = &[
            &[0, 44, 0, 0],  // api key 44, version 0
            &[0, 0, 0, 7],   // correlation id
            &[0, 5],         // client id
            b"prism",        //
            &[0, 0, 0, 1],   // one resource
            &[2],            // TOPIC
            &[0, 1],         //
            b"t",            //
            &[0, 0, 0, 1],   // one config
            &[0, 12],        //
            b"retention.ms", //
            &[0],            // SET
            &[0, 5],         //
            b"60000",        //
            &[0],            // validate_only
        ];
        let len: usize = body.iter().map(|p| p.len()).sum();
        want.extend_from_slice(&(len as i32).to_be_bytes());
        body.iter().for_each(|p| want.extend_from_slice(p));
        assert_eq!(got, want);
    }

    #[test]
    fn responses() {
        let mut ok = Vec::new();
        ok.extend_from_slice(&1i32.to_be_bytes());
        ok.extend_from_slice(&0i32.to_be_bytes());
        ok.extend_from_slice(&1i32.to_be_bytes());
        ok.extend_from_slice(&40i16.to_be_bytes());
        ok.extend_from_slice(&3i16.to_be_bytes());
        ok.extend_from_slice(b"bad");
        assert_eq!(parse_response(1, &ok).expect("parses"), (40, Some("bad".into())));
        assert!(parse_response(2, &ok).is_err(), "another request's answer");
        assert!(parse_response(1, &ok[..ok.len() - 1]).is_err(), "truncated");
        assert_eq!(code_name(40), "InvalidConfig");
        assert_eq!(code_name(9999), "error code 9999");
    }
}
