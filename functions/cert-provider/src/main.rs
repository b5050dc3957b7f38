//! The certificate-provider Lambda. It only wires: logging, configuration, the Private CA
//! client, the handler. The workflow lives in `cvm-core` (`provider`), the adapter in `cvm-aws`.

use std::sync::Arc;

use cert_provider::{build, Metrics, ProviderConfig};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON logs when the function's log format is JSON; level from AWS_LAMBDA_LOG_LEVEL.
    cvm_aws::logging::init();

    // Configuration, client and the CA's key type are settled once, at init, and fail the
    // cold start loudly.
    let config = ProviderConfig::from_env()?;
    let metrics = Metrics::Emf {
        stage: config.stage.clone(),
    };
    let sdk = cvm_aws::lambda_sdk_config()?;
    let provider = Arc::new(build(&sdk, config, metrics).await?);

    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let provider = Arc::clone(&provider);
        async move { provider.handle_event(event).await }
    }))
    .await
}
