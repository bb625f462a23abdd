//! The embedded backend: a store on the owning gateway's local disk, with
//! no settings (its data lives in the gateway's data directory).

use super::{BackendDescription, Telemetry};
use crate::control::backend_config::Config;
use crate::control::{Abstraction, Backend, EmbeddedConfig};

pub const DESCRIPTION: BackendDescription = BackendDescription {
    backend: Backend::Embedded,
    name: "embedded",
    title: "Embedded",
    abstractions: &[Abstraction::KeyValue, Abstraction::TimeSeries],
    telemetry: Telemetry { system: "redb", messaging: false },
    settings: &[],
    empty: || Config::Embedded(EmbeddedConfig {}),
};
