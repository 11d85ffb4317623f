//! The gateway's data directory: one gateway at a time (a lock), the
//! replica's name, and secrets that no other local user can read.
//!
//! The directory is created `0700` and every secret file `0600`, at
//! creation rather than by a `chmod` afterwards, so there is no moment
//! when another user could read them. A secret found readable by others
//! (made by an older version, or by hand) is made private and reported:
//! whoever could read it could mint valid L402 tokens, so it should be
//! rotated.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An open data directory, locked for this process while it lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    replica: String,
    /// Held for the gateway's life: a second gateway on this directory
    /// would release this one's claims at its start.
    _lock: File,
}

/// Creates `path` (and missing parents) readable by its owner only, and
/// makes an existing one so.
///
/// # Errors
///
/// When it cannot be created or its mode cannot be set.
pub fn create_private_dir(path: &Path) -> Result<()> {
    if path.exists() && !path.is_dir() {
        anyhow::bail!("{} is not a directory", path.display());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(0o700)).with_context(|| {
            format!(
                "making {} private{}",
                path.display(),
                owned_by_another(&metadata)
            )
        })?;
        tracing::warn!(dir = %path.display(), mode = format!("{:o}", mode & 0o777), "the data dir was open to other users; it is 0700 now");
    }
    Ok(())
}

/// Writes a new file readable by its owner only; fails if it exists.
fn create_private_file(path: &Path, contents: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `contents` to `path`, readable by its owner only, replacing
/// what was there (through a file renamed into place, so a reader never
/// sees half of it).
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes the file at `path` its owner's only (`0600`) if other users
/// could read or write it; answers the mode it had then (`None`: it was
/// private already).
///
/// # Errors
///
/// When its mode cannot be read or set.
pub fn make_private(path: &Path) -> Result<Option<u32>> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, Permissions::from_mode(0o600)).with_context(|| {
        format!(
            "making {} private{}",
            path.display(),
            std::fs::metadata(path).map_or(String::new(), |m| owned_by_another(&m))
        )
    })?;
    Ok(Some(mode))
}

/// Why a mode could not be set, when the file is another user's: only its
/// owner may change it.
fn owned_by_another(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    // The process's own directory belongs to the user it runs as (Linux).
    match std::fs::metadata("/proc/self").map(|me| me.uid()) {
        Ok(me) if me != metadata.uid() => format!(
            " (it belongs to user {}, this process runs as {me}: only its owner can)",
            metadata.uid()
        ),
        _ => String::new(),
    }
}

/// Reads a small file made by [`create_private_file`], or makes it with
/// `make()`. A file readable by others is made private, with a warning
/// when it is `secret`.
fn read_or_create(path: &Path, secret: bool, make: impl FnOnce() -> String) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Some(mode) = make_private(path)? {
                if secret {
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "a secret was readable by other users; it is 0600 now, but rotate it: whoever read it can use it (mpp_secret makes credentials, admin_secret opens the admin API); stop the gateway, delete the file (or set a new secret) and start it again"
                    );
                }
            }
            let text = text.trim().to_owned();
            if text.is_empty() {
                bail!("{} is empty; delete it to make a new one", path.display());
            }
            Ok(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = make();
            create_private_file(path, &text)?;
            Ok(text)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl DataDir {
    /// Opens (creating, `0700`) the data directory and locks it.
    ///
    /// # Errors
    ///
    /// When another gateway holds it, or it cannot be created or read.
    pub fn open(path: &Path) -> Result<Self> {
        create_private_dir(path)?;
        let lock_path = path.join("gateway.lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another gateway is running on the data dir {}; give each replica its own --data-dir",
                path.display()
            );
        }
        let replica = read_or_create(&path.join("replica_id"), false, || {
            hex::encode(rand::random::<[u8; 16]>())
        })?;
        Ok(Self {
            path: path.to_owned(),
            replica,
            _lock: lock,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This replica's name in the store, stable across restarts.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The secret kept in the file `name`, made (32 random bytes, hex) the
    /// first time.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or written.
    pub fn secret(&self, name: &str) -> Result<String> {
        read_or_create(&self.path.join(name), true, || {
            hex::encode(rand::random::<[u8; 32]>())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn made_private_and_kept_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        let data = DataDir::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let secret = data.secret("mpp_secret").unwrap();
        assert_eq!(secret.len(), 64);
        assert_eq!(mode(&dir.join("mpp_secret")), 0o600);
        assert_eq!(data.secret("mpp_secret").unwrap(), secret);
        assert!(DataDir::open(&dir).is_err(), "a second gateway is refused");
        drop(data);

        // An older version's files, open to everyone, are repaired.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join("mpp_secret"), Permissions::from_mode(0o644)).unwrap();
        let data = DataDir::open(&dir).unwrap();
        assert_eq!(data.secret("mpp_secret").unwrap(), secret);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("mpp_secret")), 0o600);
        assert_eq!(mode(&dir.join("replica_id")), 0o600);
    }
}
