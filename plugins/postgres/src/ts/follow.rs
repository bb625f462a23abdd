//! Following a namespace's writes for its tails
//! ([`TimeSeriesHandle::follow`](prism_plugin_api::ts::TimeSeriesHandle::follow))
//! with LISTEN/NOTIFY.
//!
//! - **The tables notify.** A statement-level `AFTER INSERT` trigger on
//!   the events table and on the items table ([`ddl`]) sends the
//!   identities `(time_series_id, event_time, event_id)` of the events the
//!   statement stored anything new of (a head, or an item), in the order
//!   it stored them, with the transaction's id, as JSON on the
//!   incarnation's channel `<base>_tail`, in payloads under PostgreSQL's
//!   8000 bytes. PostgreSQL delivers a notification at its transaction's
//!   commit, in commit order (one transaction's together), to every
//!   session listening by then; a rolled-back write sends nothing; a
//!   write of nothing new stores no row and sends nothing. So every
//!   gateway replica's writes, and rows any other writer inserts into the
//!   tables, reach every listener. A gateway stores a write's events
//!   sorted by identity, so within one write a series' events arrive in
//!   time order.
//! - **A follower listens.** `follow` opens a connection of its own (not
//!   the pool's: a pooled connection's notifications are dropped) and
//!   returns once its `LISTEN` is done: every write acknowledged after
//!   that is delivered. An event named twice by one transaction (its head
//!   and its items) is delivered once. Each notification's events are
//!   read back through the pool — heads and items, items in key order —
//!   so a tail delivers an event as a read returns it (merged, first
//!   write wins); an event gone since (reclaimed) is skipped, and one
//!   given a new item later is delivered again, as a read then has it.
//!   The notifications already queued when one arrives are read back
//!   with it, in one read of up to [`READ_BATCH`] events, so the feed
//!   keeps up with concurrent writers.
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
use crate::kv::names::quote_ident;
use crate::kv::{TableNames, Target};

/// PostgreSQL refuses a notification payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7999;
/// How often the listening connection is checked.
pub(crate) const PING: Duration = Duration::from_secs(5);
/// Notifications waiting between the connection and the feed.
const IN_FLIGHT: usize = 64;
/// Identities read back at once, from the notifications already queued.
const READ_BATCH: usize = 1024;

/// One event's identity as notified.
pub(crate) type Identity = (String, i64, String);

/// The channel of `t`'s tails, as `pg_notify` takes it (unquoted).
pub(crate) fn channel(t: &Target) -> String {
    t.names.tail_channel()
}

/// The trigger function and the triggers that notify [`channel`] of what
/// each insert into `names`' events and items tables stored (idempotent;
/// run with the tables' DDL). Each payload is `{"x": txid, "e": [[series,
/// time, id], ...]}` under [`MAX_PAYLOAD`] bytes.
pub(crate) fn ddl(names: &TableNames) -> String {
    let function = names.qualified(&names.tail_function());
    let trigger = names.object("tail");
    let channel = names.tail_channel().replace('\'', "''");
    let on = |table: &str| {
        let table = names.qualified(table);
        format!(
            "DROP TRIGGER IF EXISTS {trigger} ON {table};
             CREATE TRIGGER {trigger} AFTER INSERT ON {table} REFERENCING NEW TABLE AS fresh
                FOR EACH STATEMENT EXECUTE FUNCTION {function}('{channel}');"
        )
    };
    format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $prism$
         DECLARE
             head text := '{{\"x\":' || txid_current() || ',\"e\":[';
             chunk text := '';
             one text;
         BEGIN
             FOR one IN
                 SELECT json_build_array(s, t, e)::text FROM (
                     SELECT time_series_id AS s, event_time AS t, event_id AS e, min(n) AS first
                     FROM (SELECT time_series_id, event_time, event_id, row_number() OVER () AS n FROM fresh) r
                     GROUP BY 1, 2, 3) g
                 ORDER BY first
             LOOP
                 IF chunk <> '' AND octet_length(head) + octet_length(chunk) + octet_length(one) + 3 > {MAX_PAYLOAD} THEN
                     PERFORM pg_notify(TG_ARGV[0], head || chunk || ']}}');
                     chunk := '';
                 END IF;
                 chunk := CASE WHEN chunk = '' THEN one ELSE chunk || ',' || one END;
             END LOOP;
             IF chunk <> '' THEN
                 PERFORM pg_notify(TG_ARGV[0], head || chunk || ']}}');
             END IF;
             RETURN NULL;
         END
         $prism$;
         {events}
         {items}",
        events = on(&names.ts_events()),
        items = on(&names.ts_items()),
    )
}

/// One notification: the transaction that sent it and what it stored.
#[derive(serde::Deserialize)]
struct Note {
    x: u64,
    e: Vec<Identity>,
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
    // The transaction of the last notification and what it named: one
    // transaction's notifications come together, and may name an event
    // twice (its head and its items).
    let state = Some((client, notes, t, (0_u64, HashSet::<Identity>::new()), None));
    Ok(futures_util::stream::unfold(state, move |state| async move {
        let (client, mut notes, t, mut seen, failed) = state?;
        if let Some(e) = failed {
            return Some((Err(e), None));
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
        loop {
            tokio::select! {
                note = notes.recv() => {
                    let mut identities = match note {
                        Some(Ok(payload)) => match fresh(&payload, &mut seen) {
                            Ok(identities) => identities,
                            Err(e) => return Some((Err(e.into()), None)),
                        },
                        Some(Err(e)) => return Some((Err(lost(e)), None)),
                        None => return Some((Err(lost("closed")), None)),
                    };
                    // The notifications already queued are read back
                    // with this one, in one read: one read per write
                    // would fall behind concurrent writers.
                    let mut failed = None;
                    while identities.len() < READ_BATCH {
                        match notes.try_recv() {
                            Ok(Ok(payload)) => match fresh(&payload, &mut seen) {
                                Ok(more) => identities.extend(more),
                                Err(e) => {
                                    failed = Some(e.into());
                                    break;
                                }
                            },
                            Ok(Err(e)) => {
                                failed = Some(lost(e));
                                break;
                            }
                            // Empty, or closed: the next `recv` says which.
                            Err(_) => break,
                        }
                    }
                    if identities.is_empty() && failed.is_none() {
                        continue;
                    }
                    // What was read goes out before a failure met after it.
                    return match events(&t, &identities, request_timeout).await {
                        Ok(events) => Some((Ok(events), Some((client, notes, t, seen, failed)))),
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

/// The identities a notification names that its transaction has not
/// named before (`seen`: the last transaction and what it named).
fn fresh(payload: &str, seen: &mut (u64, HashSet<Identity>)) -> Result<Vec<Identity>> {
    let note: Note = serde_json::from_str(payload)
        .map_err(|e| PostgresError::Corrupt(format!("a tail notification that is not ours: {e}")))?;
    if note.x != seen.0 {
        *seen = (note.x, HashSet::new());
    }
    Ok(note.e.into_iter().filter(|i| seen.1.insert(i.clone())).collect())
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
async fn events(t: &Target, identities: &[Identity], timeout: Duration) -> prism_plugin_api::Result<Vec<Event>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_naming_an_event_twice_delivers_it_once() {
        let mut seen = (0, HashSet::new());
        let a = r#"{"x":7,"e":[["s",1,"a"],["s",2,"b"]]}"#;
        let again = r#"{"x":7,"e":[["s",2,"b"],["s",3,"c"]]}"#;
        let next = r#"{"x":8,"e":[["s",2,"b"]]}"#;
        let ids = |v: Vec<Identity>| v.into_iter().map(|i| i.2).collect::<Vec<_>>();
        assert_eq!(ids(fresh(a, &mut seen).expect("ours")), ["a", "b"]);
        assert_eq!(ids(fresh(again, &mut seen).expect("ours")), ["c"]);
        assert_eq!(ids(fresh(next, &mut seen).expect("ours")), ["b"], "another transaction");
        assert!(fresh("[]", &mut seen).is_err());
    }
}
