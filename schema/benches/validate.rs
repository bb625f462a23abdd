//! The per-event cost of validating a TimeSeries event against a schema
//! (`Compiled::check_event`, what the owning gateway runs for every event
//! of a write), for plain item types, a JSON item under a JSON Schema and
//! a protobuf item, against baselines measured in the same run: work every
//! write does whether or not its namespace has a schema.
//!
//! - `baseline_decode` — decoding the event from its protobuf wire bytes,
//!   as the gateway's gRPC server does for every event of a request;
//! - `baseline_clone` — cloning the event, about what the write path's
//!   conversion to the plugin's event (`ts_router::to_plugin`: every id,
//!   tag and item copied) costs;
//! - `check_event/{plain,json_schema,protobuf}` — validating the event
//!   (`common/mod.rs`: two tags, four items) against a schema compiled
//!   once, as the gateway keeps it.
//!
//! `cargo bench -p prism-schema --bench validate -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prism_proto::timeseries::Event;
use prism_schema::Compiled;
use prost::Message;

use common::Variant;

fn validate(c: &mut Criterion) {
    let event = common::event("probe-1", "e-1", Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }));
    let wire = event.encode_to_vec();
    let mut group = c.benchmark_group("schema_per_event");
    group.bench_function("baseline_decode", |b| b.iter(|| black_box(Event::decode(black_box(wire.as_slice())))));
    group.bench_function("baseline_clone", |b| b.iter(|| black_box(black_box(&event).clone())));
    for variant in Variant::ALL {
        let compiled = match Compiled::compile(1, &variant.schema(), "schema") {
            Ok(compiled) => compiled,
            Err(v) => panic!("the {} schema does not compile: {v}", variant.name()),
        };
        // A refusal would measure the error path, not validation.
        if let Err(v) = compiled.check_event(0, &event) {
            panic!("the event is not valid under the {} schema: {v}", variant.name());
        }
        group.bench_function(format!("check_event/{}", variant.name()), |b| {
            b.iter(|| black_box(compiled.check_event(0, black_box(&event)).is_ok()))
        });
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
