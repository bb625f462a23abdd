//! `prism-loadtest grpc-frame`: one gRPC request body as a generic HTTP/2
//! load generator sends it (`h2load -d FILE`): the 5-byte gRPC message
//! prefix (not compressed, length big-endian) and the serialized request.
//! A generator that sends the same bytes over and over costs far less CPU
//! per request than a gRPC client, so it measures the server rather than
//! itself. Prints the request's path (`/prism.kv.v1.KeyValueService/GetItems`).
//!
//! `--check ADDR` first sends the same request once through a real client
//! and fails unless it succeeds: h2load counts HTTP status 200, and a gRPC
//! error is a 200 too.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use prism_proto::kv;
use prism_proto::timeseries as ts;
use prost::Message;

use crate::scenario::value_for;

/// What the frame asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Call {
    /// GetItems of record `--id` (every item).
    GetItems,
    /// PutItems of one item (`--key`, `--value-size` bytes) into `--id`.
    PutItems,
    /// WriteEventRecordsSync of one event of series `--id`, stamped now.
    WriteEvent,
    /// ReadEventRecords of series `--id`, every event time, one page of
    /// at most `--limit` events.
    ReadEvents,
}

#[derive(Debug, Clone, Args)]
pub struct FrameArgs {
    #[arg(long, value_enum)]
    pub call: Call,
    /// Namespace (`tenant/name`).
    #[arg(long)]
    pub namespace: String,
    /// The record id (the series for write-event).
    #[arg(long, default_value = "0")]
    pub id: String,
    /// The item's key.
    #[arg(long, default_value = "")]
    pub key: String,
    /// Bytes of the value written.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Events a read-events page holds at most (0: no limit but the
    /// page's bytes).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Where to write the frame.
    #[arg(long)]
    pub out: PathBuf,
    /// Send the request once to this gateway (`host:port`) and fail
    /// unless it succeeds.
    #[arg(long)]
    pub check: Option<String>,
    /// Bearer token for `--check`.
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

enum Request {
    Get(kv::GetItemsRequest),
    Put(kv::PutItemsRequest),
    Write(ts::WriteEventRecordsRequest),
    Read(ts::ReadEventRecordsRequest),
}

fn request(args: &FrameArgs) -> Request {
    let value = value_for(&args.id, args.value_size);
    match args.call {
        Call::GetItems => Request::Get(kv::GetItemsRequest {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            ..Default::default()
        }),
        Call::PutItems => Request::Put(kv::PutItemsRequest {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            items: vec![kv::Item { key: args.key.clone().into_bytes(), value, ttl: None }],
            idempotency_token: None,
        }),
        Call::WriteEvent => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Request::Write(ts::WriteEventRecordsRequest {
                namespace: args.namespace.clone(),
                events: vec![ts::Event {
                    time_series_id: args.id.clone(),
                    event_time: Some(prost_types::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                    }),
                    event_id: format!("frame-{}", now.as_micros()),
                    items: vec![ts::EventItem { key: args.key.clone().into_bytes(), value }],
                    tags: Default::default(),
                    schema_version: 0,
                }],
            })
        }
        Call::ReadEvents => Request::Read(ts::ReadEventRecordsRequest {
            namespace: args.namespace.clone(),
            time_series_id: args.id.clone(),
            limit: args.limit,
            ..Default::default()
        }),
    }
}

/// The request's path and its body with the gRPC prefix.
fn frame(request: &Request) -> (&'static str, Vec<u8>) {
    let (path, message) = match request {
        Request::Get(r) => ("/prism.kv.v1.KeyValueService/GetItems", r.encode_to_vec()),
        Request::Put(r) => ("/prism.kv.v1.KeyValueService/PutItems", r.encode_to_vec()),
        Request::Write(r) => ("/prism.timeseries.v1.TimeSeriesService/WriteEventRecordsSync", r.encode_to_vec()),
        Request::Read(r) => ("/prism.timeseries.v1.TimeSeriesService/ReadEventRecords", r.encode_to_vec()),
    };
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0); // not compressed
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    body.extend_from_slice(&message);
    (path, body)
}

/// Sends `request` once to `address`; fails unless the answer is OK (and,
/// for a write, accepted).
async fn check(address: &str, token: Option<&str>, request: Request) -> anyhow::Result<()> {
    let unreachable = || format!("{address} is unreachable");
    match request {
        Request::Get(r) => {
            prism_client::key_value(address, token).await.with_context(unreachable)?.get_items(r).await?;
        }
        Request::Put(r) => {
            prism_client::key_value(address, token).await.with_context(unreachable)?.put_items(r).await?;
        }
        Request::Write(r) => {
            let answer = prism_client::time_series(address, token)
                .await
                .with_context(unreachable)?
                .write_event_records_sync(r)
                .await?
                .into_inner();
            anyhow::ensure!(answer.accepted == 1, "the event was not accepted");
        }
        Request::Read(r) => {
            prism_client::time_series(address, token).await.with_context(unreachable)?.read_event_records(r).await?;
        }
    }
    Ok(())
}

/// Checks the request if asked, writes the frame and prints its path.
pub async fn run(args: &FrameArgs) -> anyhow::Result<()> {
    if let Some(address) = &args.check {
        check(address, args.token.as_deref(), request(args)).await.context("the check request failed")?;
    }
    let (path, body) = frame(&request(args));
    std::fs::write(&args.out, body).with_context(|| format!("write {}", args.out.display()))?;
    println!("{path}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_prefixed_messages() {
        let args = FrameArgs {
            call: Call::GetItems,
            namespace: "bench/pg".into(),
            id: "0".into(),
            key: String::new(),
            value_size: 100,
            limit: 100,
            out: PathBuf::new(),
            check: None,
            token: None,
        };
        let (path, body) = frame(&request(&args));
        assert_eq!(path, "/prism.kv.v1.KeyValueService/GetItems");
        assert_eq!(body[0], 0);
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!(len, body.len() - 5);
        let decoded = kv::GetItemsRequest::decode(&body[5..]).expect("a GetItemsRequest");
        assert_eq!((decoded.namespace.as_str(), decoded.id.as_str()), ("bench/pg", "0"));

        let read = FrameArgs { call: Call::ReadEvents, id: "s".into(), limit: 7, ..args };
        let (path, body) = frame(&request(&read));
        assert_eq!(path, "/prism.timeseries.v1.TimeSeriesService/ReadEventRecords");
        let decoded = ts::ReadEventRecordsRequest::decode(&body[5..]).expect("a ReadEventRecordsRequest");
        assert_eq!((decoded.time_series_id.as_str(), decoded.limit, decoded.start), ("s", 7, None));
    }
}
