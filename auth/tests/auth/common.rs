//! Fixture keys, standard configurations and token helpers.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use silo_auth::{
    Algorithm, AuthError, JwtVerifier, KeySource, SecretString, StandardClaims, TokenSigner,
    VerifierConfig,
};

pub const ISSUER: &str = "https://idp.silo.test";
pub const AUDIENCE: &str = "silo";
/// 43 bytes: long enough for HS256.
pub const HMAC_SECRET: &str = "test-only-hmac-secret-0123456789abcdefghijk";

/// Path of a file in `tests/fixtures/keys`.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/keys")
        .join(name)
}

pub fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("fixture key readable")
}

/// A configuration requiring [`ISSUER`] and [`AUDIENCE`], default leeway.
pub fn config(algorithms: &[Algorithm], keys: KeySource) -> VerifierConfig {
    let mut config = VerifierConfig::new(algorithms.to_vec(), keys);
    config.issuer = Some(ISSUER.to_owned());
    config.audience = Some(AUDIENCE.to_owned());
    config
}

pub fn verifier(algorithms: &[Algorithm], keys: KeySource) -> JwtVerifier {
    JwtVerifier::new(config(algorithms, keys)).expect("valid verifier config")
}

/// A verifier for one algorithm and one public key fixture file.
pub fn pem_verifier(algorithm: Algorithm, public_key: &str) -> JwtVerifier {
    verifier(&[algorithm], KeySource::PemFile(key_path(public_key)))
}

/// The RS256 verifier most tests use.
pub fn rs256_verifier() -> JwtVerifier {
    pem_verifier(Algorithm::RS256, "rsa_public.pem")
}

pub fn hmac_verifier() -> JwtVerifier {
    verifier(
        &[Algorithm::HS256],
        KeySource::HmacSecret(SecretString::from(HMAC_SECRET)),
    )
}

pub fn signer(private_key: &str, algorithm: Algorithm) -> TokenSigner {
    TokenSigner::from_pem_file(key_path(private_key), algorithm).expect("valid signer")
}

pub fn rs256_signer() -> TokenSigner {
    signer("rsa_private.pem", Algorithm::RS256)
}

/// `{sub, iss, aud, iat, exp}` valid for five minutes, matching [`config`].
pub fn claims() -> StandardClaims {
    StandardClaims::new("user-1", Duration::from_secs(300))
        .issuer(ISSUER)
        .audience(AUDIENCE)
}

pub fn sign(signer: &TokenSigner, claims: &impl Serialize) -> String {
    signer.sign(claims).expect("signing works")
}

/// Verifies into [`StandardClaims`], panicking with the error on rejection.
pub fn accepted(verifier: &JwtVerifier, token: &str) -> StandardClaims {
    verifier
        .verify(token)
        .unwrap_or_else(|e| panic!("token rejected: {e:?}"))
}

/// The error a token is rejected with, panicking if it is accepted.
pub fn rejected(verifier: &JwtVerifier, token: &str) -> AuthError {
    verifier
        .verify::<StandardClaims>(token)
        .expect_err("token must be rejected")
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header).b64(payload).b64(signature)` from raw parts, no signing.
pub fn raw_token(header: &str, payload: &str, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header), b64(payload), b64(signature))
}

/// A token over arbitrary header and payload bytes, correctly signed with the RSA fixture.
pub fn rs256_signed_raw(header: &str, payload: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&read_key("rsa_private.pem"))
        .expect("rsa private key");
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256)
        .expect("raw signing works");
    format!("{message}.{signature}")
}
