//! The device side of the certificate vending machine: a key that stays in its key store,
//! a CSR signed there, and the enrollment call that turns it into an AWS IoT identity.

pub mod csr;
pub mod enroll;
pub mod files;
pub mod keystore;

pub use keystore::{FileKeyStore, KeyStore, KeyStoreError};
