//! Files written whole or not at all (temp + fsync + rename), readable by the owner only, or
//! also by one configured group.
//!
//! Modes are set explicitly after creation, not left to the creation mode: the process umask
//! (`UMask=0077` in the unit) would otherwise take the group's bits away.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file or directory of the client's that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// Adds the path to an I/O error: `.map_err(FileError::at(&path))`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the cause is the directory or file not being the client's to write (a group it
    /// may not give files to, a directory of other things): that does not change by itself.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self.source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
        )
    }
}

/// Who may read what the client writes. Private: directory 0700, files 0600. Shared with a
/// group: directory 0750, files 0640, group-owned by it, so that a service user in that group
/// can run `cvm-device credentials` (an AWS `credential_process`) or `publish` without root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    group: Option<u32>,
}

impl Sharing {
    pub const PRIVATE: Self = Self { group: None };

    pub const fn with_group(gid: u32) -> Self {
        Self { group: Some(gid) }
    }

    /// A group by name (looked up like `getent group`) or by number.
    pub fn resolve(group: &str) -> Result<Self, String> {
        if let Ok(gid) = group.parse::<u32>() {
            return Ok(Self::with_group(gid));
        }
        match nix::unistd::Group::from_name(group) {
            Ok(Some(found)) => Ok(Self::with_group(found.gid.as_raw())),
            Ok(None) => Err(format!("group {group:?}: no such group on this system")),
            Err(e) => Err(format!("group {group:?}: cannot look it up: {e}")),
        }
    }

    pub const fn gid(&self) -> Option<u32> {
        self.group
    }

    pub const fn dir_mode(&self) -> u32 {
        match self.group {
            Some(_) => 0o750,
            None => 0o700,
        }
    }

    pub const fn file_mode(&self) -> u32 {
        match self.group {
            Some(_) => 0o640,
            None => 0o600,
        }
    }

    /// Gives an open file (or directory) this sharing's group and `mode`.
    fn apply(&self, file: &fs::File, mode: u32) -> std::io::Result<()> {
        if let Some(gid) = self.group {
            std::os::unix::fs::fchown(file, None, Some(gid))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
    }
}

/// The names the client writes in the enrollment directory. A directory holding any of them
/// (or nothing) is the client's own: its mode and group follow the configuration.
pub const CLIENT_FILES: [&str; 5] = [
    "enrollment.json",
    "certificate.pem",
    "ca.pem",
    "device.key",
    "zymkey-slot",
];

/// The names of work in progress the client keeps: a provisioning (`provisioning.json`, kept
/// owner-only whatever the sharing: it holds a credential) and a renewal (`next/`, and in it
/// `key`, `renewal.json`, `promoting`). They mark a directory as the client's too.
pub const CLIENT_STATE: [&str; 5] = [
    "provisioning.json",
    "next",
    "key",
    "renewal.json",
    "promoting",
];

/// Whether `dir` is empty or holds an enrollment: a directory the client may set the mode of.
/// Anything else (`/tmp`, `/var/lib` given by mistake) is left as it is.
fn is_client_dir(dir: &Path) -> std::io::Result<bool> {
    let mut entries = fs::read_dir(dir)?.peekable();
    if entries.peek().is_none() {
        return Ok(true);
    }
    Ok(CLIENT_FILES
        .iter()
        .chain(CLIENT_STATE.iter())
        .any(|name| dir.join(name).exists()))
}

/// Creates `dir` if needed, and gives it the sharing's mode and group when it is the client's
/// own (see [`CLIENT_FILES`]). A directory holding other things is used as it is, unless a
/// group is configured: the group could not reach the files through it. Missing parents are
/// made 0755 (they only lead to `dir`), so that the group can reach it.
pub fn ensure_dir(dir: &Path, sharing: Sharing) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            ensure_parents(parent)?;
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        other => other?,
    }
    if is_client_dir(dir)? {
        sharing.apply(&fs::File::open(dir)?, sharing.dir_mode())
    } else if sharing.gid().is_some() {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "holds files that are not the client's: sharing with a group needs a directory \
             of the client's own",
        ))
    } else {
        Ok(())
    }
}

/// Creates `dir` and its missing parents, each 0755 whatever the umask.
fn ensure_parents(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            ensure_parents(parent)?;
        }
    }
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
    }
}

/// Gives an existing file the sharing's mode and group (when an enrollment is run again with
/// another `group`). Symbolic links are left alone.
pub fn share_file(path: &Path, sharing: Sharing) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {
            let file = fs::File::open(path)?;
            let wanted_gid = sharing.gid().unwrap_or(meta.gid());
            if meta.mode() & 0o777 != sharing.file_mode() || meta.gid() != wanted_gid {
                sharing.apply(&file, sharing.file_mode())?;
            }
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `contents` to `path` whole or not at all, with the sharing's file mode and group.
pub fn write_atomic(path: &Path, contents: &[u8], sharing: Sharing) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    sharing.apply(&file, sharing.file_mode())?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).map(|m| m.mode() & 0o777).unwrap_or(0)
    }

    /// A group this process may give files to: its own.
    fn own_group() -> Sharing {
        Sharing::with_group(nix::unistd::getegid().as_raw())
    }

    #[test]
    fn private_files_are_0600_in_a_0700_directory() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let dir = tmp.path().join("a/cvm");
        assert!(ensure_dir(&dir, Sharing::PRIVATE).is_ok());
        assert!(write_atomic(&dir.join("ca.pem"), b"x", Sharing::PRIVATE).is_ok());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.pem")), 0o600);
        assert_eq!(
            mode(&tmp.path().join("a")),
            0o755,
            "a parent only leads to it"
        );
    }

    #[test]
    fn shared_files_are_0640_in_a_0750_directory_of_the_group() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let dir = tmp.path().join("cvm");
        let shared = own_group();
        assert!(ensure_dir(&dir, shared).is_ok());
        assert!(write_atomic(&dir.join("ca.pem"), b"x", shared).is_ok());
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&dir.join("ca.pem")), 0o640);
        let gid = fs::metadata(dir.join("ca.pem")).map(|m| m.gid()).ok();
        assert_eq!(gid, shared.gid());
        // And back to private when the group is no longer configured.
        assert!(ensure_dir(&dir, Sharing::PRIVATE).is_ok());
        assert!(share_file(&dir.join("ca.pem"), Sharing::PRIVATE).is_ok());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.pem")), 0o600);
    }

    #[test]
    fn a_directory_holding_other_things_keeps_its_mode() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let dir = tmp.path();
        assert!(fs::write(dir.join("unrelated"), b"x").is_ok());
        assert!(fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).is_ok());
        assert!(ensure_dir(dir, Sharing::PRIVATE).is_ok());
        assert_eq!(mode(dir), 0o755, "not the client's: left as it is");
        assert!(
            ensure_dir(dir, own_group()).is_err(),
            "a group could not rely on it"
        );
    }

    #[test]
    fn work_in_progress_marks_a_directory_as_the_clients() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let dir = tmp.path().join("cvm");
        assert!(fs::create_dir(&dir).is_ok());
        assert!(fs::write(dir.join("provisioning.json"), b"{}").is_ok());
        assert!(ensure_dir(&dir, own_group()).is_ok());
        assert_eq!(mode(&dir), 0o750);
        let next = dir.join("next");
        assert!(fs::create_dir(&next).is_ok());
        assert!(fs::write(next.join("key"), b"file:/k").is_ok());
        assert!(ensure_dir(&next, own_group()).is_ok());
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(Sharing::resolve("0").map(|s| s.gid()), Ok(Some(0)));
        assert_eq!(Sharing::resolve("root").map(|s| s.gid()), Ok(Some(0)));
        let err = Sharing::resolve("no-such-group-cvm")
            .err()
            .unwrap_or_default();
        assert!(err.contains("no such group"), "{err}");
    }
}
