//! The certificate provider without Lambda: reads one event (JSON) on stdin, prints the
//! response (JSON) on stdout, exactly as the Lambda would answer it, with the same
//! configuration and code. Errors are printed as `{"errorType", "errorMessage"}` on stdout
//! too, with exit status 1. Logs go to stderr.
//!
//! ```text
//! cert-provider-local < events/cert-provider.json
//! ```

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use cert_provider::{build, Metrics, ProviderConfig};
use tokio::io::AsyncReadExt;

/// What AWS IoT gives a certificate provider.
const IOT_DEADLINE: Duration = Duration::from_secs(5);
/// Largest event read; a CSR is a few KiB.
const MAX_EVENT_BYTES: u64 = 64 * 1024;

#[tokio::main]
async fn main() -> ExitCode {
    cvm_aws::logging::init_with_writer(std::io::stderr);
    match run().await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cert-provider-local: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, String> {
    let mut raw = Vec::new();
    tokio::io::stdin()
        .take(MAX_EVENT_BYTES)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("reading the event from stdin: {e}"))?;
    let event: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("the event is not JSON: {e}"))?;

    let config = ProviderConfig::from_env().map_err(|e| e.to_string())?;
    let sdk = cvm_aws::load_sdk_config().await;
    let provider = build(&sdk, config, Metrics::Off)
        .await
        .map_err(|e| e.to_string())?;

    // The invocation's deadline as AWS IoT sets it: 5 s from now.
    let deadline = SystemTime::now() + IOT_DEADLINE;
    let (body, code) = match provider.handle(event, Some(deadline)).await {
        Ok(response) => (serde_json::to_string(&response), ExitCode::SUCCESS),
        Err(diagnostic) => (serde_json::to_string(&diagnostic), ExitCode::FAILURE),
    };
    println!("{}", body.map_err(|e| e.to_string())?);
    Ok(code)
}
