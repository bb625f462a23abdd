//! A Prism gateway shard: serves KeyValue and TimeSeries for the namespaces
//! its shard owns.
//!
//! The life of a request: [`kv_service`] / [`ts_service`] hand it to the
//! [`edge`], which wraps it in a [`call::Call`];
//! [`layers::pipeline`] sheds load, sets a deadline, validates (parsing the
//! namespace name once), authenticates, authorizes on the call's one
//! [`snapshot`] load — attaching the [`call::Resolved`] context (entry,
//! tenant, principal) that everything after reads — and applies
//! [`quota`]s; [`router`] / [`ts_router`] run it on the namespace's plugin
//! with what [`operations`] gives them (through the [`cache`]; buffered
//! writes through the [`buffer`]; durable events go to [`tail`]s), every
//! plugin call through [`backend`] (timed, traced).
//! Alongside, in [`background`] and sharing one link to the control plane:
//! the watcher keeps the snapshot current, provisioning creates and
//! removes backend resources, registration keeps this instance in the
//! shard registry, and usage and [`audit`] events are reported.
//! Below gRPC, [`transport`] holds connections and request bodies to the
//! configured limits.
//! [`metrics`] and [`health`] say how it is doing; [`server`] wires it all
//! and is the only module that sees every part; [`plugins`] is the one
//! list of the plugins a gateway opens.

pub mod audit;
pub mod auth;
pub mod backend;
pub mod background;
pub mod buffer;
pub mod cache;
pub mod call;
pub mod config;
pub mod edge;
pub mod error;
pub mod forward;
pub mod health;
pub mod kv_service;
pub mod layers;
pub mod limits;
pub mod metrics;
pub mod migration;
pub mod operations;
pub mod page_token;
pub mod peer;
pub mod plugins;
pub mod quota;
pub mod request;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod store_id;
pub mod tail;
pub mod transport;
pub mod ts_event;
pub mod ts_migration;
pub mod ts_router;
pub mod ts_service;

pub use config::GatewayConfig;
pub use error::{GatewayError, Result};
pub use server::Gateway;
