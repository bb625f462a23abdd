//! An OTLP/gRPC trace receiver that only counts: the collector end of
//! `scripts/bench-observability.sh` (so exporting costs what it costs
//! against a real receiver). `otlp_sink 127.0.0.1:4317` serves until
//! killed and prints the spans received every second they change.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".into());
    let receiver = prism_testkit::otlp::OtlpReceiver::start_on(addr.parse()?).await?;
    println!("otlp sink on {}", receiver.endpoint());
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = receiver.count();
        if now != seen {
            println!("spans received: {now}");
            seen = now;
        }
    }
}
