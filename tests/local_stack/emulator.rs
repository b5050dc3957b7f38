//! The local stack's emulator itself (moto with the launcher's patches, `stack.py`), through
//! the real Rust SDK: where the product relies on AWS behaving a certain way, the emulator
//! must behave that way too, or the product's tests prove nothing.

use crate::helpers::*;

async fn certificate_status(iot: &aws_sdk_iot::Client, id: &str) -> String {
    iot.describe_certificate()
        .certificate_id(id)
        .send()
        .await
        .unwrap()
        .certificate_description()
        .unwrap()
        .status()
        .unwrap()
        .as_str()
        .to_owned()
}

/// Removes a certificate the test made, so runs do not pile them up.
async fn remove(iot: &aws_sdk_iot::Client, id: &str) {
    iot.update_certificate()
        .certificate_id(id)
        .new_status(aws_sdk_iot::types::CertificateStatus::Inactive)
        .send()
        .await
        .unwrap();
    iot.delete_certificate()
        .certificate_id(id)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn create_certificate_from_csr_honours_set_as_active() {
    let iot = iot().await;
    // AWS: ACTIVE only when asked; absent means false.
    for (set_as_active, expected) in [
        (Some(false), "INACTIVE"),
        (Some(true), "ACTIVE"),
        (None, "INACTIVE"),
    ] {
        let serial = unique_serial("EMU-ACTIVE");
        let out = iot
            .create_certificate_from_csr()
            .certificate_signing_request(rcgen_csr(&serial))
            .set_set_as_active(set_as_active)
            .send()
            .await
            .unwrap();
        let id = out.certificate_id().unwrap();
        assert_eq!(
            certificate_status(&iot, id).await,
            expected,
            "setAsActive={set_as_active:?}"
        );
        // ListCertificates agrees with DescribeCertificate.
        let listed = iot.list_certificates().send().await.unwrap();
        let listed: Vec<_> = listed
            .certificates()
            .iter()
            .filter(|c| c.certificate_id() == Some(id))
            .filter_map(|c| c.status().map(|s| s.as_str().to_owned()))
            .collect();
        assert_eq!(listed, [expected], "setAsActive={set_as_active:?}");
        remove(&iot, id).await;
    }
}

#[tokio::test]
async fn create_certificate_from_csr_certifies_the_csr_key_and_refuses_a_bad_csr() {
    let iot = iot().await;
    let serial = unique_serial("EMU-KEY");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, &serial);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let out = iot
        .create_certificate_from_csr()
        .certificate_signing_request(csr)
        .set_as_active(false)
        .send()
        .await
        .unwrap();
    use x509_cert::der::{DecodePem, Encode};
    let cert = x509_cert::Certificate::from_pem(out.certificate_pem().unwrap()).unwrap();
    assert_eq!(
        cert.tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap(),
        rcgen::PublicKeyData::subject_public_key_info(&key),
        "not the CSR's key"
    );
    remove(&iot, out.certificate_id().unwrap()).await;

    // A malformed CSR and one whose signature does not verify: 400 InvalidRequestException.
    // The signature is the DER's last element: flipping its last byte breaks only it.
    let good = rcgen_csr(&serial);
    let (label, mut der) = x509_cert::der::pem::decode_vec(good.as_bytes()).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    let tampered =
        x509_cert::der::pem::encode_string(label, x509_cert::der::pem::LineEnding::LF, &der)
            .unwrap();
    for (what, csr) in [
        ("not PEM", "not a CSR".to_owned()),
        ("bad signature", tampered),
    ] {
        let err = iot
            .create_certificate_from_csr()
            .certificate_signing_request(csr)
            .send()
            .await
            .unwrap_err();
        use aws_sdk_iot::error::ProvideErrorMetadata;
        assert_eq!(
            err.as_service_error().and_then(|e| e.code()),
            Some("InvalidRequestException"),
            "{what}: {err:?}"
        );
    }
}

#[tokio::test]
async fn private_ca_single_purpose_templates_carry_their_one_extended_key_usage() {
    let Ok(ca_arn) = std::env::var("CVM_PCA_ARN") else {
        return; // the stack has no Private CA
    };
    let pca = aws_sdk_acmpca::Client::new(&cvm_aws::load_sdk_config().await);
    let dir = tempfile::tempdir().unwrap();
    for (template, wanted, unwanted) in [
        (
            "EndEntityClientAuthCertificate/V1",
            "TLS Web Client Authentication",
            "TLS Web Server Authentication",
        ),
        (
            "EndEntityServerAuthCertificate/V1",
            "TLS Web Server Authentication",
            "TLS Web Client Authentication",
        ),
    ] {
        let serial = unique_serial("EMU-PCA");
        let arn = pca
            .issue_certificate()
            .certificate_authority_arn(&ca_arn)
            .csr(aws_sdk_acmpca::primitives::Blob::new(rcgen_csr(&serial)))
            .signing_algorithm(aws_sdk_acmpca::types::SigningAlgorithm::Sha256Withrsa)
            .template_arn(format!("arn:aws:acm-pca:::template/{template}"))
            .validity(
                aws_sdk_acmpca::types::Validity::builder()
                    .r#type(aws_sdk_acmpca::types::ValidityPeriodType::Days)
                    .value(1)
                    .build()
                    .unwrap(),
            )
            .idempotency_token(serial.chars().rev().take(36).collect::<String>())
            .send()
            .await
            .unwrap()
            .certificate_arn()
            .unwrap()
            .to_owned();
        let pem = pca
            .get_certificate()
            .certificate_authority_arn(&ca_arn)
            .certificate_arn(arn)
            .send()
            .await
            .unwrap()
            .certificate()
            .unwrap()
            .to_owned();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, pem).unwrap();
        let text = String::from_utf8(openssl(&[
            "x509",
            "-noout",
            "-text",
            "-in",
            path.to_str().unwrap(),
        ]))
        .unwrap();
        assert!(
            text.contains(wanted) && !text.contains(unwanted),
            "{template}: {text}"
        );
        assert!(text.contains("CA:FALSE"), "{template}: {text}");
    }
}

#[tokio::test]
async fn a_private_ca_revocation_in_awss_serial_form_is_seen_by_get_certificate() {
    let Ok(ca_arn) = std::env::var("CVM_PCA_ARN") else {
        return; // the stack has no Private CA
    };
    let pca = aws_sdk_acmpca::Client::new(&cvm_aws::load_sdk_config().await);
    let serial = unique_serial("EMU-REVOKE");
    let arn = pca
        .issue_certificate()
        .certificate_authority_arn(&ca_arn)
        .csr(aws_sdk_acmpca::primitives::Blob::new(rcgen_csr(&serial)))
        .signing_algorithm(aws_sdk_acmpca::types::SigningAlgorithm::Sha256Withrsa)
        .template_arn("arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1")
        .validity(
            aws_sdk_acmpca::types::Validity::builder()
                .r#type(aws_sdk_acmpca::types::ValidityPeriodType::Days)
                .value(1)
                .build()
                .unwrap(),
        )
        .idempotency_token(serial.chars().rev().take(36).collect::<String>())
        .send()
        .await
        .unwrap()
        .certificate_arn()
        .unwrap()
        .to_owned();
    let get = || {
        pca.get_certificate()
            .certificate_authority_arn(&ca_arn)
            .certificate_arn(&arn)
            .send()
    };
    let pem = get().await.unwrap().certificate().unwrap().to_owned();
    // The form the product sends, as AWS documents it: lowercase hex pairs.
    let hex_serial = cvm_core::provider::certificate_serial_hex(&pem).unwrap();
    assert!(hex_serial.contains(':') && hex_serial == hex_serial.to_lowercase());
    pca.revoke_certificate()
        .certificate_authority_arn(&ca_arn)
        .certificate_serial(&hex_serial)
        .revocation_reason(aws_sdk_acmpca::types::RevocationReason::CessationOfOperation)
        .send()
        .await
        .unwrap();
    // moto answers GetCertificate for a revoked certificate with an error.
    let err = get().await.unwrap_err();
    assert!(format!("{err:?}").contains("revoked"), "{err:?}");
}
