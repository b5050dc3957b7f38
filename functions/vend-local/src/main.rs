//! The vend router served over HTTPS on a local address: the same configuration, clients and
//! code as the Lambda, with API Gateway replaced by a TLS listener.
//!
//! Environment: everything the Lambda reads (see `cvm_aws::vend_app`), plus
//! `CVM_LOCAL_LISTEN` (default `127.0.0.1:8443`), `CVM_LOCAL_TLS_CERT` and `CVM_LOCAL_TLS_KEY`
//! (PEM files of the server certificate and its key).

use std::net::SocketAddr;

use axum_server::tls_rustls::RustlsConfig;
use cvm_aws::config::VendSettings;
use cvm_aws::vend_app::build_vend_api;
use cvm_http::{router, Metrics};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is required").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let listen: SocketAddr = std::env::var("CVM_LOCAL_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8443".into())
        .parse()
        .map_err(|e| format!("CVM_LOCAL_LISTEN: {e}"))?;
    let tls = RustlsConfig::from_pem_file(env("CVM_LOCAL_TLS_CERT")?, env("CVM_LOCAL_TLS_KEY")?)
        .await
        .map_err(|e| format!("TLS certificate or key: {e}"))?;

    let settings = VendSettings::from_env()?;
    let sdk = cvm_aws::load_sdk_config().await;
    let api = build_vend_api(&sdk, settings, Metrics::Off).await?;

    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    tracing::info!(%listen, "vend service listening (HTTPS)");
    axum_server::bind_rustls(listen, tls)
        .handle(handle)
        .serve(router(api).into_make_service())
        .await?;
    Ok(())
}
