//! Prism's wire contracts, generated from `proto/prism/**.proto`, plus the
//! pure-data rules every crate must agree on (names, one description per
//! backend and its capabilities, quota profiles, the access rule, secret
//! references). No I/O lives here.

pub mod access;
pub mod backends;
pub mod capabilities;
pub mod error;
pub mod migration;
pub mod names;
pub mod quotas;
pub mod secrets;

/// `prism.control.v1`: the control plane.
pub mod control {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/prism.control.v1.rs"));
}

/// `prism.kv.v1`: the KeyValue abstraction.
pub mod kv {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/prism.kv.v1.rs"));
}

/// `prism.timeseries.v1`: the TimeSeries abstraction.
pub mod timeseries {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/prism.timeseries.v1.rs"));
}

/// `prism.peer.v1`: what gateways call on each other (a migration's
/// target on one instance); not for clients, and not in reflection.
pub mod peer {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/prism.peer.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every Prism service, for gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/prism_descriptor.bin"));
