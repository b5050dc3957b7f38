//! `history`: a record's audit trail, oldest first: what changed, when, and who did it (an
//! operator's AWS principal, or the device and the door it used).

use crate::output::{say, say_raw};
use cvm_core::ports::DeviceStore;
use serde_json::json;

use crate::context::Context;
use crate::error::AdminError;
use crate::view;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    serial: String,
    /// One JSON object per line: `{"at","kind","actor","detail"}`.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    let serial = super::serial(&args.serial)?;
    let record = ctx
        .store()?
        .get(&serial)
        .await?
        .ok_or(AdminError::NotEnrolled(serial))?;
    if args.json {
        for e in &record.history {
            say!(
                "{}",
                json!({"at": e.at, "kind": e.kind.as_str(), "actor": e.actor, "detail": e.detail})
            );
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = record
        .history
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.kind.as_str().to_owned(),
                e.actor.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    say_raw!("{}", view::table(&["AT", "KIND", "ACTOR", "DETAIL"], &rows));
    Ok(())
}
