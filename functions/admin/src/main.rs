//! `cvm-admin`: what ops do with the device table, and with AWS IoT's CAs.
//!
//! `enroll` makes a one-time token, stores only its hash and prints the token once (for the
//! factory); `show` prints a record without any secret; `revoke` revokes and detaches a
//! device's certificate and marks the record; `register-ca` registers an own CA
//! (a certificate and key on disk, or an AWS Private CA) with AWS IoT.

mod register_ca;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use cvm_aws::DynamoStore;
use cvm_core::ports::{DeviceStore, Written};
use cvm_core::record::DeviceStatus;
use cvm_core::{Attributes, DeviceRecord, PolicyName, Serial, ThingName, Token};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "cvm-admin",
    version,
    about = "Certificate vending machine: operations"
)]
struct Cli {
    /// DynamoDB table of device records.
    #[arg(long, env = "CVM_TABLE_NAME", global = true)]
    table: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll a serial: generate its one-time token, store the token's hash, print the token.
    Enroll {
        #[arg(long)]
        serial: String,
        /// Thing name in AWS IoT (default: the serial).
        #[arg(long)]
        thing_name: Option<String>,
        /// IoT policy for this device (default: the deployment's).
        #[arg(long)]
        policy: Option<String>,
        /// Thing attribute, `name=value` (repeatable, at most 3).
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attributes: Vec<String>,
        /// Print `{"serial","token"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a device record (never its token or token hash).
    Show {
        #[arg(long)]
        serial: String,
    },
    /// Revoke a device: its certificate is marked REVOKED in AWS IoT and detached from its
    /// thing and policies, and the record becomes `revoked` (the token is refused from then on).
    Revoke {
        #[arg(long)]
        serial: String,
    },
    /// Register an own CA with AWS IoT, active: proves possession of the CA key with a
    /// verification certificate for the account's registration code. Prints JSON.
    #[command(group(ArgGroup::new("ca").required(true).args(["ca_cert", "pca_arn"])))]
    RegisterCa {
        /// The CA certificate (PEM).
        #[arg(long, requires = "ca_key", value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// The CA's private key (PEM, unencrypted). Used locally to sign the verification
        /// certificate; never sent anywhere.
        #[arg(long, requires = "ca_cert", value_name = "FILE")]
        ca_key: Option<PathBuf>,
        /// Register this AWS Private CA instead; it issues the verification certificate.
        #[arg(long, value_name = "ARN", conflicts_with_all = ["ca_cert", "ca_key"])]
        pca_arn: Option<String>,
        /// Let AWS IoT register device certificates this CA signed when they first connect.
        #[arg(long)]
        auto_registration: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cvm-admin: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let store = |sdk: &aws_config::SdkConfig| {
        cli.table
            .clone()
            .map(|table| DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table))
            .ok_or("no table: pass --table or set CVM_TABLE_NAME")
    };
    match cli.command {
        Command::Enroll {
            ref serial,
            ref thing_name,
            ref policy,
            ref attributes,
            json,
        } => {
            let sdk = cvm_aws::load_sdk_config().await;
            let store = store(&sdk)?;
            enroll(
                &store,
                serial,
                thing_name.clone(),
                policy.clone(),
                attributes,
                json,
            )
            .await
        }
        Command::Show { ref serial } => {
            let sdk = cvm_aws::load_sdk_config().await;
            show(&store(&sdk)?, serial).await
        }
        Command::Revoke { ref serial } => {
            let sdk = cvm_aws::load_sdk_config().await;
            revoke(&store(&sdk)?, &aws_sdk_iot::Client::new(&sdk), serial).await
        }
        Command::RegisterCa {
            ref ca_cert,
            ref ca_key,
            ref pca_arn,
            auto_registration,
        } => {
            let source = match (ca_cert, ca_key, pca_arn) {
                (Some(certificate), Some(key), None) => register_ca::CaSource::Files {
                    certificate: certificate.clone(),
                    key: key.clone(),
                },
                (None, None, Some(arn)) => register_ca::CaSource::PrivateCa { arn: arn.clone() },
                _ => return Err("give --ca-cert and --ca-key, or --pca-arn".into()),
            };
            let sdk = cvm_aws::load_sdk_config().await;
            let registered = register_ca::register_ca(&sdk, &source, auto_registration)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&registered.to_json()).map_err(|e| e.to_string())?
            );
            Ok(())
        }
    }
}

async fn enroll(
    store: &DynamoStore,
    serial: &str,
    thing_name: Option<String>,
    policy: Option<String>,
    attributes: &[String],
    as_json: bool,
) -> Result<(), String> {
    let serial = Serial::parse(serial).map_err(|e| e.to_string())?;
    let thing_name = match thing_name {
        Some(t) => ThingName::parse(&t).map_err(|e| e.to_string())?,
        None => ThingName::from(&serial),
    };
    let policy = policy
        .map(|p| PolicyName::parse(&p))
        .transpose()
        .map_err(|e| e.to_string())?;
    let pairs = attributes
        .iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--attr {a:?} must be NAME=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let attributes = Attributes::parse(pairs).map_err(|e| e.to_string())?;
    let token = Token::generate().map_err(|_| "the system random source failed".to_string())?;
    let now = cvm_core::vend::rfc3339(time::OffsetDateTime::now_utc());
    let record = DeviceRecord::new_enrollment(
        serial.clone(),
        token.hash(),
        thing_name,
        policy,
        attributes,
        now,
    );
    match store.create(&record).await.map_err(|e| e.to_string())? {
        Written::Done => {}
        Written::ConditionFailed => {
            return Err(format!("serial {serial} is already enrolled"));
        }
    }
    if as_json {
        println!(
            "{}",
            json!({"serial": serial.as_str(), "token": token.expose_secret()})
        );
    } else {
        println!("enrolled {serial}");
        println!(
            "token (shown once; give it to the device, it is not stored): {}",
            token.expose_secret()
        );
    }
    Ok(())
}

async fn show(store: &DynamoStore, serial: &str) -> Result<(), String> {
    let serial = Serial::parse(serial).map_err(|e| e.to_string())?;
    let record = store
        .get(&serial)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("serial {serial} is not enrolled"))?;
    let mut out = json!({
        "serial": record.serial,
        "thingName": record.thing_name,
        "policyName": record.policy_name,
        "attributes": record.attributes,
        "status": record.status.name(),
        "failedAttempts": record.failed_attempts,
        "enrolledAt": record.enrolled_at,
    });
    match &record.status {
        DeviceStatus::Issued(i) => {
            out["certificateId"] = json!(i.certificate.id);
            out["certificateArn"] = json!(i.certificate.arn);
            out["publicKeyFingerprint"] = json!(i.fingerprint);
            out["issuedAt"] = json!(i.issued_at);
        }
        DeviceStatus::Claimed(c) => {
            out["claimedAt"] = json!(c.claimed_at);
            out["pendingCertificateId"] = json!(c.pending.as_ref().map(|p| &p.id));
        }
        DeviceStatus::Revoked { revoked_at } => out["revokedAt"] = json!(revoked_at),
        DeviceStatus::Enrolled => {}
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Revokes in AWS IoT first, then in the table: if the second step fails, the device can no
/// longer connect, and running the command again finishes the job.
async fn revoke(
    store: &DynamoStore,
    iot: &aws_sdk_iot::Client,
    serial: &str,
) -> Result<(), String> {
    use aws_sdk_iot::types::CertificateStatus;
    use cvm_core::ports::ThingRegistry;

    let serial = Serial::parse(serial).map_err(|e| e.to_string())?;
    let record = store
        .get(&serial)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("serial {serial} is not enrolled"))?;
    let certificate = match &record.status {
        DeviceStatus::Revoked { revoked_at } => {
            println!("{serial} was already revoked at {revoked_at}");
            return Ok(());
        }
        DeviceStatus::Claimed(_) => {
            return Err(format!(
                "a vend for {serial} is in progress; run revoke again in a minute"
            ))
        }
        DeviceStatus::Issued(issued) => Some(issued.certificate.clone()),
        DeviceStatus::Enrolled => None,
    };
    if let Some(certificate) = &certificate {
        iot.update_certificate()
            .certificate_id(&certificate.id)
            .new_status(CertificateStatus::Revoked)
            .send()
            .await
            .map_err(|e| cvm_aws::error::port_error("iot:UpdateCertificate", e).to_string())?;
        let registry = cvm_aws::IotRegistry::new(iot.clone());
        registry
            .detach_thing_principal(&record.thing_name, certificate)
            .await
            .map_err(|e| e.to_string())?;
        let attached = iot
            .list_attached_policies()
            .target(&certificate.arn)
            .send()
            .await
            .map_err(|e| cvm_aws::error::port_error("iot:ListAttachedPolicies", e).to_string())?;
        for policy in attached.policies() {
            if let Some(name) = policy.policy_name() {
                let name = PolicyName::parse(name).map_err(|e| e.to_string())?;
                registry
                    .detach_policy(&name, certificate)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let now = cvm_core::vend::rfc3339(time::OffsetDateTime::now_utc());
    match store
        .mark_revoked(&serial, &now)
        .await
        .map_err(|e| e.to_string())?
    {
        Written::Done => {}
        Written::ConditionFailed => {
            return Err(format!("serial {serial} disappeared from the table"))
        }
    }
    match certificate {
        Some(c) => println!(
            "revoked {serial}: certificate {} is REVOKED and detached",
            c.id
        ),
        None => println!("revoked {serial} (no certificate had been issued)"),
    }
    Ok(())
}
