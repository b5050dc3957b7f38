//! The pre-provisioning hook Lambda. It only wires: logging, configuration, clients, the
//! handler. The decision lives in `cvm-core` (`fleet`), the adapters in `cvm-aws`.
// The decision future (admission, lockout counting, replacement, each an AWS call) nests deep
// enough to pass the compiler's default layout depth.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use provisioning_hook::{build, HookSettings, Metrics};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON logs when the function's log format is JSON; level from AWS_LAMBDA_LOG_LEVEL.
    cvm_aws::logging::init();

    // Configuration and clients are built once, at init, and fail the cold start loudly.
    let settings = HookSettings::from_env()?;
    let metrics = Metrics::Emf {
        stage: settings.stage.clone(),
    };
    let sdk = cvm_aws::lambda_sdk_config()?;
    let hook = Arc::new(build(&sdk, settings, metrics));

    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let hook = Arc::clone(&hook);
        async move { hook.handle_event(event).await }
    }))
    .await
}
