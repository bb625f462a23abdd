//! The deltas a store has committed, announced to its subscribers (Watch
//! streams, the metrics follower) in revision order.
//!
//! A ring of the newest deltas, bounded in count *and* in encoded bytes:
//! whichever bound is reached first evicts the oldest. One commit can
//! change a thousand namespaces (a rebalance's settle batch, a tenant's
//! deletion), so a bound in deltas alone let a slow watcher hold hundreds
//! of MiB. A subscriber keeps only a cursor; one whose next delta was
//! evicted receives [`Recv::Lagged`] and must catch up from the change log,
//! as before. Sending never waits for a subscriber.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use prism_proto::control::Delta;
use prost::Message;
use tokio::sync::watch;

/// The ring's byte bound unless configured.
pub const DEFAULT_BYTES: usize = 32 << 20;

/// What [`Receiver::recv`] returns.
#[derive(Debug)]
pub enum Recv {
    Delta(Arc<Delta>),
    /// The next delta was evicted before this subscriber read it.
    Lagged,
    /// The store is gone.
    Closed,
}

/// The sending side, owned by the store.
pub struct Bus {
    ring: Arc<Mutex<Ring>>,
    /// The sequence number the next delta will get: subscribers wait on it.
    next: watch::Sender<u64>,
}

struct Ring {
    entries: VecDeque<(usize, Arc<Delta>)>,
    /// Sequence number of `entries[0]`.
    first: u64,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl Bus {
    /// A bus keeping at most `max_count` deltas and `max_bytes` of encoded
    /// deltas (but always the newest one, whatever its size).
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        let ring = Ring {
            entries: VecDeque::new(),
            first: 0,
            bytes: 0,
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
        };
        Self { ring: Arc::new(Mutex::new(ring)), next: watch::Sender::new(0) }
    }

    /// Announces `delta`; evicts the oldest deltas beyond either bound.
    pub fn send(&self, delta: Arc<Delta>) {
        let size = delta.encoded_len();
        let next = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.entries.push_back((size, delta));
            ring.bytes += size;
            while ring.entries.len() > ring.max_count || (ring.bytes > ring.max_bytes && ring.entries.len() > 1) {
                let Some((size, _)) = ring.entries.pop_front() else { break };
                ring.bytes -= size;
                ring.first += 1;
            }
            ring.first + ring.entries.len() as u64
        };
        self.next.send_replace(next);
    }

    /// A subscriber that receives every delta sent from now on.
    pub fn subscribe(&self) -> Receiver {
        let rx = self.next.subscribe();
        let cursor = *rx.borrow();
        Receiver { ring: self.ring.clone(), next: rx, cursor }
    }

    /// Deltas and encoded bytes held now.
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        (ring.entries.len(), ring.bytes)
    }
}

/// One subscriber: a cursor into the ring.
pub struct Receiver {
    ring: Arc<Mutex<Ring>>,
    next: watch::Receiver<u64>,
    cursor: u64,
}

impl Receiver {
    /// The next delta, waiting for one to be sent.
    pub async fn recv(&mut self) -> Recv {
        loop {
            if let Some(received) = self.try_recv() {
                return received;
            }
            // Nothing newer yet: wait for the next send (a send between the
            // check above and this wait marks the value changed, so it is
            // not missed).
            let cursor = self.cursor;
            if self.next.wait_for(|next| *next > cursor).await.is_err() {
                return Recv::Closed;
            }
        }
    }

    /// The next delta if one was sent and not yet received, else `None`.
    pub fn try_recv(&mut self) -> Option<Recv> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if self.cursor < ring.first {
            return Some(Recv::Lagged);
        }
        let (_, delta) = ring.entries.get((self.cursor - ring.first) as usize)?;
        self.cursor += 1;
        Some(Recv::Delta(delta.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_proto::control::{Change, change};

    fn delta(revision: u64, padding: usize) -> Arc<Delta> {
        let removed = Change { change: Some(change::Change::ShardRemoved("s".repeat(padding))) };
        Arc::new(Delta { revision, changes: vec![removed], ..Default::default() })
    }

    async fn next(rx: &mut Receiver) -> u64 {
        match rx.recv().await {
            Recv::Delta(d) => d.revision,
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_delta_in_order() {
        let bus = Bus::new(16, 1 << 20);
        let mut a = bus.subscribe();
        bus.send(delta(1, 1));
        let mut b = bus.subscribe();
        bus.send(delta(2, 1));
        bus.send(delta(3, 1));
        assert_eq!((next(&mut a).await, next(&mut a).await, next(&mut a).await), (1, 2, 3));
        assert_eq!((next(&mut b).await, next(&mut b).await), (2, 3));
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_on_send() {
        let bus = Arc::new(Bus::new(16, 1 << 20));
        let mut rx = bus.subscribe();
        let waiter = tokio::spawn(async move { next(&mut rx).await });
        tokio::task::yield_now().await;
        bus.send(delta(7, 1));
        assert_eq!(waiter.await.expect("joined"), 7);
    }

    #[tokio::test]
    async fn the_count_bound_evicts_and_a_slow_subscriber_lags() {
        let bus = Bus::new(2, 1 << 20);
        let mut slow = bus.subscribe();
        for r in 1..=3 {
            bus.send(delta(r, 1));
        }
        assert_eq!(bus.held().0, 2);
        assert!(matches!(slow.recv().await, Recv::Lagged));
    }

    #[tokio::test]
    async fn the_byte_bound_evicts_large_deltas_but_keeps_the_newest() {
        let big = delta(1, 10_000).encoded_len();
        let bus = Bus::new(1024, big * 3);
        let mut slow = bus.subscribe();
        for r in 1..=10 {
            bus.send(delta(r, 10_000));
        }
        let (count, bytes) = bus.held();
        assert_eq!(count, 3, "three of {big} bytes fit in {}", big * 3);
        assert!(bytes <= big * 3);
        assert!(matches!(slow.recv().await, Recv::Lagged));
        // One delta larger than the whole bound is still delivered.
        let tiny = Bus::new(1024, 10);
        let mut rx = tiny.subscribe();
        tiny.send(delta(1, 10_000));
        assert_eq!(next(&mut rx).await, 1);
    }

    #[tokio::test]
    async fn dropping_the_bus_closes_waiting_subscribers() {
        let bus = Bus::new(4, 1 << 20);
        let mut rx = bus.subscribe();
        bus.send(delta(1, 1));
        drop(bus);
        assert_eq!(next(&mut rx).await, 1, "what was sent is still read");
        assert!(matches!(rx.recv().await, Recv::Closed));
    }
}
