//! The agent's persistent identity: a node id and an X25519 key pair in its data directory.
//!
//! Files are created with mode 0600 (the directory 0700) and never rewritten, so a restarted or
//! crashed agent comes back as the same node with the same overlay address. The private key
//! never leaves the host: only the public key is sent to the controller.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use cladnet_wg::{PrivateKey, PublicKey};

/// File holding the node id.
pub const NODE_ID_FILE: &str = "node_id";
/// File holding the base64 private key.
pub const PRIVATE_KEY_FILE: &str = "private.key";

/// Loading or creating the identity failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Filesystem error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not valid.
    #[error(
        "{path} is corrupt: {reason}; move it away to create a new identity (the node then joins as a new peer)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key file can be read by others.
    #[error("{path} has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// This node's identity.
pub struct Identity {
    /// Stable node id.
    pub node_id: String,
    /// Private key (never sent anywhere).
    pub private_key: PrivateKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl Identity {
    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.private_key.public_key()
    }

    /// The raw private key bytes, for the Join proof (zeroed on drop).
    pub fn private_key_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        use base64::Engine as _;
        let text = self.private_key.to_base64();
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .expect("a PrivateKey's base64 form decodes"),
        );
        out.copy_from_slice(&bytes);
        out
    }

    /// Loads the identity from `dir`, creating the directory and files on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating", dir))?;
        let id_path = dir.join(NODE_ID_FILE);
        let key_path = dir.join(PRIVATE_KEY_FILE);
        let node_id = match read(&id_path)? {
            Some(id) => {
                let valid = !id.is_empty()
                    && id.len() <= 128
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !valid {
                    return Err(IdentityError::Corrupt {
                        path: id_path,
                        reason: "not a node id".into(),
                    });
                }
                id
            }
            None => {
                let mut raw = [0u8; 8];
                getrandom::fill(&mut raw).expect("the OS random source works");
                let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                write_new(&id_path, &id)?;
                id
            }
        };
        let private_key = match read(&key_path)? {
            Some(text) => {
                let mode = fs::metadata(&key_path)
                    .map_err(io_err("reading", &key_path))?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Permissions {
                        path: key_path,
                        mode,
                    });
                }
                PrivateKey::from_base64(&text).map_err(|_| IdentityError::Corrupt {
                    path: key_path.clone(),
                    reason: "not a base64 X25519 key".into(),
                })?
            }
            None => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).expect("the OS random source works");
                let key = PrivateKey::from_bytes(raw);
                write_new(&key_path, &key.to_base64())?;
                key
            }
        };
        Ok(Self {
            node_id,
            private_key,
        })
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io { op, path, source }
}

fn read(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            op: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` (mode 0600) with `content`; fails if it exists, so two agents racing on
/// one directory cannot overwrite each other.
fn write_new(path: &Path, content: &str) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        op: "creating",
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{content}").map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let first = Identity::load_or_create(&data).unwrap();
        let again = Identity::load_or_create(&data).unwrap();
        assert_eq!(first.node_id, again.node_id);
        assert_eq!(first.public_key(), again.public_key());
        for f in [NODE_ID_FILE, PRIVATE_KEY_FILE] {
            let mode = fs::metadata(data.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(
            !format!("{first:?}").contains(&*first.private_key.to_base64()),
            "Debug never shows the key"
        );
    }

    #[test]
    fn loose_permissions_and_corruption_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(PRIVATE_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Permissions { .. })
        ));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&key, "garbage").unwrap();
        let err = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corrupt") && err.contains("private.key"),
            "{err}"
        );
        fs::write(dir.path().join(NODE_ID_FILE), "bad id/with slash").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
