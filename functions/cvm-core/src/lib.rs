//! The certificate vending machine's domain: what a device sends, what is stored about it,
//! and the workflows that turn an enrollment into an AWS IoT identity and keep it alive: the
//! HTTPS vend ([`vend`]), fleet provisioning's pre-provisioning hook ([`fleet`]), renewal
//! ([`renew`]), and the operations on a record ([`lifecycle`]).
//!
//! This crate knows nothing about AWS SDKs or HTTP. It talks to the outside world through
//! narrow ports ([`ports::DeviceStore`], [`ports::CertificateIssuer`],
//! [`ports::ThingRegistry`], [`provider::PrivateCa`]), implemented by adapters at the edge
//! (`cvm-aws`) and by in-memory fakes for tests ([`testing`], behind the `testing` feature).

pub mod audit;
pub mod csr;
pub mod deadline;
pub mod domain;
pub mod emf;
pub mod fleet;
pub mod lifecycle;
pub mod lockout;
pub mod pacing;
pub mod ports;
pub mod provider;
pub mod record;
pub mod renew;
pub mod signature;
pub mod vend;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use audit::{AuditEvent, AuditKind};
pub use csr::{Csr, CsrError, KeyFingerprint, KeyKind};
pub use domain::{Attributes, DomainError, PolicyName, Serial, ThingName, Token, TokenHash};
pub use lockout::{Lockout, LockoutPolicy};
pub use record::{
    CertificateRef, Change, Claim, Credentials, DeviceRecord, DeviceStatus, Door, Guard,
    IssuedCertificate, Renewal,
};
pub use vend::{Endpoints, VendConfig, VendError, VendOutcome, VendRequest, Vendor};
