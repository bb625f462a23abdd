//! Group commit: concurrent commits share one fsync (file store) or one
//! database transaction (Postgres).
//!
//! Every write of a store (commits and audit appends) goes through one
//! bounded queue to one committer: a thread for the file store, a task for
//! the Postgres store. The committer takes every write waiting, at most
//! `max_commit_group`, applies them in arrival order inside one storage
//! transaction, makes that durable once, and only then answers each
//! caller. Writes that arrive meanwhile form the next group. So a lone
//! commit waits for no timer, and a busy store pays one flush for
//! everything that queued during the previous one.
//!
//! # What grouping does not change
//!
//! - Each commit gets its own revision and its own delta. A commit whose
//!   condition fails takes no revision and writes nothing (its conditions
//!   are checked before any of its writes), so revisions stay contiguous.
//! - Conditions are checked in order against everything before them,
//!   earlier commits of the same group included. Two creates of one name
//!   in one group resolve as if committed one after the other: the first
//!   wins and the second conflicts (and is re-planned into the same
//!   `ALREADY_EXISTS` as ever).
//! - Durability. A caller is answered only after the group's storage
//!   commit returned: redb's commit with `Durability::Immediate` (its
//!   default: data and header fsynced), or Postgres's `COMMIT` (flushed as
//!   the server's `synchronous_commit` says). A crash before that loses
//!   the whole group, none of which was acknowledged; a crash after it
//!   keeps the whole group, because it is one storage transaction: a group
//!   is never half on disk. What assumptions crash safety rests on is
//!   therefore exactly what it was with one commit per transaction: the
//!   disk honours fsync (redb), the server honours its flush (Postgres).
//! - Order of announcement. The deltas of a group are broadcast after its
//!   storage commit, in revision order, by the one committer (the file
//!   store), or read back from the change log in order by the broadcaster
//!   (Postgres): each commit is published once, in order.
//!
//! # Failures
//!
//! A group that fails before anything was written (a storage error while
//! applying one of its writes; the storage transaction is rolled back) is
//! tried again one write at a time, so a write that cannot be applied
//! fails alone, as it did before grouping; unless the error says the store
//! is unavailable, which every write would meet again. A failure of the storage commit
//! itself fails every write of the group: as with a single commit, whether
//! it is durable is then unknown, and it is not tried again.
//!
//! When the committer falls behind, callers wait to enqueue ([`QUEUE`]
//! writes at most wait): back-pressure, not an unbounded queue.

use prism_proto::control::AuditEvent;
use tokio::sync::{mpsc, oneshot};

use super::{Committed, Txn};
use crate::error::{ControlPlaneError, Result};

/// Writes that may wait for the committer; further callers wait to enqueue.
pub const QUEUE: usize = 4096;

/// Most writes in one group when the configuration names no other number.
pub const DEFAULT_MAX_GROUP: usize = 256;

/// One write of a group, in arrival order.
pub(crate) enum Write {
    Commit(Txn),
    /// Audit events that changed nothing (refusals): no revision.
    Audit(Vec<AuditEvent>),
}

/// Why a group was not written.
pub(crate) enum Failure {
    /// Rolled back before anything was durable: each write may be tried
    /// again on its own.
    NothingWritten(ControlPlaneError),
    /// The storage commit failed: the group may or may not be durable.
    Commit(ControlPlaneError),
}

enum Reply {
    Commit(oneshot::Sender<Result<Committed>>),
    Audit(oneshot::Sender<Result<()>>),
}

/// A write waiting for its group, and where its outcome goes.
pub(crate) struct Pending {
    pub(crate) write: Write,
    reply: Reply,
}

/// The writers' end of the queue (cheap to clone).
#[derive(Clone)]
pub(crate) struct Queue {
    tx: mpsc::Sender<Pending>,
}

/// The committer's end: hands out groups.
pub(crate) struct Groups {
    rx: mpsc::Receiver<Pending>,
    max: usize,
}

/// A queue whose groups hold at most `max_group` writes (at least 1). The
/// committer stops when every [`Queue`] is dropped.
pub(crate) fn queue(max_group: usize) -> (Queue, Groups) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Queue { tx }, Groups { rx, max: max_group.max(1) })
}

fn stopped() -> ControlPlaneError {
    ControlPlaneError::Unavailable("the metadata store's committer stopped".into())
}

impl Queue {
    /// Commits `txn` with the next group; returns once it is durable.
    pub(crate) async fn commit(&self, txn: Txn) -> Result<Committed> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Pending { write: Write::Commit(txn), reply: Reply::Commit(reply) })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Appends audit events with the next group; returns once durable.
    pub(crate) async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Pending { write: Write::Audit(events), reply: Reply::Audit(reply) })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

impl Groups {
    /// The next group: waits for one write, then takes every write already
    /// waiting (up to the maximum). `None` once every queue is dropped.
    pub(crate) async fn next(&mut self) -> Option<Vec<Pending>> {
        let first = self.rx.recv().await?;
        Some(self.fill(first))
    }

    /// [`next`](Self::next) for a committer on its own thread.
    pub(crate) fn blocking_next(&mut self) -> Option<Vec<Pending>> {
        let first = self.rx.blocking_recv()?;
        Some(self.fill(first))
    }

    fn fill(&mut self, first: Pending) -> Vec<Pending> {
        let mut group = Vec::with_capacity(self.max.min(64));
        group.push(first);
        while group.len() < self.max {
            match self.rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        group
    }
}

/// The writes of a group, in order, for the store to apply.
pub(crate) fn writes(group: &[Pending]) -> Vec<&Write> {
    group.iter().map(|p| &p.write).collect()
}

/// Answers every write of `group` with the store's `outcome`: one
/// [`Committed`] per [`Write::Commit`], in order. Returns the writes to try
/// again one at a time (a group of several that failed before anything
/// was written, not for unavailability); each of those is answered by a
/// later call.
pub(crate) fn answer(group: Vec<Pending>, outcome: Result<Vec<Committed>, Failure>) -> Vec<Pending> {
    let error = match outcome {
        Ok(committed) => {
            let mut committed = committed.into_iter();
            for pending in group {
                match pending.reply {
                    Reply::Commit(reply) => {
                        let outcome = committed.next().ok_or_else(|| {
                            ControlPlaneError::Corrupt("a group was answered with fewer commits than it held".into())
                        });
                        // A caller that went away does not need its answer.
                        let _ = reply.send(outcome);
                    }
                    Reply::Audit(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            return Vec::new();
        }
        // Unavailable (the database is down, say) would only fail again,
        // once per write.
        Err(Failure::NothingWritten(e)) if group.len() > 1 && !e.could_retry() => return group,
        Err(Failure::NothingWritten(e) | Failure::Commit(e)) => e,
    };
    tracing::warn!(error = %error, writes = group.len(), "a commit group failed");
    for pending in group {
        match pending.reply {
            Reply::Commit(reply) => {
                let _ = reply.send(Err(copy(&error)));
            }
            Reply::Audit(reply) => {
                let _ = reply.send(Err(copy(&error)));
            }
        }
    }
    Vec::new()
}

/// An error of the same kind as `e` (so the same status), for each caller
/// of a failed group: storage errors cannot be cloned.
fn copy(e: &ControlPlaneError) -> ControlPlaneError {
    let message = e.to_string();
    match e {
        ControlPlaneError::StoreUnavailable(_) => ControlPlaneError::StoreUnavailable(message),
        ControlPlaneError::Unavailable(_) | ControlPlaneError::ShuttingDown => ControlPlaneError::Unavailable(message),
        ControlPlaneError::Database(_) => ControlPlaneError::Database(message),
        _ => ControlPlaneError::Corrupt(message),
    }
}
