//! `unlock`: forgets a serial's wrong tokens at once, so its device can try again now rather
//! than when the lockout window closes by itself.

use crate::output::say;
use cvm_core::lifecycle::{self, Done, LifecycleError};

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
    let mut attempt = 0;
    let done = loop {
        attempt += 1;
        match lifecycle::unlock(&store, &serial, operator.as_str(), now()).await {
            Err(LifecycleError::Changed(_)) if attempt < super::CHANGED_RETRIES => continue,
            other => break other?,
        }
    };
    match done {
        Done::Changed(_) => say!("unlocked {serial}: its failed attempts are forgotten"),
        Done::Unchanged(_) => say!("{serial} has no failed attempts; nothing to do"),
    }
    Ok(())
}
