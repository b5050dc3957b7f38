//! The device side of the certificate vending machine: a key that stays in its key store
//! (Zymkey, PKCS#11 or a file), a CSR signed there, the two doors that turn it into an AWS IoT
//! identity (the vending API's enrollment, or fleet provisioning by claim over MQTT), its
//! renewal, and that identity at work over mutual TLS (AWS credentials through the IoT
//! credentials provider, HTTPS publish).

pub mod api;
pub mod clock;
pub mod config;
pub mod csr;
pub mod enroll;
pub mod exit;
pub mod files;
pub mod http;
pub mod identity;
pub mod iot;
pub mod keystore;
pub mod mqtt;
pub mod provision;
pub mod renew;
pub mod tls;

pub use keystore::{FileKeyStore, KeyStore, KeyStoreError};
