//! `revoke`: the device's certificates are revoked (REVOKED in AWS IoT, and at the Private CA
//! in `acm-pca` mode: the deployment's `CVM_ISSUER`/`CVM_PCA_*` settings) and detached from
//! its thing and policies; an undelivered one (a vend that died half-way, its claim expired)
//! is deleted. Then the record becomes `revoked`, conditional on the version read: the
//! device's token and key are refused from then on. Safe to run again.

use crate::output::say;
use cvm_core::lifecycle::{self, Done, LifecycleError};
use cvm_core::DeviceStatus;

use crate::context::{now, Context};
use crate::error::AdminError;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    serial: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    let serial = super::serial(&args.serial)?;
    let store = ctx.store()?;
    let operator = ctx.operator().await?;
    let issuer = ctx.issuer().await?;
    let registry = ctx.registry();
    let mut attempt = 0;
    let done = loop {
        attempt += 1;
        let result = lifecycle::revoke(
            &store,
            &issuer,
            &registry,
            &serial,
            operator.as_str(),
            ctx.claim_lease,
            now(),
        )
        .await;
        match result {
            Err(LifecycleError::Changed(_)) if attempt < super::CHANGED_RETRIES => continue,
            other => break other?,
        }
    };
    match done {
        Done::Unchanged(_) => say!("{serial} was already revoked"),
        Done::Changed(r) => match &r.status {
            DeviceStatus::Revoked {
                certificate: Some(c),
                ..
            } => say!(
                "revoked {serial}: certificate {} is REVOKED and detached",
                c.id
            ),
            _ => say!("revoked {serial} (no certificate had been issued)"),
        },
    }
    Ok(())
}
