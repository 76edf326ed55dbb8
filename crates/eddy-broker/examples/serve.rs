//! Runs the embedded broker by hand, to poke at it with kcat or another Kafka client.
//!
//! ```text
//! cargo run -p eddy-broker --example serve -- [DATA_DIR] [PORT]
//! ```
//!
//! Defaults: `eddy-data/broker`, a free port. Stops on Ctrl-C.

use eddy_broker::{EmbeddedBroker, EmbeddedBrokerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut config = EmbeddedBrokerConfig::default();
    if let Some(data_dir) = args.next() {
        config.data_dir = data_dir.into();
    }
    if let Some(port) = args.next() {
        config = config.with_port(port.parse()?);
    }
    let started = std::time::Instant::now();
    let mut broker = EmbeddedBroker::start(config).await?;
    println!(
        "{} (database {}, started in {} ms)",
        broker.bootstrap_servers(),
        broker.database_path().display(),
        started.elapsed().as_millis()
    );
    tokio::select! {
        error = broker.failure() => return Err(error.into()),
        interrupted = tokio::signal::ctrl_c() => interrupted?,
    }
    broker.shutdown().await?;
    Ok(())
}
