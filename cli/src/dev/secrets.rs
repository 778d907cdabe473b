//! Dev-only secrets, kept beside the data so tokens and sealed credentials survive restarts.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};

pub struct DevSecrets {
    /// The control plane's AES-256-GCM key for tenant credentials.
    pub credentials_key: SecretString,
    /// The HS256 secret both services verify tokens with.
    pub jwt: SecretString,
}

impl DevSecrets {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            credentials_key: secret(dir.join("credentials.key"), || {
                silo_control_plane::crypto::CredentialCipher::generate_key()
            })?,
            jwt: secret(
                dir.join("jwt.secret"),
                silo_control_plane::crypto::generate_password,
            )?,
        })
    }
}

fn secret(path: PathBuf, make: impl FnOnce() -> SecretString) -> anyhow::Result<SecretString> {
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    let value = make();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(value.expose_secret().as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(value)
}
