//! The vend Lambda. It only wires: logging, configuration, clients, router. Everything it
//! serves lives in `cvm-http` and `cvm-core`; the local server runs the same router.

use cvm_aws::config::VendSettings;
use cvm_aws::vend_app::build_vend_api;
use cvm_http::{router, Metrics};
use lambda_http::{run, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON logs when the function's log format is JSON; level from AWS_LAMBDA_LOG_LEVEL.
    cvm_aws::logging::init();

    // Configuration and clients are built once, at init, and fail the cold start loudly.
    let settings = VendSettings::from_env()?;
    let metrics = Metrics::Emf {
        stage: settings.stage.clone(),
    };
    let sdk = cvm_aws::lambda_sdk_config()?;
    let api = build_vend_api(&sdk, settings, metrics).await?;

    run(router(api)).await
}
