//! `merchant`: parse the configuration, start logging, serve.

use clap::Parser;
use merchant::Config;

/// mimalloc: the request path allocates small short-lived objects, which glibc's malloc served
/// at about a tenth of the merchant's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ap2_service::telemetry::init("merchant");
    let config = Config::parse().with_nonce_secret_from_env();
    let app = merchant::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "merchant listening");
    app.run_until_stopped().await?;
    Ok(())
}
