//! A Prism gateway shard: serves KeyValue and TimeSeries for the namespaces
//! its shard owns.
//!
//! The life of a request: [`kv_service`] / [`ts_service`] wrap it in a
//! [`call::Call`];
//! [`layers::pipeline`] sheds load, sets a deadline, validates,
//! authenticates, authorizes on the [`snapshot`] and applies [`quota`]s;
//! [`router`] / [`ts_router`] run it on the namespace's plugin (through the
//! [`cache`]; buffered writes through the [`buffer`]; durable events go to
//! [`tail`]s).
//! Alongside: [`watcher`] keeps the snapshot current from the control
//! plane, [`provision`] creates and removes backend resources, and
//! [`registration`] keeps this instance in the control plane's shard
//! registry. [`metrics`] and [`health`] say how it is doing; every plugin
//! call goes through [`backend`] (timed, traced); [`plugins`] is the one
//! list of the plugins a gateway opens.

pub mod audit;
pub mod auth;
pub mod backend;
pub mod buffer;
pub mod cache;
pub mod call;
pub mod config;
pub mod error;
pub mod forward;
pub mod health;
pub mod kv_service;
pub mod layers;
pub mod metrics;
pub mod page_token;
pub mod plugins;
pub mod provision;
pub mod quota;
pub mod registration;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tail;
pub mod ts_router;
pub mod ts_service;
pub mod usage;
pub mod watcher;

pub use config::GatewayConfig;
pub use error::{GatewayError, Result};
pub use server::Gateway;
