//! `claim`: claim certificates for fleet provisioning by claim, the shared identity a device
//! uses only to ask AWS IoT for its own.
//!
//! `claim create` makes one from a CSR (`--csr`: the claim key can stay in a factory HSM) or
//! from a fresh EC P-256 key made here and written 0600 (`--out-key`). Either way AWS IoT
//! signs a CSR (`CreateCertificateFromCsr`): no private key ever crosses the network, which is
//! why `CreateKeysAndCertificate` is never used. The certificate is created INACTIVE, gets
//! the claim policy and nothing else, and only then becomes ACTIVE; if any step fails, what
//! was made is removed. `claim list` shows a claim policy's certificates, `claim revoke`
//! retires one (REVOKED, detached).

use crate::output::{say, say_raw};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_sdk_iot::types::CertificateStatus;
use clap::ArgGroup;
use cvm_aws::error::{error_code, port_error};
use cvm_core::ports::{FailureKind, PortError, ThingRegistry};
use cvm_core::record::CertificateRef;
use cvm_core::{Csr, PolicyName};
use serde_json::json;
use zeroize::Zeroizing;

use crate::context::{rfc3339, Context};
use crate::error::AdminError;
use crate::view;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Make a claim certificate: INACTIVE, the claim policy attached, then ACTIVE.
    #[command(group(ArgGroup::new("key").required(true).args(["csr", "out_key"])))]
    Create(CreateArgs),
    /// List the certificates attached to a claim policy, with their status.
    List(ListArgs),
    /// Retire a claim certificate: REVOKED in AWS IoT and detached from its policies.
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The claim policy (the only policy the certificate gets).
    #[arg(long)]
    policy: String,
    /// A CSR for the claim key (PEM), made where the key lives (a factory HSM).
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    /// Make an EC P-256 key here and write it to this file (PEM PKCS#8, mode 0600; must not
    /// exist).
    #[arg(long, value_name = "FILE")]
    out_key: Option<PathBuf>,
    /// The subject CN of the CSR made with --out-key.
    #[arg(long, default_value = "cvm-fleet-claim", requires = "out_key")]
    common_name: String,
    /// Where to write the certificate (PEM; must not exist).
    #[arg(long, value_name = "FILE")]
    out_cert: PathBuf,
    /// Print `{"certificateId","certificateArn","status","policy","certificateFile","keyFile"}`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    policy: String,
    /// One JSON object per line: `{"certificateId","certificateArn","status","createdAt"}`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    #[arg(long, value_name = "ID")]
    certificate_id: String,
}

pub async fn run(ctx: &Context, command: Command) -> Result<(), AdminError> {
    match command {
        Command::Create(args) => create(ctx, args).await,
        Command::List(args) => list(ctx, args).await,
        Command::Revoke(args) => revoke(ctx, args).await,
    }
}

/// Creates `path` exclusively with `mode` (never overwrites).
fn create_new(path: &Path, mode: u32, what: &'static str) -> Result<std::fs::File, AdminError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path).map_err(AdminError::io(what, path))
}

fn write_durably(mut file: std::fs::File, path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(AdminError::io("could not write", path))
}

async fn create(ctx: &Context, args: CreateArgs) -> Result<(), AdminError> {
    let policy =
        PolicyName::parse(&args.policy).map_err(|e| AdminError::Usage(format!("--policy: {e}")))?;
    // Everything local first: the CSR (or the key), and both output files claimed.
    let (csr, key_pem) = match (&args.csr, &args.out_key) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(AdminError::io("could not read the CSR", path))?;
            let csr = Csr::parse_pem(&text)
                .map_err(|e| AdminError::Usage(format!("--csr {}: {e}", path.display())))?;
            (csr, None)
        }
        (None, Some(_)) => {
            let fail =
                |e: rcgen::Error| AdminError::Usage(format!("could not make the claim key: {e}"));
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, args.common_name.as_str());
            let pem = params
                .serialize_request(&key)
                .map_err(fail)?
                .pem()
                .map_err(fail)?;
            let csr = Csr::parse_pem(&pem)
                .map_err(|e| AdminError::Usage(format!("the claim CSR: {e}")))?;
            (csr, Some(Zeroizing::new(key.serialize_pem())))
        }
        _ => return Err(AdminError::Usage("give --csr or --out-key".into())),
    };
    let key_file = match (&args.out_key, &key_pem) {
        (Some(path), Some(_)) => Some((
            create_new(path, 0o600, "could not create the key file")?,
            path,
        )),
        _ => None,
    };
    let cert_file = match create_new(
        &args.out_cert,
        0o644,
        "could not create the certificate file",
    ) {
        Ok(f) => f,
        Err(e) => {
            if let Some((_, path)) = &key_file {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    // The key is on disk, durable, before AWS IoT certifies it.
    if let (Some((file, path)), Some(pem)) = (key_file, &key_pem) {
        write_durably(file, path, pem.as_bytes())?;
    }
    let made = match make_claim_certificate(ctx, &csr, &policy).await {
        Ok(made) => made,
        Err(e) => {
            // Nothing was certified: the files hold nothing worth keeping.
            let _ = std::fs::remove_file(&args.out_cert);
            if let Some(path) = &args.out_key {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    write_durably(cert_file, &args.out_cert, made.1.as_bytes())?;
    let out = json!({
        "certificateId": made.0.id,
        "certificateArn": made.0.arn,
        "status": "ACTIVE",
        "policy": policy,
        "certificateFile": args.out_cert.display().to_string(),
        "keyFile": args.out_key.as_ref().map(|p| p.display().to_string()),
    });
    if args.json {
        say!("{out}");
    } else {
        say!(
            "claim certificate {} is ACTIVE with policy {policy}; certificate in {}",
            made.0.id,
            args.out_cert.display()
        );
        if let Some(path) = &args.out_key {
            say!("its key (keep it secret) is in {}", path.display());
        }
    }
    Ok(())
}

/// CreateCertificateFromCsr (INACTIVE), AttachPolicy, UpdateCertificate ACTIVE; on failure,
/// the certificate is detached and deleted.
async fn make_claim_certificate(
    ctx: &Context,
    csr: &Csr,
    policy: &PolicyName,
) -> Result<(CertificateRef, String), AdminError> {
    // The policy must exist before a certificate is spent on it.
    ctx.iot()
        .get_policy()
        .policy_name(policy.as_str())
        .send()
        .await
        .map_err(|e| port_error("iot:GetPolicy", e))?;
    const OP: &str = "iot:CreateCertificateFromCsr";
    let out = ctx
        .iot()
        .create_certificate_from_csr()
        .certificate_signing_request(csr.pem())
        .set_as_active(false)
        .send()
        .await
        .map_err(|e| port_error(OP, e))?;
    let missing = |field: &str| {
        PortError::new(FailureKind::Other, OP).with_code(format!("MissingField({field})"))
    };
    let certificate = CertificateRef {
        id: out.certificate_id.ok_or_else(|| missing("certificateId"))?,
        arn: out
            .certificate_arn
            .ok_or_else(|| missing("certificateArn"))?,
    };
    let pem = out
        .certificate_pem
        .ok_or_else(|| missing("certificatePem"))?;
    let registry = ctx.registry();
    let activated = async {
        if !csr.is_certified_by(&pem).unwrap_or(false) {
            return Err(AdminError::Usage(
                "AWS IoT returned a certificate for another key than the CSR's".into(),
            ));
        }
        registry.attach_policy(policy, &certificate).await?;
        ctx.iot()
            .update_certificate()
            .certificate_id(&certificate.id)
            .new_status(CertificateStatus::Active)
            .send()
            .await
            .map_err(|e| port_error("iot:UpdateCertificate", e))?;
        Ok::<(), AdminError>(())
    }
    .await;
    if let Err(e) = activated {
        let undo = async {
            registry.detach_all_policies(&certificate).await?;
            cvm_aws::iot::discard_certificate(ctx.iot(), &certificate).await
        };
        if let Err(undo_error) = undo.await {
            return Err(AdminError::Usage(format!(
                "{}; and the inactive certificate {} could not be removed: {}",
                crate::error::chain(&e),
                certificate.id,
                crate::error::chain(&undo_error)
            )));
        }
        return Err(e);
    }
    Ok((certificate, pem))
}

/// Every target of a policy (`ListTargetsForPolicy`, all pages): certificate ARNs.
pub async fn targets(iot: &aws_sdk_iot::Client, policy: &str) -> Result<Vec<String>, PortError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = iot
            .list_targets_for_policy()
            .policy_name(policy)
            .page_size(250)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| port_error("iot:ListTargetsForPolicy", e))?;
        out.extend(page.targets().iter().cloned());
        match page.next_marker() {
            Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
            _ => break,
        }
    }
    Ok(out)
}

/// The things a certificate is attached to (`ListPrincipalThings`, all pages).
pub async fn principal_things(
    iot: &aws_sdk_iot::Client,
    principal_arn: &str,
) -> Result<Vec<String>, PortError> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = match iot
            .list_principal_things()
            .principal(principal_arn)
            .max_results(250)
            .set_next_token(next.take())
            .send()
            .await
        {
            Ok(p) => p,
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(out),
            Err(e) => return Err(port_error("iot:ListPrincipalThings", e)),
        };
        out.extend(page.things().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_owned()),
            _ => break,
        }
    }
    Ok(out)
}

/// A certificate id from an ARN (`arn:...:cert/<id>`).
fn id_of(arn: &str) -> Option<&str> {
    arn.rsplit_once(":cert/").map(|(_, id)| id)
}

async fn list(ctx: &Context, args: ListArgs) -> Result<(), AdminError> {
    let mut rows = Vec::new();
    for arn in targets(ctx.iot(), &args.policy).await? {
        let Some(id) = id_of(&arn) else { continue };
        let described = ctx
            .iot()
            .describe_certificate()
            .certificate_id(id)
            .send()
            .await
            .map_err(|e| port_error("iot:DescribeCertificate", e))?;
        let d = described.certificate_description();
        let status = d.and_then(|d| d.status()).map(|s| s.as_str().to_owned());
        let created = d.and_then(|d| d.creation_date()).map(|t| rfc3339(t.secs()));
        if args.json {
            say!(
                "{}",
                json!({"certificateId": id, "certificateArn": arn, "status": status, "createdAt": created})
            );
        } else {
            rows.push(vec![
                id.to_owned(),
                status.unwrap_or_default(),
                created.unwrap_or_default(),
            ]);
        }
    }
    if !args.json {
        say_raw!(
            "{}",
            view::table(&["CERTIFICATE", "STATUS", "CREATED"], &rows)
        );
    }
    Ok(())
}

async fn revoke(ctx: &Context, args: RevokeArgs) -> Result<(), AdminError> {
    let id = args.certificate_id.trim();
    if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(AdminError::Usage(
            "--certificate-id must be the 64 hex characters AWS IoT names a certificate by".into(),
        ));
    }
    let described = ctx
        .iot()
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
        .map_err(|e| port_error("iot:DescribeCertificate", e))?;
    let arn = described
        .certificate_description()
        .and_then(|d| d.certificate_arn())
        .ok_or_else(|| {
            PortError::new(FailureKind::Other, "iot:DescribeCertificate")
                .with_code("MissingField(certificateArn)")
        })?
        .to_owned();
    // A device's certificate is attached to its thing; it is retired with `revoke --serial`,
    // which also marks the device's record.
    let things = principal_things(ctx.iot(), &arn).await?;
    if !things.is_empty() {
        return Err(AdminError::Usage(format!(
            "certificate {id} is attached to thing(s) {}: it is a device's certificate, not a \
             claim certificate; revoke the device with: cvm-admin revoke --serial SERIAL",
            things.join(", ")
        )));
    }
    let certificate = CertificateRef {
        id: id.to_owned(),
        arn,
    };
    cvm_aws::iot::revoke_in_iot(ctx.iot(), &certificate).await?;
    ctx.registry().detach_all_policies(&certificate).await?;
    say!("claim certificate {id} is REVOKED and detached from its policies");
    Ok(())
}
