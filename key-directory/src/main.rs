//! `key-directory`: parse the configuration, start logging, serve.

use clap::Parser;
use key_directory::Config;

/// mimalloc: the request path allocates small short-lived objects, which glibc's malloc served
/// at about a tenth of the merchant's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ap2_service::telemetry::init("key-directory");
    let config = Config::parse();
    let app = key_directory::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "key-directory listening");
    app.run_until_stopped().await?;
    Ok(())
}
