//! The one conformance suite every backend plugin must pass (after vector's
//! `assert_sink_compliance`): a backend crate's tests are one line,
//!
//! ```text
//! prism_plugin_api::key_value_conformance!(async { make_plugin().await });
//! prism_plugin_api::time_series_conformance!(async { make_plugin().await });
//! ```
//!
//! each of which expands to one `#[test]` per case of [`kv`] or [`ts`],
//! named after it, so a failure names the case and the cases run in
//! parallel (the two suites share case names: call them from different
//! modules). The expression is
//! evaluated once per case, inside the case's tokio runtime, and must be a
//! future whose output is a [`Fixture`]: an `Arc` of the plugin, a
//! [`Subject`] (the plugin and the `backend_config` its namespaces carry:
//! the test server's address, say), or a pair `(fixture, guard)` whose
//! guard (a temporary directory, a server handle, a turn on a shared
//! broker) lives until the case ends.
//!
//! Each case provisions its own fresh namespace (`conf/<case>-<unique>`),
//! so cases may share one backend server, and deprovisions it at the end.
//! The suite brings its own multi-threaded tokio runtime (feature
//! `conformance` enables tokio here): the calling crate needs no tokio.
//!
//! Rules the cases keep so that they can share a backend with each other:
//! generation times are near the real clock (`base + offset`, offsets in
//! microseconds), [`KeyValue::reclaim`](crate::kv::KeyValue::reclaim) is
//! only called with the real clock, and an item a case expects to stay
//! stored expires an hour or more from now, so one case's reclamation
//! never touches another's data. TimeSeries
//! reclamation ([`TimeSeriesHandle::reclaim`](crate::ts::TimeSeriesHandle::reclaim))
//! is per namespace, so its cases pass any `now` they like.

pub mod kv;
pub mod support;
pub mod ts;

use std::future::Future;
use std::sync::Arc;

use prism_proto::control::BackendConfig;
use prism_proto::control::backend_config::Config;

use crate::Plugin;

pub use support::Case;

/// What the cases run against: a plugin, and the backend settings every
/// namespace they make carries — the server, brokers or topics the
/// control plane's metadata would name. The suite is backend-neutral; the
/// fixture, which knows its backend, says what a namespace of it holds,
/// so the plugin under test sees namespaces exactly as the gateway hands
/// them over, and needs no wrapper.
#[derive(Clone)]
pub struct Subject {
    pub plugin: Arc<dyn Plugin>,
    /// Every namespace's `spec.backend_config`; `None` for a backend that
    /// needs none (embedded).
    pub backend_config: Option<BackendConfig>,
}

impl Subject {
    /// `plugin`, with namespaces that carry no backend settings.
    pub fn new(plugin: Arc<dyn Plugin>) -> Self {
        Self { plugin, backend_config: None }
    }

    /// `plugin`, with namespaces whose backend settings are `config`.
    pub fn configured(plugin: Arc<dyn Plugin>, config: Config) -> Self {
        Self { plugin, backend_config: Some(BackendConfig { config: Some(config) }) }
    }
}

/// What a conformance case runs against: the [`Subject`], plus whatever
/// must live as long as the case.
pub trait Fixture {
    fn subject(&self) -> Subject;
}

impl Fixture for Subject {
    fn subject(&self) -> Subject {
        self.clone()
    }
}

impl Fixture for Arc<dyn Plugin> {
    fn subject(&self) -> Subject {
        Subject::new(self.clone())
    }
}

impl<P: Plugin> Fixture for Arc<P> {
    fn subject(&self) -> Subject {
        Subject::new(self.clone())
    }
}

/// A fixture and a guard dropped after the case (and after the plugin).
impl<F: Fixture, G> Fixture for (F, G) {
    fn subject(&self) -> Subject {
        self.0.subject()
    }
}

/// Runs one case on a fresh multi-threaded runtime: builds the fixture,
/// runs the case, then drops the fixture. Used by the macros.
pub fn run_case<Make, Fix, Run, Done>(make: Make, case: Run)
where
    Make: Future<Output = Fix>,
    Fix: Fixture,
    Run: FnOnce(Subject) -> Done,
    Done: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("conformance: cannot build a tokio runtime");
    runtime.block_on(async move {
        let fixture = make.await;
        case(fixture.subject()).await;
        drop(fixture);
    });
}

/// Expands to one `#[test]` per KeyValue conformance case. The argument is
/// a future of a [`Fixture`](crate::conformance::Fixture), evaluated once
/// per case; see the [module docs](crate::conformance).
#[macro_export]
macro_rules! key_value_conformance {
    ($fixture:expr) => {
        $crate::__key_value_cases! { (tests $fixture) }
    };
}

/// The case list, written once: it makes both the tests and [`kv::CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __key_value_cases {
    ($mode:tt) => {
        $crate::__conformance_emit! { $mode kv
            capabilities_match_static_table
            put_then_get_one_item
            record_items_come_back_in_key_order
            empty_key_is_a_plain_pair
            empty_value_is_stored
            upsert_overwrites
            absent_record_reads_empty
            keys_selector_skips_absent_keys
            range_selector_is_half_open
            reads_continue_after_key
            delete_keys
            delete_range
            delete_whole_record
            mutate_applies_in_order
            mutate_applies_everything
            older_put_is_ignored
            older_delete_is_ignored
            newer_put_after_delete_is_visible
            put_older_than_record_delete_is_ignored
            put_older_than_range_delete_is_ignored
            equal_generation_time_keeps_stored
            concurrent_writers_keep_last_writer
            same_token_applies_once
            different_tokens_both_apply
            tokens_are_per_record
            expired_items_are_not_returned
            reclaim_removes_expired_items
            get_pages_by_bytes
            get_pages_by_item_count
            item_larger_than_page_comes_alone
            last_page_has_no_next
            pages_end_early_at_the_soft_deadline
            reads_past_the_hard_deadline_give_up
            scan_returns_every_item_once
            scan_skips_expired_items
            scan_of_empty_namespace_is_empty
            large_values_round_trip
            large_values_page_whole
            overwrite_large_with_small_frees_chunks
            deleting_large_values_frees_storage
            storage_bytes_counts_data
            namespaces_are_isolated
            recreated_namespace_starts_empty
            a_newer_incarnation_beside_a_live_one_keeps_it
            deprovision_removes_everything
            provision_is_idempotent
            unprovisioned_namespace_is_refused
            versions_include_values_and_deletes
            restore_copies_every_version
            restore_never_overwrites_newer
            restore_records_restores_as_restore_does
            restoring_twice_changes_nothing
            restore_carries_expiry
            reclaim_keeps_the_deletes_of_held_namespaces
        }
    };
}

/// Expands to one `#[test]` per TimeSeries conformance case. The argument
/// is a future of a [`Fixture`](crate::conformance::Fixture), evaluated
/// once per case; see the [module docs](crate::conformance).
#[macro_export]
macro_rules! time_series_conformance {
    ($fixture:expr) => {
        $crate::__time_series_cases! { (tests $fixture) }
    };
}

/// The case list, written once: it makes both the tests and [`ts::CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __time_series_cases {
    ($mode:tt) => {
        $crate::__conformance_emit! { $mode ts
            capabilities_include_time_series
            write_then_read_one_event
            read_is_newest_first
            search_breaks_ties_by_series_then_event_id
            interval_is_half_open
            rewriting_an_event_changes_nothing
            new_item_key_adds_to_the_event
            events_come_back_whole
            same_ids_in_other_series_are_other_events
            search_without_filter_returns_every_event
            search_filters_by_tag_equals
            search_filters_by_tag_in
            search_combines_filters_with_and_or
            filter_on_a_missing_tag_matches_nothing
            read_pages_by_bytes
            search_pages_by_bytes
            pages_by_event_count
            event_larger_than_page_comes_alone
            last_page_has_no_next
            pages_end_early_at_the_soft_deadline
            reads_past_the_hard_deadline_give_up
            reads_continue_after_cursor
            export_walks_every_event_in_pages
            large_events_round_trip
            concurrent_writes_of_one_event_store_it_once
            retention_hides_events_past_it
            reclaim_removes_events_past_retention
            no_retention_keeps_everything
            namespaces_are_isolated
            recreated_namespace_starts_empty
            deprovision_removes_everything
            provision_is_idempotent
            unprovisioned_namespace_is_refused
            a_feed_sees_what_is_written_after_it_started
        }
    };
}

/// Turns a case list into tests (calling `conformance::<module>::<case>`)
/// or into the list of names.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_emit {
    ((tests $fixture:expr) $module:ident $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case($fixture, $crate::conformance::$module::$case);
            }
        )*
    };
    ((names) $module:ident $($case:ident)*) => {
        &[$(stringify!($case)),*]
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` of `source` is a case and every case is listed
    /// in the macro, so no case is written and then never run.
    fn check_listed(source: &str, cases: &[&str]) {
        let mut written: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("pub async fn "))
            .filter_map(|rest| rest.split('(').next())
            .collect();
        let mut listed: Vec<&str> = cases.to_vec();
        listed.sort_unstable();
        written.sort_unstable();
        assert_eq!(written, listed);
    }

    #[test]
    fn every_key_value_case_is_listed() {
        check_listed(include_str!("conformance/kv.rs"), super::kv::CASES);
    }

    #[test]
    fn every_time_series_case_is_listed() {
        check_listed(include_str!("conformance/ts.rs"), super::ts::CASES);
    }
}
