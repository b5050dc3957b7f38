//! `enroll`: one serial (`--serial`), or many from a CSV file (`--csv`, see
//! [`super::bulk`]).
//!
//! A device is enrolled with a one-time token (only its SHA-256 is stored; the token is
//! printed once), a pre-registered public key (`--public-key`: only a CSR for that key is
//! accepted), or both. With `--no-token` a pre-registered device gets no token at all: it
//! enrolls with a CSR for its key alone, and no secret ever leaves the factory.

use crate::output::say;
use std::path::PathBuf;

use clap::ArgGroup;
use cvm_core::ports::{DeviceStore, Written};
use cvm_core::{AuditEvent, AuditKind, DeviceRecord, KeyFingerprint, Token};
use serde_json::json;

use crate::context::{now, rfc3339, Context, Operator};
use crate::error::AdminError;

#[derive(clap::Args)]
#[command(group(ArgGroup::new("what").required(true).args(["serial", "csv"])))]
pub struct Args {
    /// The device's serial (the table key; also its thing name unless --thing-name).
    #[arg(long)]
    serial: Option<String>,
    /// Thing name in AWS IoT (default: the serial).
    #[arg(long, conflicts_with = "csv")]
    thing_name: Option<String>,
    /// IoT policy for this device (default: the deployment's).
    #[arg(long, conflicts_with = "csv")]
    policy: Option<String>,
    /// Thing attribute, NAME=VALUE (repeatable, at most 3).
    #[arg(long = "attr", value_name = "NAME=VALUE", conflicts_with = "csv")]
    attributes: Vec<String>,
    /// The device's public key, pre-registered: PEM "PUBLIC KEY", or a certificate or CSR to
    /// take it from. Only a CSR for this key will be accepted for the serial.
    #[arg(long, value_name = "FILE", conflicts_with = "csv")]
    public_key: Option<PathBuf>,
    /// No token: the device enrolls with a CSR for its pre-registered key alone.
    #[arg(long, requires = "public_key")]
    no_token: bool,
    /// Enroll every row of this CSV file (header `serial[,thing_name][,policy][,attributes]
    /// [,public_key]`; see the README).
    #[arg(long, value_name = "FILE", requires = "factory_file")]
    csv: Option<PathBuf>,
    /// With --csv: where to write the tokens (CSV `serial,token`, mode 0600). Must not exist.
    #[arg(long, value_name = "FILE", requires = "csv")]
    factory_file: Option<PathBuf>,
    /// With --csv: also give a token to rows that have a public key (by default they get none).
    #[arg(long, requires = "csv")]
    tokens_for_registered_keys: bool,
    /// With --csv: write transactions in flight at once (each up to 100 puts).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16), requires = "csv")]
    parallel: u8,
    /// Print JSON: `{"serial","token","registeredKey"}`, or with --csv the summary.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    if let (Some(csv), Some(factory)) = (&args.csv, &args.factory_file) {
        return super::bulk::run(
            ctx,
            super::bulk::Options {
                csv: csv.clone(),
                factory_file: factory.clone(),
                tokens_for_registered_keys: args.tokens_for_registered_keys,
                parallel: usize::from(args.parallel),
                json: args.json,
            },
        )
        .await;
    }
    let raw_serial = args
        .serial
        .as_deref()
        .ok_or_else(|| AdminError::Usage("give --serial or --csv".into()))?;
    let serial = super::serial(raw_serial)?;
    let thing_name = super::thing_name(args.thing_name.as_deref(), &serial)?;
    let policy = super::policy(args.policy.as_deref())?;
    let attributes = super::attributes(args.attributes.iter().map(String::as_str))
        .map_err(|e| AdminError::Usage(format!("--attr: {e}")))?;
    let key = args
        .public_key
        .as_deref()
        .map(super::public_key_file)
        .transpose()?;
    let store = ctx.store()?;
    let operator = ctx.operator().await?;
    let token = if args.no_token {
        None
    } else {
        Some(Token::generate().map_err(|_| AdminError::Random)?)
    };
    let record = DeviceRecord::new_enrollment(
        serial.clone(),
        cvm_core::lifecycle::credentials(token.as_ref(), key.clone()),
        thing_name,
        policy,
        attributes,
        enrolled_event(&operator, token.is_some(), key.as_ref(), None),
    );
    match store.create(&record).await? {
        Written::Done => {}
        Written::ConditionFailed => return Err(AdminError::AlreadyEnrolled(serial)),
    }
    if args.json {
        say!(
            "{}",
            json!({
                "serial": serial,
                "token": token.as_ref().map(Token::expose_secret),
                "registeredKey": key,
            })
        );
        return Ok(());
    }
    say!("enrolled {serial}");
    if let Some(k) = &key {
        say!("registered key (SHA-256 of its SubjectPublicKeyInfo): {k}");
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

/// The history entry of an enrollment: who, and with which credentials (never their values
/// beyond the public key's fingerprint).
pub fn enrolled_event(
    operator: &Operator,
    token: bool,
    key: Option<&KeyFingerprint>,
    origin: Option<&str>,
) -> AuditEvent {
    let mut detail = match (token, key) {
        (true, Some(k)) => format!("token and registered key {k}"),
        (true, None) => "token".to_owned(),
        (false, Some(k)) => format!("registered key {k}, no token"),
        (false, None) => "no credentials".to_owned(),
    };
    if let Some(origin) = origin {
        detail.push_str("; ");
        detail.push_str(origin);
    }
    AuditEvent::new(
        rfc3339(now()),
        AuditKind::Enrolled,
        operator.as_str(),
        detail,
    )
}
