//! `wallet`: parse the configuration, start logging, serve.

use clap::Parser;
use wallet::Config;

/// mimalloc: the request path allocates small short-lived objects, which glibc's malloc served
/// at about a tenth of the merchant's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ap2_service::telemetry::init("wallet");
    let config = Config::parse().with_master_key_from_env();
    anyhow::ensure!(
        wallet::has_secret(&config.admin_token),
        "--admin-token is empty"
    );
    anyhow::ensure!(
        wallet::has_secret(&config.key_directory_token),
        "--key-directory-token is empty"
    );
    let app = wallet::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "wallet listening");
    app.run_until_stopped().await?;
    Ok(())
}
