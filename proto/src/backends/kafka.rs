//! The kafka backend: TimeSeries on a Kafka-protocol broker, one topic per
//! namespace incarnation. The plugin (`prism-plugin-kafka`) reads its
//! defaults and limits from the constants here.

use super::{BackendDescription, Change, Count, Kind, List, Presence, Setting, Telemetry, field};
use crate::control::backend_config::Config;
use crate::control::{Abstraction, Backend, KafkaConfig};

/// Partitions of a namespace's topic: 0 means 1, at most 1024.
///
/// Fixed once created. Fewer partitions: Kafka cannot remove any. More:
/// the broker could add them (CreatePartitions), but a series lives in the
/// partition its hash picks modulo the count (`prism-plugin-kafka`'s
/// codec), so a series read would look in its new partition and miss its
/// older events; growing needs the plugin to remember the counts a topic
/// had, which it does not yet.
pub const PARTITIONS: Count = Count {
    default: 1,
    max: 1024,
    change: Change::Fixed {
        why: "a series is placed by its hash modulo the partitions, so another count would hide its older events; \
              create a new namespace with the partitions wanted",
    },
    field: field!(Kafka.partitions: u32, u32),
};
/// Replication factor of the topic: 0 means 1, at most 16.
pub const REPLICATION_FACTOR: Count = Count {
    default: 1,
    max: 16,
    change: Change::Fixed {
        why: "changing a topic's replication factor takes a partition reassignment, which prism does not do",
    },
    field: field!(Kafka.replication_factor: u32, u32),
};
/// Most brokers one namespace may list.
pub const MAX_BOOTSTRAP_SERVERS: usize = 64;

pub const DESCRIPTION: BackendDescription = BackendDescription {
    backend: Backend::Kafka,
    name: "kafka",
    title: "Kafka",
    abstractions: &[Abstraction::TimeSeries],
    telemetry: Telemetry { system: "kafka", messaging: true },
    settings: &[
        Setting {
            field: "bootstrap_servers",
            flag: "bootstrap-server",
            value_name: "HOST:PORT",
            help: "A broker's host:port",
            presence: Presence::Required { missing: "needs at least one host:port" },
            kind: Kind::List(List {
                max_items: MAX_BOOTSTRAP_SERVERS,
                noun: "servers",
                item: Some(crate::names::validate_host_port),
                field: field!(Kafka.bootstrap_servers: [String], Vec<String>),
            }),
        },
        Setting {
            field: "partitions",
            flag: "partitions",
            value_name: "N",
            help: "Partitions of the namespace's topic",
            presence: Presence::Optional,
            kind: Kind::Count(PARTITIONS),
        },
        Setting {
            field: "replication_factor",
            flag: "replication-factor",
            value_name: "N",
            help: "Replication factor of the topic",
            presence: Presence::Optional,
            kind: Kind::Count(REPLICATION_FACTOR),
        },
    ],
    empty: || Config::Kafka(KafkaConfig::default()),
};
