//! Following a namespace's writes for its tails
//! ([`TimeSeriesHandle::follow`](prism_plugin_api::ts::TimeSeriesHandle::follow))
//! with LISTEN/NOTIFY.
//!
//! - **Writers notify.** Every write's transaction, before it commits,
//!   sends the identities `(time_series_id, event_time, event_id)` of the
//!   events it stored anything new of (a head or an item: a write of
//!   nothing new is no write), in the write's order, as JSON on the
//!   incarnation's channel `<base>_tail`, in payloads under PostgreSQL's
//!   8000 bytes ([`payloads`]). PostgreSQL delivers a notification at its
//!   transaction's commit, in commit order, to every session listening by
//!   then; a rolled-back write sends nothing. So every gateway replica's
//!   writes, and any other writer that notifies the same way, reach every
//!   listener. (A writer that inserts rows without notifying is not seen:
//!   there is no insertion order to poll by.)
//! - **A follower listens.** `follow` opens a connection of its own (not
//!   the pool's: a pooled connection's notifications are dropped) and
//!   returns once its `LISTEN` is done: every write acknowledged after
//!   that is delivered. Each notification's events are read back through
//!   the pool — heads and items, items in key order — so a tail delivers
//!   an event as a read returns it (merged, first write wins); an event
//!   gone since (reclaimed) is skipped.
//! - **It never goes quiet silently.** The listening connection is polled
//!   every [`PING`] (`SELECT 1`, bounded by the request timeout) besides
//!   TCP keepalives: a connection that failed or closed ends the feed
//!   with an error, because notifications sent while no one listened are
//!   lost; the tail is ended (UNAVAILABLE) rather than left with a gap.
//! - **Cost.** A notifying commit takes PostgreSQL's global notify lock,
//!   so notifying writes of the whole database commit one at a time at
//!   that step; every write pays it, tailed or not, since a replica
//!   cannot know whether another one has a tail.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prism_plugin_api::PluginError;
use prism_plugin_api::ts::{Event, Feed};
use tokio::sync::mpsc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresPluginConfig;
use crate::error::{PostgresError, Result};
use crate::kv::Target;
use crate::kv::names::quote_ident;

/// PostgreSQL refuses a notification payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7999;
/// How often the listening connection is checked.
pub(crate) const PING: Duration = Duration::from_secs(5);
/// Notifications waiting between the connection and the feed.
const IN_FLIGHT: usize = 64;

/// One event's identity as notified.
pub(crate) type Identity = (String, i64, String);

/// The channel of `t`'s tails, as `pg_notify` takes it (unquoted).
pub(crate) fn channel(t: &Target) -> String {
    t.names.tail_channel()
}

/// `identities` as notification payloads, each a JSON array of `[series,
/// time, id]` under [`MAX_PAYLOAD`] bytes, in order. An identity too long
/// for a payload of its own (ids far past the gateway's 256 bytes) is
/// refused.
pub(crate) fn payloads<'a>(identities: impl IntoIterator<Item = (&'a str, i64, &'a str)>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut current = String::from("[");
    for (series, time, id) in identities {
        let one = serde_json::to_string(&(series, time, id)).map_err(|e| PostgresError::Corrupt(e.to_string()))?;
        if one.len() + 2 > MAX_PAYLOAD {
            return Err(PostgresError::invalid("event_id", "with its time_series_id is too long to notify tails"));
        }
        if current.len() + one.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            out.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&one);
    }
    if current.len() > 1 {
        current.push(']');
        out.push(current);
    }
    Ok(out)
}

fn lost(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PluginError {
    PluginError::unavailable("the postgres tail listener lost its connection; events may have been missed", source)
}

/// Listens on `t`'s channel on a connection of its own; the feed reads
/// each notification's events back through `t`'s pool.
pub(crate) async fn follow(
    t: Arc<Target>,
    (config, tls): &(PostgresPluginConfig, Option<MakeRustlsConnect>),
    request_timeout: Duration,
) -> Result<Feed> {
    let (pg, tls) = t.settings.connection(config, tls.as_ref())?;
    let (client, notes) = match tls {
        None => listen(&pg, tokio_postgres::NoTls).await?,
        Some(tls) => listen(&pg, tls).await?,
    };
    client.batch_execute(&format!("LISTEN {}", quote_ident(&channel(&t)))).await?;
    let state = Some((client, notes, t));
    Ok(futures_util::stream::unfold(state, move |state| async move {
        let (client, mut notes, t) = state?;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
        loop {
            tokio::select! {
                note = notes.recv() => {
                    let result = match note {
                        Some(Ok(payload)) => events(&t, &payload, request_timeout).await,
                        Some(Err(e)) => Err(lost(e)),
                        None => Err(lost("closed")),
                    };
                    return match result {
                        Ok(events) => Some((Ok(events), Some((client, notes, t)))),
                        Err(e) => Some((Err(e), None)),
                    };
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(request_timeout, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Some((Err(lost(e)), None)),
                        Err(_) => return Some((Err(lost("no answer to a ping")), None)),
                    }
                }
            }
        }
    })
    .boxed())
}

/// A connection of its own whose notifications' payloads arrive on the
/// receiver; an error or the end of the connection ends them.
async fn listen<T>(
    pg: &tokio_postgres::Config,
    tls: T,
) -> Result<(Client, mpsc::Receiver<std::result::Result<String, tokio_postgres::Error>>)>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = pg.connect(tls).await?;
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(async move {
        loop {
            match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n.payload().to_owned())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, rx))
}

/// The events a notification names, as a read returns them, in its
/// order; those gone since are skipped.
async fn events(t: &Target, payload: &str, timeout: Duration) -> prism_plugin_api::Result<Vec<Event>> {
    let identities: Vec<Identity> = serde_json::from_str(payload)
        .map_err(|e| PostgresError::Corrupt(format!("a tail notification that is not ours: {e}")))?;
    let read = async {
        let series: Vec<&str> = identities.iter().map(|i| i.0.as_str()).collect();
        let times: Vec<i64> = identities.iter().map(|i| i.1).collect();
        let ids: Vec<&str> = identities.iter().map(|i| i.2.as_str()).collect();
        let oldest = times.iter().copied().min().unwrap_or_default();
        let newest = times.iter().copied().max().unwrap_or_default();
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 5] = [
            (&series, Type::TEXT_ARRAY),
            (&times, Type::INT8_ARRAY),
            (&ids, Type::TEXT_ARRAY),
            (&oldest, Type::INT8),
            (&newest, Type::INT8),
        ];
        let join = |table: &str, columns: &str, order: &str| {
            format!(
                "SELECT p.n, {columns}
                 FROM unnest($1::text[], $2::int8[], $3::text[]) WITH ORDINALITY AS p (s, t, e, n)
                 JOIN {table} x ON x.time_series_id = p.s COLLATE \"C\" AND x.event_time = p.t
                    AND x.event_id = p.e COLLATE \"C\"
                 WHERE x.event_time >= $4 AND x.event_time <= $5
                 ORDER BY {order}"
            )
        };
        let client = crate::lease::lease(&t.pool).await?;
        let heads = client.query_typed(&join(&t.ts_events(), "x.tags::text", "p.n"), &params).await?;
        let items = client.query_typed(&join(&t.ts_items(), "x.key, x.value", "p.n, x.key"), &params).await?;
        let mut found: BTreeMap<i64, Event> = BTreeMap::new();
        for row in heads {
            let n: i64 = row.try_get(0)?;
            let tags: String = row.try_get(1)?;
            let tags = serde_json::from_str(&tags).map_err(|e| PostgresError::Corrupt(format!("event tags: {e}")))?;
            let Some((series, time, id)) = usize::try_from(n - 1).ok().and_then(|i| identities.get(i)) else {
                continue;
            };
            found.insert(
                n,
                Event {
                    time_series_id: series.clone(),
                    event_time: *time,
                    event_id: id.clone(),
                    items: Vec::new(),
                    tags,
                },
            );
        }
        for row in items {
            let n: i64 = row.try_get(0)?;
            if let Some(event) = found.get_mut(&n) {
                event.items.push((row.try_get(1)?, row.try_get(2)?));
            }
        }
        Ok::<_, PostgresError>(found.into_values().collect())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PostgresError::Timeout("tail read").into()),
    }
}

/// The identities of `identities` (in order, once each) that `fresh`
/// holds: what a write stored anything new of.
pub(crate) fn fresh_in_order<'a>(
    identities: &'a [(&'a str, i64, &'a str)],
    fresh: &HashSet<Identity>,
) -> impl Iterator<Item = (&'a str, i64, &'a str)> {
    let mut seen = HashSet::new();
    identities
        .iter()
        .copied()
        .filter(move |(s, t, e)| fresh.contains(&((*s).to_owned(), *t, (*e).to_owned())) && seen.insert((*s, *t, *e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_in_order() {
        let ids: Vec<String> = (0..400).map(|i| format!("event-{i:04}-{}", "x".repeat(40))).collect();
        let all: Vec<(&str, i64, &str)> = ids.iter().map(|id| ("series\"1", 7_i64, id.as_str())).collect();
        let out = payloads(all.iter().copied()).expect("payloads");
        assert!(out.len() > 1, "split into {}", out.len());
        let mut back: Vec<Identity> = Vec::new();
        for p in &out {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            back.extend(serde_json::from_str::<Vec<Identity>>(p).expect("json"));
        }
        let want: Vec<Identity> = all.iter().map(|(s, t, e)| ((*s).to_owned(), *t, (*e).to_owned())).collect();
        assert_eq!(back, want);
        assert!(payloads([("s", 1, "x".repeat(MAX_PAYLOAD).as_str())]).is_err());
        assert!(payloads([]).expect("empty").is_empty());
    }
}
