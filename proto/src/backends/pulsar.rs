//! The pulsar backend: TimeSeries on a Pulsar-protocol broker, Prism's
//! `tenant/name` being Pulsar's `tenant/namespace`. The plugin
//! (`prism-plugin-pulsar`) reads its default topic from here.

use super::{BackendDescription, Kind, Presence, Setting, Telemetry, Text, field};
use crate::control::backend_config::Config;
use crate::control::{Abstraction, Backend, PulsarConfig};

/// The local topic name when a namespace names none.
pub const DEFAULT_TOPIC: &str = "events";

const URL_MESSAGE: &str = "must be a pulsar:// or pulsar+ssl:// URL";

pub const DESCRIPTION: BackendDescription = BackendDescription {
    backend: Backend::Pulsar,
    name: "pulsar",
    title: "Pulsar",
    abstractions: &[Abstraction::TimeSeries],
    telemetry: Telemetry { system: "pulsar", messaging: true },
    settings: &[
        Setting {
            field: "service_url",
            flag: "service-url",
            value_name: "URL",
            help: "The broker, pulsar://host:port or pulsar+ssl://host:port",
            presence: Presence::Required { missing: URL_MESSAGE },
            kind: Kind::Text(Text {
                max_len: None,
                default: "",
                check: Some(check_service_url),
                field: field!(Pulsar.service_url: str, String),
            }),
        },
        Setting {
            field: "topic",
            flag: "topic",
            value_name: "TOPIC",
            help: "Local topic under persistent://{tenant}/{namespace}/",
            presence: Presence::Optional,
            kind: Kind::Text(Text {
                max_len: None,
                default: DEFAULT_TOPIC,
                check: Some(check_topic),
                field: field!(Pulsar.topic: str, String),
            }),
        },
    ],
    empty: || Config::Pulsar(PulsarConfig::default()),
};

fn check_service_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("pulsar://").or_else(|| url.strip_prefix("pulsar+ssl://"));
    let Some(rest) = rest else { return Err(URL_MESSAGE.into()) };
    crate::names::validate_host_port(rest.trim_end_matches('/'))
}

fn check_topic(topic: &str) -> Result<(), String> {
    crate::names::validate_part(topic).map_err(|e| format!("topic {e}"))
}
