//! Where the device's identity is on disk. `<dir>` holds the current one: `enrollment.json`
//! (what AWS IoT calls the device and which key store holds its key), `certificate.pem` and
//! `ca.pem`; `enroll` and `provision` write them, `renew` replaces them.
//!
//! A renewal prepares the next identity in `<dir>/next/` and, once the server has confirmed
//! it, moves its files into `<dir>` one rename at a time. The renewal commits by writing
//! `<dir>/next/promoting` first: from that instant the next identity is the device's, and
//! [`path`] gives, file by file, the one not moved yet from `next/`, else the one in `<dir>`.
//! Every command reads through it, so none ever sees a certificate of one identity with the
//! metadata of the other, whenever the moves are interrupted.

use std::path::{Path, PathBuf};

pub const CERTIFICATE_FILE: &str = "certificate.pem";
pub const CA_FILE: &str = "ca.pem";
pub const METADATA_FILE: &str = "enrollment.json";
/// Where a renewal keeps the next identity until it is promoted.
pub const NEXT_DIR: &str = "next";
/// In [`NEXT_DIR`]: the renewal is confirmed and its files are being moved into place.
pub const PROMOTING: &str = "promoting";

/// The current version of the identity file `name` (one of the constants above, or
/// `zymkey-slot`) in the enrollment directory `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    let next = dir.join(NEXT_DIR);
    if next.join(PROMOTING).exists() {
        let promoted = next.join(name);
        if promoted.exists() {
            return promoted;
        }
    }
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_in_progress_is_read_through() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let dir = tmp.path();
        let next = dir.join(NEXT_DIR);
        let _ = std::fs::create_dir_all(&next);
        let _ = std::fs::write(dir.join(CERTIFICATE_FILE), "old");
        let _ = std::fs::write(next.join(CERTIFICATE_FILE), "new");
        // Prepared but not confirmed: the current identity is the old one.
        assert_eq!(path(dir, CERTIFICATE_FILE), dir.join(CERTIFICATE_FILE));
        // Confirmed: the new one, wherever it is.
        let _ = std::fs::write(next.join(PROMOTING), "");
        assert_eq!(path(dir, CERTIFICATE_FILE), next.join(CERTIFICATE_FILE));
        let _ = std::fs::rename(next.join(CERTIFICATE_FILE), dir.join(CERTIFICATE_FILE));
        assert_eq!(path(dir, CERTIFICATE_FILE), dir.join(CERTIFICATE_FILE));
        assert_eq!(path(dir, CA_FILE), dir.join(CA_FILE));
    }
}
