//! The certificate vending machine's domain: what a device sends, what is stored about it,
//! and the vending workflow that turns an enrollment into an AWS IoT identity.
//!
//! This crate knows nothing about AWS SDKs or HTTP. It talks to the outside world through three
//! narrow ports ([`ports::DeviceStore`], [`ports::CertificateIssuer`], [`ports::ThingRegistry`]),
//! implemented by adapters at the edge (`cvm-aws`) and by in-memory fakes for tests
//! ([`testing`], behind the `testing` feature).

pub mod csr;
pub mod domain;
pub mod emf;
pub mod ports;
pub mod provider;
pub mod record;
pub mod vend;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use csr::{Csr, CsrError, KeyFingerprint, KeyKind};
pub use domain::{Attributes, DomainError, PolicyName, Serial, ThingName, Token, TokenHash};
pub use record::{CertificateRef, Claim, DeviceRecord, DeviceStatus, IssuedCertificate};
pub use vend::{Endpoints, VendConfig, VendError, VendOutcome, VendRequest, Vendor};
