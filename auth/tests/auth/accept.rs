//! Valid tokens pass and hand back their claims.

use serde::Deserialize;
use silo_auth::{Algorithm, Audience, JwtVerifier, KeySource, VerifierConfig, unix_now};

use crate::common::*;

/// What the control plane reads.
#[derive(Debug, Deserialize)]
struct ControlPlaneClaims {
    sub: String,
    role: String,
}

#[test]
fn rs256_token_passes_and_gives_typed_claims() {
    let token = sign(&rs256_signer(), &claims().claim("role", "admin"));
    let claims: ControlPlaneClaims = rs256_verifier().verify(&token).expect("valid token");
    assert_eq!(claims.sub, "user-1");
    assert_eq!(claims.role, "admin");
}

#[test]
fn rs256_token_passes_with_pkcs1_public_key() {
    let verifier = pem_verifier(Algorithm::RS256, "rsa_public_pkcs1.pem");
    let token = sign(&rs256_signer(), &claims().claim("role", "viewer"));
    assert_eq!(
        accepted(&verifier, &token).extra_str("role"),
        Some("viewer")
    );
}

#[test]
fn rs256_token_passes_with_in_memory_pem() {
    let verifier = verifier(
        &[Algorithm::RS256],
        KeySource::Pem(read_key("rsa_public.pem")),
    );
    let token = sign(&rs256_signer(), &claims());
    assert_eq!(accepted(&verifier, &token).sub.as_deref(), Some("user-1"));
}

#[test]
fn es256_token_passes_and_gives_tenant_claim() {
    let verifier = pem_verifier(Algorithm::ES256, "ec_public.pem");
    let signer = signer("ec_private.pem", Algorithm::ES256);
    let token = sign(&signer, &claims().claim("tenant_id", "acme"));
    let claims = accepted(&verifier, &token);
    assert_eq!(claims.extra_str("tenant_id"), Some("acme"));
    assert_eq!(claims.iss.as_deref(), Some(ISSUER));
    assert_eq!(claims.aud, Some(Audience::One(AUDIENCE.to_owned())));
}

#[test]
fn eddsa_token_passes() {
    let verifier = pem_verifier(Algorithm::EdDSA, "ed25519_public.pem");
    let signer = signer("ed25519_private.pem", Algorithm::EdDSA);
    let token = sign(&signer, &claims().claim("tenants", vec!["acme", "globex"]));
    let claims = accepted(&verifier, &token);
    assert_eq!(
        claims.extra["tenants"],
        serde_json::json!(["acme", "globex"])
    );
}

#[test]
fn hs256_token_passes_when_configured() {
    let signer = silo_auth::TokenSigner::from_hmac_secret(&HMAC_SECRET.into(), Algorithm::HS256)
        .expect("hmac signer");
    let token = sign(&signer, &claims().claim("tenants", "*"));
    assert_eq!(
        accepted(&hmac_verifier(), &token).extra_str("tenants"),
        Some("*")
    );
}

#[test]
fn several_pinned_algorithms_of_one_family_all_pass() {
    let verifier = pem_verifier_multi(&[Algorithm::RS256, Algorithm::PS256]);
    for algorithm in [Algorithm::RS256, Algorithm::PS256] {
        let token = sign(&signer("rsa_private.pem", algorithm), &claims());
        accepted(&verifier, &token);
    }
}

fn pem_verifier_multi(algorithms: &[Algorithm]) -> JwtVerifier {
    verifier(algorithms, KeySource::PemFile(key_path("rsa_public.pem")))
}

#[test]
fn kid_is_ignored_with_a_single_pem_key() {
    let token = sign(&rs256_signer().with_kid("some-kid"), &claims());
    accepted(&rs256_verifier(), &token);
}

#[test]
fn expired_within_leeway_is_accepted() {
    let token = sign(&rs256_signer(), &claims().expires_at(unix_now() - 10));
    accepted(&rs256_verifier(), &token);
}

#[test]
fn nbf_in_the_past_or_within_leeway_is_accepted() {
    for nbf in [unix_now() - 60, unix_now() + 10] {
        let token = sign(&rs256_signer(), &claims().not_before(nbf));
        accepted(&rs256_verifier(), &token);
    }
}

#[test]
fn audience_list_containing_ours_is_accepted() {
    let mut claims = claims();
    claims.aud = Some(Audience::Many(vec![
        "other".to_owned(),
        AUDIENCE.to_owned(),
    ]));
    accepted(&rs256_verifier(), &sign(&rs256_signer(), &claims));
}

#[test]
fn issuer_and_audience_are_not_checked_when_not_configured() {
    let config = VerifierConfig::new(
        vec![Algorithm::RS256],
        KeySource::PemFile(key_path("rsa_public.pem")),
    );
    let verifier = JwtVerifier::new(config).expect("valid config");
    let claims = claims().issuer("someone-else").audience("someone-else");
    accepted(&verifier, &sign(&rs256_signer(), &claims));
}

#[test]
fn verifier_is_cheap_to_share() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<JwtVerifier>();
    let verifier = rs256_verifier();
    let token = sign(&rs256_signer(), &claims());
    let clone = verifier.clone();
    std::thread::spawn(move || accepted(&clone, &token))
        .join()
        .expect("verification thread");
    assert_eq!(
        verifier.algorithms().collect::<Vec<_>>(),
        [Algorithm::RS256]
    );
}
