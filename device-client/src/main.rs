//! `cvm-device`: enroll this device with the certificate vending machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cvm_device::enroll::{enroll, EnrollOptions, Outcome};
use cvm_device::FileKeyStore;

#[derive(Parser)]
#[command(name = "cvm-device", version, about = "Device client of the certificate vending machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Get this device's certificate: make or reuse the key, send a CSR, store the result.
    Enroll {
        /// Base URL of the vending API (https).
        #[arg(long, env = "CVM_API_URL")]
        url: String,
        /// The device serial (also the CSR's common name).
        #[arg(long, env = "CVM_SERIAL")]
        serial: String,
        /// The one-time enrollment token. Prefer --token-file or the environment: command
        /// lines are visible to other users.
        #[arg(long, env = "CVM_ENROLL_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
        token: Option<String>,
        /// File holding the enrollment token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM file of the CA(s) to trust for the API instead of the system roots.
        #[arg(long, env = "CVM_API_CA")]
        ca: Option<PathBuf>,
        /// Directory for the certificate, CA chain and enrollment metadata.
        #[arg(long)]
        out: PathBuf,
        /// Key store: `file:PATH` (default: `file:<out>/device.key`).
        #[arg(long)]
        key: Option<String>,
        /// Attempts before giving up on network errors, 429 and 5xx.
        #[arg(long, default_value_t = 6)]
        max_attempts: u32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cvm-device: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Enroll {
            url,
            serial,
            token,
            token_file,
            ca,
            out,
            key,
            max_attempts,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => return Err("no token: pass --token-file or set CVM_ENROLL_TOKEN".into()),
            };
            let key_path = match key.as_deref() {
                None => out.join("device.key"),
                Some(spec) => match spec.split_once(':') {
                    Some(("file", path)) => PathBuf::from(path),
                    _ => return Err(format!("--key {spec:?}: expected file:PATH")),
                },
            };
            let store = FileKeyStore::open_or_create(&key_path).map_err(|e| e.to_string())?;
            let options = EnrollOptions {
                url,
                serial,
                token,
                ca,
                out: out.clone(),
                max_attempts,
            };
            match enroll(&store, &options).await.map_err(|e| e.to_string())? {
                Outcome::AlreadyEnrolled(e) => {
                    println!("already enrolled as {} (certificate {}); nothing to do", e.thing_name, e.certificate_id);
                }
                Outcome::Enrolled { enrollment: e, new } => {
                    let how = if new { "new certificate" } else { "certificate re-delivered" };
                    println!("enrolled as {} ({how} {}); files in {}", e.thing_name, e.certificate_id, out.display());
                }
            }
            Ok(())
        }
    }
}
