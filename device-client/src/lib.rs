//! The device side of the certificate vending machine: a key that stays in its key store
//! (Zymkey, PKCS#11 or a file), a CSR signed there, the enrollment call that turns it into an
//! AWS IoT identity, and that identity at work over mutual TLS (AWS credentials through the
//! IoT credentials provider, HTTPS publish).

pub mod clock;
pub mod config;
pub mod csr;
pub mod enroll;
pub mod exit;
pub mod files;
pub mod http;
pub mod iot;
pub mod keystore;
pub mod tls;

pub use keystore::{FileKeyStore, KeyStore, KeyStoreError};
