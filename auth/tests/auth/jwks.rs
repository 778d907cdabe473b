//! JWK sets: key selection by `kid`.

use serde_json::{Value, json};
use silo_auth::{Algorithm, AuthConfigError, AuthError, JwtVerifier, KeySource};

use crate::common::*;

fn jwks_verifier(algorithms: &[Algorithm]) -> JwtVerifier {
    verifier(algorithms, KeySource::JwksFile(key_path("jwks.json")))
}

fn both() -> JwtVerifier {
    jwks_verifier(&[Algorithm::RS256, Algorithm::ES256])
}

fn fixture_jwks() -> Value {
    serde_json::from_slice(&read_key("jwks.json")).expect("jwks.json is JSON")
}

fn inline(keys: Vec<Value>) -> KeySource {
    KeySource::Jwks(json!({ "keys": keys }).to_string())
}

fn jwks_error(algorithms: &[Algorithm], keys: KeySource) -> AuthConfigError {
    JwtVerifier::new(config(algorithms, keys)).expect_err("config must be rejected")
}

#[test]
fn right_kid_is_accepted() {
    let verifier = both();
    let rsa = sign(&rs256_signer().with_kid("rsa-1"), &claims());
    assert_eq!(accepted(&verifier, &rsa).sub.as_deref(), Some("user-1"));
    let ec = signer("ec_private.pem", Algorithm::ES256).with_kid("ec-1");
    accepted(&verifier, &sign(&ec, &claims()));
}

#[test]
fn unknown_kid_is_rejected() {
    let token = sign(&rs256_signer().with_kid("rsa-2"), &claims());
    assert_eq!(rejected(&both(), &token), AuthError::UnknownKey);
}

#[test]
fn missing_kid_is_rejected_when_several_keys_are_usable() {
    let token = sign(&rs256_signer(), &claims());
    assert_eq!(rejected(&both(), &token), AuthError::UnknownKey);
}

#[test]
fn missing_kid_is_accepted_when_exactly_one_key_is_usable() {
    let token = sign(&rs256_signer(), &claims());
    // Only RS256 pinned: the EC key of the set is unusable, so rsa-1 is the only key.
    accepted(&jwks_verifier(&[Algorithm::RS256]), &token);
    // A set with a single key.
    let rsa_only = fixture_jwks()["keys"][0].clone();
    accepted(
        &verifier(&[Algorithm::RS256], inline(vec![rsa_only])),
        &token,
    );
}

#[test]
fn algorithm_must_fit_the_selected_key() {
    // Signed by the EC key but claiming the RSA key's kid.
    let ec = signer("ec_private.pem", Algorithm::ES256).with_kid("rsa-1");
    assert_eq!(
        rejected(&both(), &sign(&ec, &claims())),
        AuthError::AlgorithmNotAllowed
    );
    // Signed by another RSA key under the right kid.
    let other = signer("other_rsa_private.pem", Algorithm::RS256).with_kid("rsa-1");
    assert_eq!(
        rejected(&both(), &sign(&other, &claims())),
        AuthError::BadSignature
    );
}

#[test]
fn jwk_alg_restricts_the_key() {
    // rsa-1 says "alg": "RS256"; rsa-any is the same key without "alg".
    let rsa = fixture_jwks()["keys"][0].clone();
    let mut rsa_any = rsa.clone();
    rsa_any["kid"] = json!("rsa-any");
    rsa_any.as_object_mut().expect("jwk object").remove("alg");
    let verifier = verifier(
        &[Algorithm::RS256, Algorithm::PS256],
        inline(vec![rsa, rsa_any]),
    );
    let ps = signer("rsa_private.pem", Algorithm::PS256);
    let token = sign(&ps.clone().with_kid("rsa-1"), &claims());
    assert_eq!(rejected(&verifier, &token), AuthError::AlgorithmNotAllowed);
    accepted(&verifier, &sign(&ps.with_kid("rsa-any"), &claims()));
    // With only rsa-1 in the set, nothing can verify PS256: a config error.
    let error = jwks_error(
        &[Algorithm::RS256, Algorithm::PS256],
        KeySource::JwksFile(key_path("jwks.json")),
    );
    assert!(
        matches!(error, AuthConfigError::AlgorithmDoesNotFitKey { .. }),
        "{error:?}"
    );
}

#[test]
fn pinned_algorithm_without_a_key_is_a_config_error() {
    let error = jwks_error(
        &[Algorithm::EdDSA],
        KeySource::JwksFile(key_path("jwks.json")),
    );
    assert!(
        matches!(error, AuthConfigError::NoUsableKey { .. }),
        "{error:?}"
    );
    let error = jwks_error(
        &[Algorithm::RS256, Algorithm::EdDSA],
        KeySource::JwksFile(key_path("jwks.json")),
    );
    assert!(
        matches!(
            error,
            AuthConfigError::AlgorithmDoesNotFitKey {
                algorithm: Algorithm::EdDSA,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn hmac_keys_are_never_taken_from_a_jwks() {
    let oct = json!({ "kty": "oct", "kid": "h", "k": b64(HMAC_SECRET) });
    let error = jwks_error(&[Algorithm::HS256], inline(vec![oct.clone()]));
    assert!(
        matches!(error, AuthConfigError::HmacRequiresSecret { .. }),
        "{error:?}"
    );
    let error = jwks_error(&[Algorithm::RS256], inline(vec![oct]));
    assert!(
        matches!(error, AuthConfigError::NoUsableKey { .. }),
        "{error:?}"
    );
}

#[test]
fn encryption_keys_are_skipped() {
    let mut rsa = fixture_jwks()["keys"][0].clone();
    rsa["use"] = json!("enc");
    let error = jwks_error(&[Algorithm::RS256], inline(vec![rsa]));
    assert!(
        matches!(error, AuthConfigError::NoUsableKey { .. }),
        "{error:?}"
    );
}

#[test]
fn broken_jwks_is_a_config_error() {
    let error = jwks_error(&[Algorithm::RS256], KeySource::Jwks("{not json".to_owned()));
    assert!(
        matches!(error, AuthConfigError::InvalidJwks { .. }),
        "{error:?}"
    );

    let rsa = fixture_jwks()["keys"][0].clone();
    let error = jwks_error(&[Algorithm::RS256], inline(vec![rsa.clone(), rsa]));
    assert!(
        matches!(&error, AuthConfigError::InvalidJwks { reason, .. } if reason.contains("duplicate kid")),
        "{error:?}"
    );

    let mut bad = fixture_jwks()["keys"][0].clone();
    bad["n"] = json!("!!not base64!!");
    let error = jwks_error(&[Algorithm::RS256], inline(vec![bad]));
    assert!(
        matches!(error, AuthConfigError::InvalidJwks { .. }),
        "{error:?}"
    );

    let missing = key_path("no-such-jwks.json");
    let error = jwks_error(&[Algorithm::RS256], KeySource::JwksFile(missing));
    assert!(error.to_string().contains("no-such-jwks.json"), "{error}");
}
