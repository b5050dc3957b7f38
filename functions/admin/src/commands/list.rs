//! `list`: the records, a page of the table at a time (a strongly consistent scan). A table
//! for people, or one JSON object per line (`--json`) for scripts; never a token or a hash.

use crate::output::{say, say_raw};
use cvm_aws::fleet_table::{RecordScan, ScanFilter};

use crate::context::{now, rfc3339, Context};
use crate::error::{chain, AdminError};
use crate::view;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    Enrolled,
    Claimed,
    Issued,
    Revoked,
    /// Closed by wrong tokens right now (any status).
    Locked,
}

#[derive(clap::Args)]
pub struct Args {
    /// Only records in this state.
    #[arg(long, value_enum)]
    state: Option<State>,
    /// At most this many records.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    let now = now();
    let filter = match args.state {
        None => ScanFilter::All,
        Some(State::Locked) => ScanFilter::LockedAt(now),
        Some(State::Enrolled) => ScanFilter::Status("enrolled".into()),
        Some(State::Claimed) => ScanFilter::Status("claimed".into()),
        Some(State::Issued) => ScanFilter::Status("issued".into()),
        Some(State::Revoked) => ScanFilter::Status("revoked".into()),
    };
    let mut scan = RecordScan::new(ctx.dynamodb().clone(), ctx.table()?, filter);
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut shown = 0usize;
    let mut unreadable = 0usize;
    let mut rows = Vec::new();
    'pages: while let Some(page) = scan.next_page().await? {
        for entry in page.records {
            if shown >= limit {
                break 'pages;
            }
            let record = match entry {
                Ok(r) => r,
                Err(bad) => {
                    unreadable += 1;
                    eprintln!(
                        "cvm-admin: record {} cannot be read: {}",
                        bad.serial.as_deref().unwrap_or("(no serial)"),
                        chain(&bad.error)
                    );
                    continue;
                }
            };
            shown += 1;
            if args.json {
                say!("{}", view::summary(&record, now));
            } else {
                let summary = view::summary(&record, now);
                let text = |k: &str| summary[k].as_str().unwrap_or("").to_owned();
                let certificate = text("certificateId");
                rows.push(vec![
                    record.serial.to_string(),
                    record.thing_name.to_string(),
                    view::state(&record).to_owned(),
                    if view::is_locked(&record, now) {
                        format!("until {}", rfc3339(record.lockout.locked_until))
                    } else {
                        String::new()
                    },
                    view::credentials(&record).to_owned(),
                    certificate.chars().take(12).collect(),
                    text("notAfter"),
                    text("renewal"),
                ]);
            }
        }
        if shown >= limit {
            break;
        }
    }
    if !args.json {
        say_raw!(
            "{}",
            view::table(
                &[
                    "SERIAL",
                    "THING",
                    "STATE",
                    "LOCKED",
                    "CREDENTIALS",
                    "CERTIFICATE",
                    "NOT AFTER",
                    "RENEWAL"
                ],
                &rows
            )
        );
    }
    if unreadable > 0 {
        return Err(AdminError::Incomplete(format!(
            "{unreadable} record(s) could not be read"
        )));
    }
    Ok(())
}
