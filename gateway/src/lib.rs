//! A Prism gateway shard: serves KeyValue (and, with the TimeSeries issue,
//! TimeSeries) for the namespaces its shard owns.
//!
//! The life of a request: [`kv_service`] wraps it in a [`call::Call`];
//! [`layers::pipeline`] sheds load, sets a deadline, validates,
//! authenticates, authorizes on the [`snapshot`] and applies quotas;
//! [`router`] runs it on the namespace's plugin (through the [`cache`]).
//! Alongside: [`watcher`] keeps the snapshot current from the control
//! plane, [`provision`] creates and removes backend resources.

pub mod auth;
pub mod cache;
pub mod call;
pub mod config;
pub mod error;
pub mod kv_service;
pub mod layers;
pub mod page_token;
pub mod provision;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod watcher;

pub use config::GatewayConfig;
pub use error::{GatewayError, Result};
pub use server::Gateway;
