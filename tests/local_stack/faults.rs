//! Failures injected around the real adapters, against the real (emulated) AWS: whatever
//! step fails, no active certificate is left that the table does not know, the token stays
//! usable, and a retry succeeds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvm_aws::{DynamoStore, IotIssuer, IotRegistry};
use cvm_core::ports::*;
use cvm_core::record::{CertificateRef, Claim, DeviceRecord, DeviceStatus, IssuedCertificate};
use cvm_core::*;

use crate::helpers::*;

/// Wraps a real adapter and fails the named operation once, before calling through.
#[derive(Clone)]
struct FailOnce<T> {
    inner: T,
    operation: Arc<Mutex<Option<&'static str>>>,
}

impl<T> FailOnce<T> {
    fn check(&self, operation: &'static str) -> Result<(), PortError> {
        let mut armed = self.operation.lock().unwrap();
        if *armed == Some(operation) {
            *armed = None;
            return Err(
                PortError::new(FailureKind::Unavailable, operation).with_code("InjectedFault")
            );
        }
        Ok(())
    }
}

impl<T: DeviceStore> DeviceStore for FailOnce<T> {
    async fn get(&self, serial: &Serial) -> Result<Option<DeviceRecord>, PortError> {
        self.check("store.get")?;
        self.inner.get(serial).await
    }
    async fn create(&self, record: &DeviceRecord) -> Result<Written, PortError> {
        self.inner.create(record).await
    }
    async fn record_failed_attempt(&self, serial: &Serial) -> Result<u32, PortError> {
        self.inner.record_failed_attempt(serial).await
    }
    async fn claim(&self, serial: &Serial, v: u64, claim: &Claim) -> Result<Written, PortError> {
        self.check("store.claim")?;
        self.inner.claim(serial, v, claim).await
    }
    async fn record_pending(
        &self,
        serial: &Serial,
        id: &str,
        c: &CertificateRef,
    ) -> Result<Written, PortError> {
        self.check("store.record_pending")?;
        self.inner.record_pending(serial, id, c).await
    }
    async fn complete(
        &self,
        serial: &Serial,
        id: &str,
        i: &IssuedCertificate,
    ) -> Result<Written, PortError> {
        self.check("store.complete")?;
        self.inner.complete(serial, id, i).await
    }
    async fn release(&self, serial: &Serial, id: &str) -> Result<Written, PortError> {
        self.inner.release(serial, id).await
    }
}

impl<T: CertificateIssuer> CertificateIssuer for FailOnce<T> {
    async fn issue(&self, csr: &Csr) -> Result<NewCertificate, PortError> {
        self.check("issuer.issue")?;
        self.inner.issue(csr).await
    }
    async fn activate(&self, c: &CertificateRef) -> Result<(), PortError> {
        self.check("issuer.activate")?;
        self.inner.activate(c).await
    }
    async fn discard(&self, c: &CertificateRef) -> Result<(), PortError> {
        self.inner.discard(c).await
    }
}

impl<T: ThingRegistry> ThingRegistry for FailOnce<T> {
    async fn ensure_thing(&self, t: &ThingName, a: &Attributes) -> Result<(), PortError> {
        self.check("registry.ensure_thing")?;
        self.inner.ensure_thing(t, a).await
    }
    async fn attach_policy(&self, p: &PolicyName, c: &CertificateRef) -> Result<(), PortError> {
        self.check("registry.attach_policy")?;
        self.inner.attach_policy(p, c).await
    }
    async fn detach_policy(&self, p: &PolicyName, c: &CertificateRef) -> Result<(), PortError> {
        self.inner.detach_policy(p, c).await
    }
    async fn attach_thing_principal(
        &self,
        t: &ThingName,
        c: &CertificateRef,
    ) -> Result<(), PortError> {
        self.check("registry.attach_thing_principal")?;
        self.inner.attach_thing_principal(t, c).await
    }
    async fn detach_thing_principal(
        &self,
        t: &ThingName,
        c: &CertificateRef,
    ) -> Result<(), PortError> {
        self.inner.detach_thing_principal(t, c).await
    }
}

#[tokio::test]
async fn a_failure_at_every_aws_step_loses_nothing() {
    let sdk = cvm_aws::load_sdk_config().await;
    let _ = env("AWS_ENDPOINT_URL");
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let iot_client = aws_sdk_iot::Client::new(&sdk);
    let store = DynamoStore::new(dynamodb, env("CVM_TABLE_NAME"));
    let armed = Arc::new(Mutex::new(None));
    let config = VendConfig {
        default_policy: PolicyName::parse(&env("CVM_DEFAULT_POLICY_NAME")).unwrap(),
        max_failed_attempts: 5,
        claim_lease: Duration::from_secs(60),
        endpoints: Endpoints {
            data: "d".into(),
            credentials: "c".into(),
        },
        ca_certificates: vec![],
        role_alias: None,
    };
    let vendor = Vendor::new(
        FailOnce {
            inner: store.clone(),
            operation: armed.clone(),
        },
        FailOnce {
            inner: IotIssuer::new(iot_client.clone()),
            operation: armed.clone(),
        },
        FailOnce {
            inner: IotRegistry::new(iot_client.clone()),
            operation: armed.clone(),
        },
        config,
    );

    for operation in cvm_core::testing::OPERATIONS {
        let serial = unique_serial("FAULT");
        let token = enroll(&serial, &[]);
        let request = VendRequest {
            serial: Serial::parse(&serial).unwrap(),
            token: Token::parse(&token).unwrap(),
            csr: Csr::parse_pem(&rcgen_csr(&serial)).unwrap(),
        };
        *armed.lock().unwrap() = Some(operation);
        let err = vendor.vend(&request).await.unwrap_err();
        assert_eq!(err.code(), "service_unavailable", "{operation}");
        assert!(
            armed.lock().unwrap().is_none(),
            "{operation} was never reached"
        );

        let certs = certificates_for(&iot_client, &serial).await;
        assert!(
            certs.iter().all(|(_, status)| status != "ACTIVE"),
            "{operation}: active certificate left: {certs:?}"
        );
        let record = store.get(&request.serial).await.unwrap().unwrap();
        assert_eq!(
            record.status,
            DeviceStatus::Enrolled,
            "{operation}: token not usable again"
        );

        let outcome = vendor.vend(&request).await;
        let Ok(VendOutcome::Issued(delivery)) = outcome else {
            panic!("{operation}: retry failed: {outcome:?}")
        };
        let certs = certificates_for(&iot_client, &serial).await;
        assert_eq!(
            certs,
            vec![(delivery.issued.certificate.id.clone(), "ACTIVE".to_owned())],
            "{operation}"
        );
    }
}
