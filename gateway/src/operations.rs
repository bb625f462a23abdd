//! What the operations ([`crate::router`], [`crate::ts_router`]) run on:
//! the plugins, and the gateway's own stores in front of them (read
//! cache, write buffer, tails), the metrics plugin calls are timed into,
//! and the one setting they need. Nothing else of the gateway reaches
//! them.

use std::sync::Arc;
use std::time::Duration;

use crate::buffer::WriteBuffer;
use crate::cache::ReadCache;
use crate::metrics::GatewayMetrics;
use crate::plugins::Plugins;
use crate::tail::TailHub;

#[derive(Debug)]
pub struct Operations {
    pub plugins: Plugins,
    pub cache: Arc<ReadCache>,
    pub buffer: Arc<WriteBuffer>,
    pub tails: Arc<TailHub>,
    pub metrics: Arc<GatewayMetrics>,
    /// How far in the future a write's idempotency token may be
    /// (`limits.max_clock_skew_ms`).
    pub max_clock_skew: Duration,
}
