//! `merchant`: parse the configuration, start logging, serve.

use clap::Parser;
use merchant::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ap2_service::telemetry::init_logs();
    let config = Config::parse();
    let app = merchant::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "merchant listening");
    app.run_until_stopped().await?;
    Ok(())
}
