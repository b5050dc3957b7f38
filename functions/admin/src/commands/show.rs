//! `show`: one record, without secrets: credentials (whether a token exists, the registered
//! key's fingerprint), lockout, the current and proposed certificates with their expiry (read
//! from the certificate) and their status in AWS IoT.

use cvm_core::ports::DeviceStore;
use cvm_core::{DeviceStatus, Renewal};
use serde_json::Value;

use crate::context::{now, Context};
use crate::error::{chain, AdminError};
use crate::view;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    serial: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), AdminError> {
    let serial = super::serial(&args.serial)?;
    let record = ctx
        .store()?
        .get(&serial)
        .await?
        .ok_or(AdminError::NotEnrolled(serial))?;
    let mut out = view::detail(&record, ctx.claim_lease, now());
    if let DeviceStatus::Issued { current, renewal } = &record.status {
        add_iot_status(ctx, &mut out["certificate"], &current.certificate.id).await;
        if let Some(Renewal::Proposed(p)) = renewal {
            add_iot_status(ctx, &mut out["renewal"]["certificate"], &p.certificate.id).await;
        }
    }
    if let DeviceStatus::Revoked {
        certificate: Some(c),
        ..
    } = &record.status
    {
        add_iot_status(ctx, &mut out["revoked"], &c.id).await;
    }
    super::print_json(&out)
}

/// The certificate's status in AWS IoT beside what the record says (they differ only after a
/// failure half-way, or a change made outside this tool).
async fn add_iot_status(ctx: &Context, target: &mut Value, certificate_id: &str) {
    let described = ctx
        .iot()
        .describe_certificate()
        .certificate_id(certificate_id)
        .send()
        .await;
    target["iotStatus"] = match described {
        Ok(d) => Value::from(
            d.certificate_description()
                .and_then(|c| c.status())
                .map(|s| s.as_str().to_owned()),
        ),
        Err(e) => {
            let e = cvm_aws::error::port_error("iot:DescribeCertificate", e);
            if e.kind == cvm_core::ports::FailureKind::NotFound {
                Value::from("ABSENT")
            } else {
                target["iotError"] = Value::from(chain(&e));
                Value::Null
            }
        }
    };
}
