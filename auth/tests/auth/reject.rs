//! Bad tokens are rejected with the right `AuthError`.

use serde::Deserialize;
use serde_json::json;
use silo_auth::{
    Algorithm, AuthError, JwtVerifier, KeySource, SecretString, StandardClaims, TokenSigner,
    unix_now,
};

use crate::common::*;

#[test]
fn token_signed_with_another_key_is_rejected() {
    let token = sign(
        &signer("other_rsa_private.pem", Algorithm::RS256),
        &claims(),
    );
    assert_eq!(rejected(&rs256_verifier(), &token), AuthError::BadSignature);
    // The same token does verify with its own public key.
    accepted(
        &pem_verifier(Algorithm::RS256, "other_rsa_public.pem"),
        &token,
    );
}

#[test]
fn tampered_payload_is_rejected() {
    let token = sign(&rs256_signer(), &claims().claim("role", "viewer"));
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(serde_json::to_vec(&claims().claim("role", "admin")).expect("json"));
    parts[1] = &forged;
    assert_eq!(
        rejected(&rs256_verifier(), &parts.join(".")),
        AuthError::BadSignature
    );
}

#[test]
fn alg_none_is_rejected() {
    let payload = serde_json::to_string(&claims()).expect("json");
    for alg in ["none", "None", "NONE"] {
        let header = json!({ "alg": alg, "typ": "JWT" }).to_string();
        for token in [
            raw_token(&header, &payload, b""),
            raw_token(&header, &payload, b"sig"),
        ] {
            assert_eq!(
                rejected(&rs256_verifier(), &token),
                AuthError::AlgorithmNotAllowed
            );
            assert_eq!(
                rejected(&hmac_verifier(), &token),
                AuthError::AlgorithmNotAllowed
            );
        }
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_as_secret_is_rejected() {
    let public_pem = String::from_utf8(read_key("rsa_public.pem")).expect("utf-8 pem");
    let secret = SecretString::from(public_pem);
    let forger = TokenSigner::from_hmac_secret(&secret, Algorithm::HS256).expect("hmac signer");
    let token = sign(&forger, &claims().claim("role", "admin"));
    assert_eq!(
        rejected(&rs256_verifier(), &token),
        AuthError::AlgorithmNotAllowed
    );
    // The forgery is a correct HS256 token: a verifier that let the token choose HMAC with
    // the PEM bytes as secret would accept it.
    let naive = verifier(&[Algorithm::HS256], KeySource::HmacSecret(secret));
    accepted(&naive, &token);
}

#[test]
fn algorithm_not_pinned_is_rejected() {
    // Right key, but RS384 is not pinned.
    let token = sign(&signer("rsa_private.pem", Algorithm::RS384), &claims());
    assert_eq!(
        rejected(&rs256_verifier(), &token),
        AuthError::AlgorithmNotAllowed
    );
    let token = sign(&signer("ec_private.pem", Algorithm::ES256), &claims());
    assert_eq!(
        rejected(&rs256_verifier(), &token),
        AuthError::AlgorithmNotAllowed
    );
    // Unknown algorithm names too.
    let payload = serde_json::to_string(&claims()).expect("json");
    let token = raw_token(r#"{"alg":"ES512"}"#, &payload, b"sig");
    assert_eq!(
        rejected(&rs256_verifier(), &token),
        AuthError::AlgorithmNotAllowed
    );
}

#[test]
fn expired_beyond_leeway_is_rejected() {
    let token = sign(&rs256_signer(), &claims().expires_at(unix_now() - 120));
    assert_eq!(rejected(&rs256_verifier(), &token), AuthError::Expired);
}

#[test]
fn nbf_in_the_future_is_rejected() {
    let token = sign(&rs256_signer(), &claims().not_before(unix_now() + 120));
    assert_eq!(rejected(&rs256_verifier(), &token), AuthError::NotYetValid);
}

#[test]
fn wrong_audience_is_rejected() {
    let token = sign(&rs256_signer(), &claims().audience("not-silo"));
    assert_eq!(
        rejected(&rs256_verifier(), &token),
        AuthError::WrongAudience
    );
}

#[test]
fn wrong_issuer_is_rejected() {
    let token = sign(&rs256_signer(), &claims().issuer("https://evil.test"));
    assert_eq!(rejected(&rs256_verifier(), &token), AuthError::WrongIssuer);
}

#[test]
fn missing_registered_claims_are_rejected() {
    let cases = [
        (
            "exp",
            StandardClaims {
                exp: None,
                ..claims()
            },
        ),
        (
            "iss",
            StandardClaims {
                iss: None,
                ..claims()
            },
        ),
        (
            "aud",
            StandardClaims {
                aud: None,
                ..claims()
            },
        ),
    ];
    for (claim, claims) in cases {
        let error = rejected(&rs256_verifier(), &sign(&rs256_signer(), &claims));
        assert!(
            matches!(&error, AuthError::InvalidClaims(detail) if detail.contains(claim)),
            "{claim}: {error:?}"
        );
    }
}

#[test]
fn exp_of_the_wrong_type_is_rejected() {
    let mut claims = serde_json::to_value(claims()).expect("json");
    claims["exp"] = json!("tomorrow");
    let error = rejected(&rs256_verifier(), &sign(&rs256_signer(), &claims));
    assert!(matches!(error, AuthError::InvalidClaims(_)), "{error:?}");
}

#[test]
fn claims_of_the_wrong_shape_are_rejected_without_echoing_values() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct NeedsRole {
        role: String,
    }
    let verifier = rs256_verifier();
    let token = sign(&rs256_signer(), &claims());
    let error = verifier.verify::<NeedsRole>(&token).expect_err("no role");
    assert_eq!(
        error,
        AuthError::InvalidClaims("missing claim `role`".to_owned())
    );

    let token = sign(&rs256_signer(), &claims().claim("role", 4242));
    let error = verifier
        .verify::<NeedsRole>(&token)
        .expect_err("role not a string");
    assert!(matches!(&error, AuthError::InvalidClaims(_)), "{error:?}");
    assert!(!error.to_string().contains("4242"), "{error}");
}

#[test]
fn garbage_is_malformed() {
    let verifier = rs256_verifier();
    let valid = sign(&rs256_signer(), &claims());
    let oversized = format!("{valid}{}", "A".repeat(20_000));
    let garbage = [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "Bearer x.y.z",
        "eyJhbGciOiJSUzI1NiJ9",
        &format!("{}.e30.", b64("not json")),
        &format!("{}.e30.", b64(r#"{"typ":"JWT"}"#)),
        &format!("{}.e30.", b64(r#"{"alg":256}"#)),
        &format!("{valid}.extra"),
        &oversized,
    ];
    for token in garbage {
        assert_eq!(
            rejected(&verifier, token),
            AuthError::Malformed,
            "{token:?}"
        );
    }
}

#[test]
fn correctly_signed_non_json_payload_is_malformed() {
    let header = r#"{"alg":"RS256","typ":"JWT"}"#;
    for payload in ["not json", "[1,2,3]", "\"a string\""] {
        let token = rs256_signed_raw(header, payload);
        assert_eq!(
            rejected(&rs256_verifier(), &token),
            AuthError::Malformed,
            "{payload}"
        );
    }
}

#[test]
fn critical_header_extensions_are_rejected() {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&read_key("rsa_private.pem")).expect("key");
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.crit = Some(vec!["exp".to_owned()]);
    let token = jsonwebtoken::encode(&header, &claims(), &key).expect("encode");
    assert_eq!(rejected(&rs256_verifier(), &token), AuthError::Malformed);
}

#[test]
fn error_messages_are_client_safe() {
    let verifier: JwtVerifier = rs256_verifier();
    let token = sign(
        &signer("other_rsa_private.pem", Algorithm::RS256),
        &claims(),
    );
    let message = rejected(&verifier, &token).to_string();
    assert_eq!(message, "invalid token signature");
    for part in token.split('.') {
        assert!(!message.contains(part));
    }
}
