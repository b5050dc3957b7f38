//! The factory file of a bulk enrollment: the one place a device's token exists outside the
//! device. The table keeps only the tokens' hashes, so the file is written, and made durable,
//! before any table write: whatever happens after, no stored hash lacks its token.
//!
//! Format: CSV with the header `serial,token`, one line per device that got a token, LF line
//! ends. Serials (`A-Z a-z 0-9 : _ -`) and tokens (`A-Z a-z 0-9 _ -`) need no quoting.
//! The file is created exclusively (an existing file is never overwritten, so no earlier
//! tokens can be lost), mode 0600, and fsynced with its directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cvm_core::{Serial, Token};

use crate::error::AdminError;

pub const HEADER: &str = "serial,token";

/// A factory file created (empty) and not yet written.
pub struct FactoryFile {
    path: PathBuf,
    file: Option<File>,
}

impl FactoryFile {
    /// Creates the file, refusing if anything exists at the path.
    pub fn create(path: &Path) -> Result<Self, AdminError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                AdminError::Usage(format!(
                    "the factory file {} exists; it may hold tokens that exist nowhere else, so \
                     it is never overwritten: choose another path",
                    path.display()
                ))
            } else {
                AdminError::Io {
                    what: "could not create the factory file",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Writes every line and makes it durable (the file, then its directory entry).
    pub fn write_all(mut self, tokens: &[(Serial, Token)]) -> Result<PathBuf, AdminError> {
        let io = |what| AdminError::io(what, self.path.clone());
        let mut file = self
            .file
            .take()
            .ok_or_else(|| AdminError::Usage("the factory file was written already".into()))?;
        let mut text = String::with_capacity(HEADER.len() + 1 + tokens.len() * 72);
        text.push_str(HEADER);
        text.push('\n');
        for (serial, token) in tokens {
            text.push_str(serial.as_str());
            text.push(',');
            text.push_str(token.expose_secret());
            text.push('\n');
        }
        let written = file
            .write_all(text.as_bytes())
            .map_err(io("could not write the factory file"))
            .and_then(|()| {
                file.sync_all()
                    .map_err(io("could not flush the factory file to disk"))
            })
            .and_then(|()| sync_directory(&self.path));
        if let Err(e) = written {
            // No record was written yet, so its tokens are not needed by anyone; a partial
            // file would only mislead.
            drop(file);
            let _ = std::fs::remove_file(&self.path);
            return Err(e);
        }
        Ok(self.path.clone())
    }

    /// Removes the file when nothing was written to it (the command stopped before it got
    /// any token).
    pub fn abandon(mut self) {
        if self.file.take().is_some() {
            // Best effort: an empty file holds nothing to lose.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes the file's directory entry durable (a new file's name is in its directory).
fn sync_directory(path: &Path) -> Result<(), AdminError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(AdminError::io(
                "could not flush the factory file's directory to disk",
                dir,
            ))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn written_once_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("factory.csv");
        let token = Token::generate().unwrap();
        let serial = Serial::parse("ZK-1").unwrap();
        let file = FactoryFile::create(&path).unwrap();
        file.write_all(&[(serial, token.clone())]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("serial,token\nZK-1,{}\n", token.expose_secret())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = FactoryFile::create(&path);
        assert!(matches!(again, Err(AdminError::Usage(m)) if m.contains("never overwritten")));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn an_abandoned_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("factory.csv");
        FactoryFile::create(&path).unwrap().abandon();
        assert!(!path.exists());
    }
}
