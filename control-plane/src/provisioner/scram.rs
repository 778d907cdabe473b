//! Checking a SCRAM-SHA-256 verifier as PostgreSQL stores it (`pg_authid.rolpassword`)
//! against a password (RFC 5802 / RFC 7677). The server keeps only the verifier, so this is
//! how silo tells whether a tenant changed its own password.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, decoded.
struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations = iterations.parse().ok()?;
        // PostgreSQL uses 4096; refuse absurd counts rather than spin on them.
        if !(1..=100_000).contains(&iterations) {
            return None;
        }
        Some(Self {
            iterations,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        })
    }
}

fn hmac(key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(message);
    Some(mac.finalize().into_bytes().to_vec())
}

/// PBKDF2-HMAC-SHA256 with one output block: SCRAM's `Hi`.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Option<Vec<u8>> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block)?;
    let mut result = u.clone();
    for _ in 1..iterations {
        u = hmac(password, &u)?;
        result.iter_mut().zip(&u).for_each(|(r, b)| *r ^= b);
    }
    Some(result)
}

/// Whether `verifier` was made from `password`. Anything unreadable counts as a mismatch.
pub fn verifier_matches(verifier: &str, password: &SecretString) -> bool {
    let check = || -> Option<bool> {
        let verifier = Verifier::parse(verifier)?;
        let salted = salted_password(
            password.expose_secret().as_bytes(),
            &verifier.salt,
            verifier.iterations,
        )?;
        let client_key = hmac(&salted, b"Client Key")?;
        let server_key = hmac(&salted, b"Server Key")?;
        Some(
            Sha256::digest(&client_key).as_slice() == verifier.stored_key.as_slice()
                && server_key == verifier.server_key,
        )
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_match_the_password_they_were_made_from_only() {
        let password = SecretString::from("correct horse battery staple".to_owned());
        let verifier = postgres_protocol::password::scram_sha_256(b"correct horse battery staple");
        assert!(verifier_matches(&verifier, &password));
        assert!(!verifier_matches(
            &verifier,
            &SecretString::from("x".to_owned())
        ));
        assert!(!verifier_matches("md5abc", &password));
        assert!(!verifier_matches("SCRAM-SHA-256$4096:!!$a:b", &password));
        assert!(!verifier_matches(
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            &password
        ));
    }
}
