//! The AWS SDK configuration, two ways.
//!
//! Tools and local servers use the SDK's default provider chain ([`load_sdk_config`]):
//! profiles, assume-role, IMDS, whatever the operator's machine has (no SSO). A Lambda
//! function has exactly one source: the environment Lambda sets (`AWS_REGION` and the role's
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`). [`lambda_sdk_config`] reads
//! only that, so the chain's providers (profile files, STS, IMDS, ECS, credential processes)
//! are never linked into a bootstrap: a smaller binary to load on every cold start, and
//! nothing at init but reading a few variables.
//!
//! A function also trusts only the roots AWS's service endpoints chain to (Amazon Trust
//! Services), not the system's store: the SDK loads the trust store when a client is built, at
//! init, and reading and parsing the system's 140-odd roots (twice: the bundle and the
//! directory) was most of the vend function's init (`make bench`). `SSL_CERT_FILE`, when set,
//! adds its certificates: how the local stack and the benchmark trust their TLS proxies.

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

use crate::config::ConfigError;

/// Loads the SDK configuration once (region, credentials, `AWS_ENDPOINT_URL` override) through
/// the default provider chain. Building it is the expensive part; clients made from it are cheap.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .load()
        .await
}

/// The SDK's hyper + rustls client, with ring as rustls' crypto (the SDK's default is aws-lc,
/// which would put a second crypto library of several megabytes in every bootstrap).
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The roots of Amazon Trust Services, which every AWS service endpoint chains to (Starfield
/// Services G2 cross-signs them for older clients).
const AWS_ENDPOINT_ROOTS: [&str; 5] = [
    include_str!("../certs/AmazonRootCA1.pem"),
    include_str!("../certs/AmazonRootCA2.pem"),
    include_str!("../certs/AmazonRootCA3.pem"),
    include_str!("../certs/AmazonRootCA4.pem"),
    include_str!("../certs/SFSRootCAG2.pem"),
];

/// [`https_client`] trusting [`AWS_ENDPOINT_ROOTS`] and the PEM certificates of `extra_roots`
/// (the contents of `SSL_CERT_FILE`), not the system's store.
fn lambda_https_client(extra_roots: Option<String>) -> Result<SharedHttpClient, ConfigError> {
    let mut trust = TrustStore::empty().with_native_roots(false);
    for root in AWS_ENDPOINT_ROOTS
        .iter()
        .map(|pem| pem.as_bytes().to_vec())
        .chain(extra_roots.map(String::into_bytes))
    {
        trust.add_pem_certificate(root);
    }
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| ConfigError::Invalid {
            name: "SSL_CERT_FILE",
            reason: e.to_string(),
        })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https())
}

/// A Lambda function's SDK configuration: region and credentials from the environment, and
/// endpoint overrides from `AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL`, as the SDK's own
/// loader reads them (the local stack and the benchmark point functions at their emulators
/// this way).
pub fn lambda_sdk_config() -> Result<SdkConfig, ConfigError> {
    lambda_sdk_config_from(&|name| std::env::var(name).ok())
}

fn lambda_sdk_config_from(env: crate::config::Env) -> Result<SdkConfig, ConfigError> {
    let extra_roots = match env("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        None => None,
        Some(path) => {
            let pem = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                name: "SSL_CERT_FILE",
                path: path.clone(),
                source,
            })?;
            check_certificates(&pem).map_err(|reason| ConfigError::Invalid {
                name: "SSL_CERT_FILE",
                reason: format!("{path}: {reason}"),
            })?;
            Some(pem)
        }
    };
    let region = env("AWS_REGION")
        .filter(|r| !r.trim().is_empty())
        .ok_or(ConfigError::Missing("AWS_REGION"))?;
    let endpoints = EndpointOverrides {
        global: env("AWS_ENDPOINT_URL").filter(|v| !v.is_empty()),
        per_service: ["DYNAMODB", "IOT", "ACM_PCA"]
            .into_iter()
            .filter_map(|service| {
                let url = env(&format!("AWS_ENDPOINT_URL_{service}")).filter(|v| !v.is_empty())?;
                Some((service, url))
            })
            .collect(),
    };
    Ok(SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ))
        .http_client(lambda_https_client(extra_roots)?)
        .service_config(endpoints)
        .build())
}

/// The SDK's TLS set-up panics on a certificate it cannot read; a bad file must fail the cold
/// start with a message instead: at least one PEM certificate, each a well-formed X.509 one.
fn check_certificates(pem: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use x509_cert::der::Decode;
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if certificates.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    for (i, der) in certificates.iter().enumerate() {
        x509_cert::Certificate::from_der(der)
            .map_err(|e| format!("certificate {} is not X.509 ({e})", i + 1))?;
    }
    Ok(())
}

/// `AWS_ENDPOINT_URL_<SERVICE>` (the service id upper-cased, spaces as `_`), else
/// `AWS_ENDPOINT_URL`, read once at init.
#[derive(Debug, Clone, Default)]
struct EndpointOverrides {
    global: Option<String>,
    per_service: Vec<(&'static str, String)>,
}

impl LoadServiceConfig for EndpointOverrides {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        if key.env() != "AWS_ENDPOINT_URL" {
            return None;
        }
        let service = key
            .service_id()
            .to_ascii_uppercase()
            .replace([' ', '-'], "_");
        self.per_service
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, url)| url.clone())
            .or_else(|| self.global.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<SdkConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        lambda_sdk_config_from(&move |k| map.get(k).cloned())
    }

    fn endpoint(sdk: &SdkConfig, service_id: &str) -> Option<String> {
        let key = ServiceConfigKey::builder()
            .service_id(service_id)
            .profile("endpoint_url")
            .env("AWS_ENDPOINT_URL")
            .build()
            .unwrap();
        sdk.service_config()?.load_config(key)
    }

    #[test]
    fn region_is_required() {
        assert!(matches!(
            config(&[]),
            Err(ConfigError::Missing("AWS_REGION"))
        ));
        let sdk = config(&[("AWS_REGION", "eu-west-1")]).unwrap();
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert!(sdk.credentials_provider().is_some());
        assert_eq!(endpoint(&sdk, "DynamoDB"), None);
    }

    #[test]
    fn ssl_cert_file_is_read_and_a_missing_one_named() {
        let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/AmazonRootCA1.pem");
        assert!(config(&[("AWS_REGION", "us-east-1"), ("SSL_CERT_FILE", bundle)]).is_ok());
        let e = config(&[
            ("AWS_REGION", "us-east-1"),
            ("SSL_CERT_FILE", "/nonexistent.pem"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
    }

    #[test]
    fn the_embedded_roots_are_certificates() {
        for pem in AWS_ENDPOINT_ROOTS {
            assert_eq!(check_certificates(pem), Ok(()), "{}", &pem[..40]);
        }
    }

    #[test]
    fn a_file_of_no_certificates_or_a_broken_one_is_refused() {
        assert!(check_certificates("").is_err());
        assert!(check_certificates("not a certificate\n").is_err());
        let broken = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        assert!(check_certificates(broken)
            .unwrap_err()
            .contains("not X.509"));
        let dir = std::env::temp_dir().join(format!("cvm-sdk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.pem");
        std::fs::write(&path, broken).unwrap();
        let e = config(&[
            ("AWS_REGION", "us-east-1"),
            ("SSL_CERT_FILE", path.to_str().unwrap()),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_service_endpoint_wins_over_the_global_one() {
        let sdk = config(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "https://127.0.0.1:7001"),
            ("AWS_ENDPOINT_URL_ACM_PCA", "https://127.0.0.1:7002"),
        ])
        .unwrap();
        assert_eq!(
            endpoint(&sdk, "DynamoDB").as_deref(),
            Some("https://127.0.0.1:7001")
        );
        assert_eq!(
            endpoint(&sdk, "ACM PCA").as_deref(),
            Some("https://127.0.0.1:7002")
        );
        assert_eq!(
            endpoint(&sdk, "IoT").as_deref(),
            Some("http://127.0.0.1:5000")
        );
    }
}
