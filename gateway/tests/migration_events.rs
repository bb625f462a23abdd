//! The data path of a TimeSeries migration, below the gateway's wiring
//! (`gateway/src/ts_migration.rs`), on two real embedded stores: writers
//! dual-write events to both sides (repeats and late events among them)
//! while the backfill copies the source in small pages; afterwards the
//! comparison by hour finds both sides alike. An event the target lacks,
//! or holds differently, is found and named by its hour, and a shadow
//! read of its series tells it.

use std::sync::Arc;

use prism_gateway::migration::target_namespace;
use prism_gateway::ts_migration::{RANGE, backfill_page, compare, digests, shadow_read};
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, Query, TimeSeriesHandle};
use prism_plugin_api::{Micros, Namespace, Plugin, now_micros};
use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};
use prism_proto::control::{Abstraction, Backend, Migration, MigrationTarget, NamespaceSpec};

/// Small pages, so the backfill interleaves with the writers many times.
const PAGE: PageLimits = PageLimits::new(4 << 10, Some(7));
const WHOLE: PageLimits = PageLimits::new(1 << 20, Some(100_000));
const WRITERS: usize = 2;
const WRITES: usize = 120;
const HOUR: Micros = 3_600_000_000;

fn event(series: &str, at: Micros, id: &str, value: &str) -> Event {
    Event {
        time_series_id: series.into(),
        event_time: at,
        event_id: id.into(),
        items: vec![(b"v".to_vec(), value.as_bytes().to_vec()), (b"a".to_vec(), b"1".to_vec())],
        tags: [("site".to_owned(), format!("s{}", at % 3))].into(),
    }
}

struct Sides {
    source: Arc<dyn TimeSeriesHandle>,
    target: Arc<dyn TimeSeriesHandle>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// An embedded source, and the migration's target on another embedded
/// store (another instance's disk).
async fn sides() -> anyhow::Result<Sides> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let source_ns = Namespace {
        name: "acme/events".into(),
        create_revision: 3,
        spec: NamespaceSpec {
            abstraction: Abstraction::TimeSeries as i32,
            backend: Backend::Embedded as i32,
            ..NamespaceSpec::default()
        },
    };
    let migration = Migration {
        id: 11,
        target: Some(MigrationTarget { pinned_shard: "shard-1".into(), ..Default::default() }),
        ..Migration::default()
    };
    let target_ns = target_namespace(&source_ns, &migration);
    let open = |dir: &std::path::Path| -> anyhow::Result<Arc<dyn Plugin>> {
        Ok(Arc::new(EmbeddedPlugin::open(EmbeddedConfig::new(dir))?))
    };
    let (source_plugin, target_plugin) = (open(dirs.0.path())?, open(dirs.1.path())?);
    source_plugin.provision(&source_ns).await?;
    target_plugin.provision(&target_ns).await?;
    let ts = |plugin: &Arc<dyn Plugin>, ns: &Namespace| -> anyhow::Result<Arc<dyn TimeSeriesHandle>> {
        Ok(plugin.time_series().ok_or_else(|| anyhow::anyhow!("no TimeSeries"))?.open(ns)?)
    };
    Ok(Sides { source: ts(&source_plugin, &source_ns)?, target: ts(&target_plugin, &target_ns)?, _dirs: dirs })
}

/// Events written to the source alone, as before the migration: spread
/// over the last three hours and a half, a few per series.
async fn preload(source: &dyn TimeSeriesHandle, now: Micros) -> anyhow::Result<u64> {
    let events: Vec<Event> = (0..300)
        .map(|n| event(&format!("s{}", n % 9), now - n * (HOUR * 7 / 2 / 300), &format!("pre-{n}"), "old"))
        .collect();
    for batch in events.chunks(50) {
        source.write(batch).await?;
    }
    Ok(events.len() as u64)
}

/// Dual-writes as the gateway does from DUAL_WRITE on: the source, then
/// the target. Every fifth write is sent twice (a client's retry), and
/// every seventh is late: its event time is an hour and a half back.
async fn dual_writer(
    source: Arc<dyn TimeSeriesHandle>,
    target: Arc<dyn TimeSeriesHandle>,
    writer: usize,
) -> anyhow::Result<()> {
    for n in 0..WRITES {
        let at = if n % 7 == 0 { now_micros() - HOUR * 3 / 2 } else { now_micros() };
        let events = [event(&format!("s{}", (n + writer) % 9), at, &format!("w{writer}-{n}"), "live")];
        for _ in 0..if n % 5 == 0 { 2 } else { 1 } {
            source.write(&events).await?;
            target.write(&events).await?;
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

async fn backfill(source: &dyn TimeSeriesHandle, target: &dyn TimeSeriesHandle) -> anyhow::Result<(u64, u64)> {
    let (mut cursor, mut pages, mut events) = (None, 0u64, 0u64);
    loop {
        let copied = backfill_page(source, target, cursor.as_deref(), PAGE).await?;
        pages += 1;
        events += copied.events;
        match copied.next {
            Some(next) => cursor = Some(next),
            None => return Ok((pages, events)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_racing_dual_writes_leaves_both_sides_alike_hour_by_hour() -> anyhow::Result<()> {
    let s = sides().await?;
    let now = now_micros();
    let preloaded = preload(s.source.as_ref(), now).await?;
    let writers: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(dual_writer(s.source.clone(), s.target.clone(), w))).collect();
    let (pages, copied) = backfill(s.source.as_ref(), s.target.as_ref()).await?;
    for w in writers {
        w.await??;
    }
    assert!(pages > 40, "the backfill went page by page ({pages} pages)");
    assert!(copied >= preloaded, "every preloaded event was copied ({copied} of {preloaded})");

    let compared = compare(s.source.as_ref(), s.target.as_ref(), PAGE).await?;
    assert_eq!((compared.differing, compared.first.as_deref()), (0, None), "{compared:?}");
    assert_eq!(compared.events, preloaded + (WRITERS * WRITES) as u64, "{compared:?}");
    assert!(compared.ranges >= 4, "three hours and a half span four hours at least: {compared:?}");
    let at = now_micros();
    let window = (Micros::MIN, Micros::MAX);
    assert_eq!(
        digests(s.source.as_ref(), window, WHOLE, at).await?,
        digests(s.target.as_ref(), window, WHOLE, at).await?,
        "hour by hour, the same events"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_target_lacks_or_holds_differently_is_found_by_its_hour() -> anyhow::Result<()> {
    let s = sides().await?;
    let now = now_micros();
    preload(s.source.as_ref(), now).await?;
    backfill(s.source.as_ref(), s.target.as_ref()).await?;
    assert_eq!(compare(s.source.as_ref(), s.target.as_ref(), WHOLE).await?.differing, 0);

    // Two hours back: an event written to the source alone (a dual write
    // lost), in a series of its own.
    let lost_at = now - 2 * HOUR;
    s.source.write(&[event("lost", lost_at, "x1", "only-here")]).await?;
    let compared = compare(s.source.as_ref(), s.target.as_ref(), WHOLE).await?;
    assert_eq!(compared.differing, 1, "{compared:?}");
    let hour = prost_types::Timestamp { seconds: lost_at.div_euclid(RANGE) * RANGE / 1_000_000, nanos: 0 };
    let first = compared.first.unwrap_or_default();
    assert!(first.contains(&hour.to_string()) && first.contains("1 events of the source are not in"), "{first}");

    // A shadow read of that series tells it; of another, not.
    let read = |series: &str| Query::series(series, (now - 4 * HOUR, now + 1), WHOLE);
    assert!(!shadow_read(s.source.as_ref(), s.target.as_ref(), &read("lost"), now_micros()).await?);
    assert!(shadow_read(s.source.as_ref(), s.target.as_ref(), &read("s1"), now_micros()).await?);

    // Copied, it is found alike again; the same identity held with
    // another value on the target is found too (the first write wins on
    // each side).
    s.target.write(&[event("lost", lost_at, "x1", "only-here")]).await?;
    assert_eq!(compare(s.source.as_ref(), s.target.as_ref(), WHOLE).await?.differing, 0);
    s.target.write(&[event("other", now - HOUR, "y1", "target's")]).await?;
    s.source.write(&[event("other", now - HOUR, "y1", "source's")]).await?;
    let compared = compare(s.source.as_ref(), s.target.as_ref(), WHOLE).await?;
    assert_eq!(compared.differing, 1, "{compared:?}");
    let first = compared.first.unwrap_or_default();
    assert!(first.contains("1 events of the source are not in the target, and 1 of the target"), "{first}");
    assert!(!shadow_read(s.source.as_ref(), s.target.as_ref(), &read("other"), now_micros()).await?);
    Ok(())
}
