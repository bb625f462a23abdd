//! The Prism control plane: the one owner of tenant, namespace and shard
//! metadata. It validates every change by shape (it holds no backend code
//! and opens no backend connection), commits it with the next revision,
//! audits it, and streams it to gateways over `Watch`.
//!
//! - [`plane`]: the rules (transport-free).
//! - [`authz`]: who may call what.
//! - [`schemas`]: TimeSeries event schemas, versioned per namespace.
//! - [`migration`]: live migration's recorded steps.
//! - [`registry`]: shard instances, leases, and the assignment they drive.
//! - [`dedicated`]: pins, and the shards a namespace holds exclusively.
//! - [`store`]: where metadata lives ([`store::file`], the default, or
//!   [`store::postgres`], shared by several replicas).
//! - [`watch`]: snapshot + ordered deltas.
//! - [`service`] / [`server`]: the gRPC edge.
//! - [`metrics`]: what `/metrics` shows.
//! - [`console`]: the operator console (read-only HTML, through the same
//!   service and authorization as the API).

pub mod assign;
pub mod authz;
pub mod config;
pub mod console;
pub mod dedicated;
pub mod error;
pub mod metrics;
pub mod migration;
pub mod page_token;
pub mod plane;
pub mod registry;
pub mod schemas;
pub mod server;
pub mod service;
pub mod store;
pub mod usage;
pub mod validate;
pub mod watch;

pub use config::ControlPlaneConfig;
pub use error::{ControlPlaneError, Result};
pub use plane::ControlPlane;
