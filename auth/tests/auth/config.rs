//! Incoherent configurations fail at construction.

use std::time::Duration;

use silo_auth::{
    Algorithm, AuthConfigError, JwtVerifier, KeySource, MAX_LEEWAY, SecretString, TokenSigner,
};

use crate::common::*;

fn config_error(algorithms: &[Algorithm], keys: KeySource) -> AuthConfigError {
    JwtVerifier::new(config(algorithms, keys)).expect_err("config must be rejected")
}

fn pem(name: &str) -> KeySource {
    KeySource::PemFile(key_path(name))
}

fn secret() -> KeySource {
    KeySource::HmacSecret(SecretString::from(HMAC_SECRET))
}

#[test]
fn mixing_hs256_with_rs256_is_rejected() {
    for keys in [secret(), pem("rsa_public.pem")] {
        let error = config_error(&[Algorithm::HS256, Algorithm::RS256], keys);
        assert!(
            matches!(error, AuthConfigError::MixedHmacAndAsymmetric(_)),
            "{error:?}"
        );
    }
}

#[test]
fn hmac_needs_an_explicit_secret_and_a_secret_needs_hmac() {
    let error = config_error(&[Algorithm::HS256], pem("rsa_public.pem"));
    assert!(
        matches!(error, AuthConfigError::HmacRequiresSecret { .. }),
        "{error:?}"
    );
    let error = config_error(&[Algorithm::RS256], secret());
    assert!(
        matches!(error, AuthConfigError::SecretRequiresHmac { .. }),
        "{error:?}"
    );
}

#[test]
fn short_hmac_secrets_are_rejected() {
    let short = KeySource::HmacSecret(SecretString::from("too-short"));
    let error = config_error(&[Algorithm::HS256], short);
    assert!(
        matches!(error, AuthConfigError::WeakHmacSecret { min_bytes: 32, .. }),
        "{error:?}"
    );
    // 43 bytes is enough for HS256 but not for HS512.
    let error = config_error(&[Algorithm::HS512], secret());
    assert!(
        matches!(error, AuthConfigError::WeakHmacSecret { min_bytes: 64, .. }),
        "{error:?}"
    );
}

#[test]
fn no_algorithm_is_rejected() {
    let error = config_error(&[], pem("rsa_public.pem"));
    assert!(matches!(error, AuthConfigError::NoAlgorithms), "{error:?}");
}

#[test]
fn algorithms_must_fit_the_key_type() {
    let cases = [
        (Algorithm::ES256, "rsa_public.pem"),
        (Algorithm::EdDSA, "rsa_public.pem"),
        (Algorithm::RS256, "ec_public.pem"),
        (Algorithm::ES384, "ec_public.pem"),
        (Algorithm::ES256, "ed25519_public.pem"),
    ];
    for (algorithm, key) in cases {
        let error = config_error(&[algorithm], pem(key));
        assert!(
            matches!(error, AuthConfigError::AlgorithmDoesNotFitKey { algorithm: a, .. } if a == algorithm),
            "{algorithm:?} with {key}: {error:?}"
        );
    }
}

#[test]
fn private_keys_and_garbage_are_not_verification_keys() {
    for keys in [
        pem("rsa_private.pem"),
        KeySource::Pem(b"not a pem".to_vec()),
        KeySource::Pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec()),
    ] {
        let error = config_error(&[Algorithm::RS256], keys);
        assert!(
            matches!(error, AuthConfigError::InvalidPem { .. }),
            "{error:?}"
        );
    }
}

#[test]
fn unreadable_key_file_names_the_path() {
    let error = config_error(&[Algorithm::RS256], pem("does-not-exist.pem"));
    assert!(
        matches!(error, AuthConfigError::ReadKeyFile { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("does-not-exist.pem"), "{error}");
}

#[test]
fn leeway_must_be_small() {
    let mut config = config(&[Algorithm::RS256], pem("rsa_public.pem"));
    config.leeway = MAX_LEEWAY + Duration::from_secs(1);
    let error = JwtVerifier::new(config).expect_err("too much leeway");
    assert!(
        matches!(error, AuthConfigError::LeewayTooLarge { .. }),
        "{error:?}"
    );
}

#[test]
fn signer_rejects_keys_that_do_not_fit() {
    let pem = read_key("rsa_private.pem");
    let error = TokenSigner::from_pem(&pem, Algorithm::ES256).expect_err("rsa key for ES256");
    assert!(
        matches!(error, AuthConfigError::AlgorithmDoesNotFitKey { .. }),
        "{error:?}"
    );
    let pem = read_key("ec_private.pem");
    let error = TokenSigner::from_pem(&pem, Algorithm::ES384).expect_err("P-256 key for ES384");
    assert!(
        matches!(error, AuthConfigError::AlgorithmDoesNotFitKey { .. }),
        "{error:?}"
    );
    let error = TokenSigner::from_pem(&read_key("rsa_public.pem"), Algorithm::RS256)
        .expect_err("public key");
    assert!(
        matches!(error, AuthConfigError::InvalidPem { .. }),
        "{error:?}"
    );
    let error = TokenSigner::from_pem(&read_key("rsa_private.pem"), Algorithm::HS256)
        .expect_err("HS256 from a PEM");
    assert!(
        matches!(error, AuthConfigError::HmacRequiresSecret { .. }),
        "{error:?}"
    );
    let error = TokenSigner::from_hmac_secret(&SecretString::from(HMAC_SECRET), Algorithm::RS256)
        .expect_err("RS256 from a secret");
    assert!(
        matches!(error, AuthConfigError::SecretRequiresHmac { .. }),
        "{error:?}"
    );
}

#[test]
fn config_errors_do_not_print_secrets() {
    let config = config(&[Algorithm::HS256, Algorithm::RS256], secret());
    assert!(!format!("{config:?}").contains(HMAC_SECRET));
    let signer = TokenSigner::from_hmac_secret(&SecretString::from(HMAC_SECRET), Algorithm::HS256)
        .expect("signer");
    assert!(!format!("{signer:?}").contains(HMAC_SECRET));
}
