//! `reenroll`: a device that lost its identity (a board swap, a re-flashed card) gets a way
//! back. Its certificates are revoked first (in AWS IoT, and at the Private CA in `acm-pca`
//! mode), then the record is `enrolled` again with new credentials: a new token (printed
//! once), a new registered key (`--public-key`), or both; without `--public-key` the record
//! keeps no registered key. Its history is kept.

use crate::output::say;
use std::path::PathBuf;

use cvm_core::lifecycle::{self, LifecycleError};
use cvm_core::Token;
use serde_json::json;

use crate::context::{now, Context};
use crate::error::AdminError;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    serial: String,
    /// The device's (new) public key, pre-registered: PEM "PUBLIC KEY", or a certificate or
    /// CSR to take it from.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// No token: the device enrolls with a CSR for its registered key alone.
    #[arg(long, requires = "public_key")]
    no_token: bool,
    /// Print `{"serial","token","registeredKey","revokedCertificateIds"}`.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    let serial = super::serial(&args.serial)?;
    let key = args
        .public_key
        .as_deref()
        .map(super::public_key_file)
        .transpose()?;
    let store = ctx.store()?;
    let operator = ctx.operator().await?;
    let issuer = ctx.issuer().await?;
    let registry = ctx.registry();
    let token = if args.no_token {
        None
    } else {
        Some(Token::generate().map_err(|_| AdminError::Random)?)
    };
    let credentials = lifecycle::credentials(token.as_ref(), key.clone());
    let mut attempt = 0;
    let done = loop {
        attempt += 1;
        let result = lifecycle::reenroll(
            &store,
            &issuer,
            &registry,
            &serial,
            credentials.clone(),
            operator.as_str(),
            ctx.claim_lease,
            now(),
        )
        .await;
        match result {
            // Revoking again is harmless: every step accepts "already done".
            Err(LifecycleError::Changed(_)) if attempt < super::CHANGED_RETRIES => continue,
            other => break other?,
        }
    };
    let record = match done {
        lifecycle::Done::Changed(r) | lifecycle::Done::Unchanged(r) => r,
    };
    let detail = record
        .history
        .last()
        .map(|e| e.detail.clone())
        .unwrap_or_default();
    if args.json {
        say!(
            "{}",
            json!({
                "serial": serial,
                "token": token.as_ref().map(Token::expose_secret),
                "registeredKey": key,
                "detail": detail,
            })
        );
        return Ok(());
    }
    say!("re-enrolled {serial} ({detail})");
    if let Some(k) = &key {
        say!("registered key: {k}");
    }
    match &token {
        Some(t) => say!(
            "token (shown once; give it to the device, it is not stored): {}",
            t.expose_secret()
        ),
        None => say!("no token: the device enrolls with a CSR for its registered key"),
    }
    Ok(())
}
