//! Credentials at rest: AES-256-GCM with a key from configuration, and password generation.

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use base64::{Engine as _, engine::general_purpose};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

const NONCE_LEN: usize = 12;

/// Why sealing or opening credentials failed; all three are the operator's problem and
/// reach callers only as INTERNAL.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// The key is not standard base64 of exactly 32 bytes (AES-256).
    #[error("the credential key must be 32 bytes, base64-encoded")]
    BadKey,
    /// A sealed value does not open: it was sealed with another key or for another tenant,
    /// is shorter than its 12-byte nonce, or was damaged.
    #[error("stored credentials could not be decrypted (wrong key or damaged data)")]
    Decrypt,
    /// AES-GCM refused to seal (only for a message beyond its length limit).
    #[error("credentials could not be encrypted")]
    Encrypt,
}

/// Encrypts tenant credentials for the catalog. The tenant id is bound in as associated
/// data, so a ciphertext copied onto another tenant's row does not decrypt.
#[derive(Clone)]
pub struct CredentialCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCipher(..)")
    }
}

impl CredentialCipher {
    /// `key` is 32 bytes in standard base64.
    pub fn from_base64(key: &SecretString) -> Result<Self, CryptoError> {
        let bytes = general_purpose::STANDARD
            .decode(key.expose_secret().trim())
            .map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// A fresh random key in the form `from_base64` takes.
    pub fn generate_key() -> SecretString {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SecretString::from(general_purpose::STANDARD.encode(key))
    }

    /// Seals `secret` for `tenant`: a fresh random 12-byte nonce followed by the
    /// AES-256-GCM ciphertext and 16-byte tag, with the tenant id as associated data.
    pub fn encrypt(&self, tenant: &str, secret: &SecretString) -> Result<Vec<u8>, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: secret.expose_secret().as_bytes(),
            aad: tenant.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(&nonce, payload)
            .map_err(|_| CryptoError::Encrypt)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens what `encrypt` sealed for the same `tenant`.
    pub fn decrypt(&self, tenant: &str, sealed: &[u8]) -> Result<SecretString, CryptoError> {
        if sealed.len() <= NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: tenant.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A login password: 32 random bytes, base64url without padding (43 characters).
pub fn generate_password() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tenant_binding() {
        let cipher = CredentialCipher::from_base64(&CredentialCipher::generate_key()).unwrap();
        let password = generate_password();
        let sealed = cipher.encrypt("acme", &password).unwrap();
        let plain = password.expose_secret().as_bytes();
        assert!(!sealed.windows(plain.len()).any(|w| w == plain));
        let opened = cipher.decrypt("acme", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), password.expose_secret());
        assert!(matches!(
            cipher.decrypt("globex", &sealed),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn wrong_key_and_bad_keys_are_refused() {
        let a = CredentialCipher::from_base64(&CredentialCipher::generate_key()).unwrap();
        let b = CredentialCipher::from_base64(&CredentialCipher::generate_key()).unwrap();
        let sealed = a.encrypt("acme", &generate_password()).unwrap();
        assert!(b.decrypt("acme", &sealed).is_err());
        assert!(CredentialCipher::from_base64(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(CredentialCipher::from_base64(&SecretString::from("not base64!")).is_err());
    }

    #[test]
    fn passwords_are_long_and_distinct() {
        let a = generate_password();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), generate_password().expose_secret());
    }
}
