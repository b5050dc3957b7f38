#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;

use cvm_device::csr::{build_csr, key_fingerprint};
use cvm_device::files::Sharing;
use cvm_device::{FileKeyStore, KeyStore};

#[test]
fn file_key_is_created_0600_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/device.key");
    let a = FileKeyStore::open_or_create(&path, Sharing::PRIVATE).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = FileKeyStore::open_or_create(&path, Sharing::PRIVATE).unwrap();
    assert_eq!(a.public_key().unwrap(), b.public_key().unwrap());
    assert_eq!(a.public_key().unwrap()[0], 0x04);
}

#[test]
fn a_readable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.key");
    FileKeyStore::open_or_create(&path, Sharing::PRIVATE).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = FileKeyStore::open_or_create(&path, Sharing::PRIVATE)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn csr_signed_in_the_store_verifies_and_carries_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileKeyStore::open_or_create(&dir.path().join("k"), Sharing::PRIVATE).unwrap();
    let pem = build_csr(&store, "DEVICE-42").unwrap();
    let csr = cvm_core::Csr::parse_pem(&pem).unwrap();
    assert_eq!(csr.common_name(), "DEVICE-42");
    assert_eq!(csr.key_kind(), cvm_core::KeyKind::EcP256);
    assert_eq!(csr.fingerprint().as_str(), key_fingerprint(&store).unwrap());
    // And an independent implementation agrees.
    let csr_path = dir.path().join("req.pem");
    std::fs::write(&csr_path, &pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-verify", "-noout", "-in"])
        .arg(&csr_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
