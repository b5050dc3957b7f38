//! `cvm-admin`: what ops do with the device table and with AWS IoT. This file only parses the
//! command line and dispatches; each command is a module of [`commands`], and what they share
//! (SDK clients, the table, the issuer, the operator's principal) is built once in
//! [`context`].
//!
//! Exit status: 0 done; 1 failed (the message says why; nothing or only a repeatable part was
//! done); 2 the command line is wrong; 3 ran to its end but not everything was done (a bulk
//! enrollment with rows not enrolled, a sweep step that failed: the summary lists them).

mod commands;
mod context;
mod error;
mod factory;
#[macro_use]
mod output;
mod public_key;
mod view;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::commands as cmd;
use crate::error::{chain, AdminError};

#[derive(Parser)]
#[command(
    name = "cvm-admin",
    version,
    about = "Certificate vending machine: operations on the device table and AWS IoT"
)]
struct Cli {
    /// DynamoDB table of device records.
    #[arg(long, env = "CVM_TABLE_NAME", global = true)]
    table: Option<String>,
    /// How long a vend's claim protects its work, as the deployment has it: ops never undo a
    /// record's work in progress, nor remove an unnamed certificate, younger than this.
    #[arg(
        long,
        env = "CVM_CLAIM_LEASE_SECONDS",
        default_value_t = 60,
        value_name = "SECONDS",
        global = true
    )]
    claim_lease_seconds: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll one serial (token and/or pre-registered public key), or many from a CSV file.
    Enroll(cmd::enroll::Args),
    /// List records (a table, or JSON lines), optionally of one state.
    List(cmd::list::Args),
    /// Show one record (never its token or token hash), with its certificates' expiry and status.
    Show(cmd::show::Args),
    /// A record's audit trail: what changed, when, and who did it.
    History(cmd::history::Args),
    /// Forget a serial's wrong tokens, lifting its lockout.
    Unlock(cmd::unlock::Args),
    /// Revoke a device's certificates and give it new credentials (prints the new token once).
    Reenroll(cmd::reenroll::Args),
    /// Revoke a device: certificates REVOKED (in AWS IoT and at the Private CA) and detached,
    /// the record `revoked`.
    Revoke(cmd::revoke::Args),
    /// The fleet: states, expiring certificates, lockouts, renewals, certificates no record
    /// names; --sweep tidies up.
    Report(cmd::report::Args),
    /// Claim certificates for fleet provisioning by claim.
    #[command(subcommand)]
    Claim(cmd::claim::Command),
    /// Register an own CA with AWS IoT (or report and change one registered already). Prints JSON.
    RegisterCa(cmd::register_ca::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = context::Context::load(cli.table, Duration::from_secs(cli.claim_lease_seconds)).await;
    let result = match cli.command {
        Command::Enroll(args) => cmd::enroll::run(&ctx, args).await,
        Command::List(args) => cmd::list::run(&ctx, args).await,
        Command::Show(args) => cmd::show::run(&ctx, args).await,
        Command::History(args) => cmd::history::run(&ctx, args).await,
        Command::Unlock(args) => cmd::unlock::run(&ctx, args).await,
        Command::Reenroll(args) => cmd::reenroll::run(&ctx, args).await,
        Command::Revoke(args) => cmd::revoke::run(&ctx, args).await,
        Command::Report(args) => cmd::report::run(&ctx, args).await,
        Command::Claim(command) => cmd::claim::run(&ctx, command).await,
        Command::RegisterCa(args) => cmd::register_ca::run(&ctx, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AdminError::Incomplete(message)) => {
            eprintln!("cvm-admin: {message}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("cvm-admin: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}
