//! The documented absolute limits of a request (the KeyValue and
//! TimeSeries protos): what validation checks, the page size the
//! operations fall back to, and the largest message.

/// Largest message the gateway accepts or sends: the largest item
/// (64 MiB) plus room for its request.
pub const MAX_MESSAGE_BYTES: usize = 72 << 20;

pub const MAX_ID_BYTES: usize = 1024;
pub const MAX_KEY_BYTES: usize = 4096;
/// The largest value any namespace may allow (its own limit is lower).
pub const MAX_VALUE_BYTES: usize = 64 << 20;
pub const MAX_ITEMS_PER_REQUEST: usize = 10_000;
pub const MAX_PAGE_BYTES: u64 = 16 << 20;
pub const DEFAULT_PAGE_BYTES: u64 = 1 << 20;
pub const MAX_PAGE_ITEMS: u32 = 10_000;
pub const MAX_TOKEN_BYTES: usize = 128;
pub const MAX_SERIES_ID_BYTES: usize = 256;
pub const MAX_EVENT_ID_BYTES: usize = 256;
pub const MAX_TAGS_PER_EVENT: usize = 64;
pub const MAX_TAG_BYTES: usize = 256;
pub const MAX_FILTER_PREDICATES: usize = 64;
pub const MAX_FILTER_DEPTH: usize = 8;
