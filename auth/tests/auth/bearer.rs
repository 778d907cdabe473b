//! `authorization: Bearer <token>` parsing.

use silo_auth::{AuthError, bearer_token};

#[test]
fn bearer_token_is_extracted() {
    for value in [
        "Bearer abc.def.ghi",
        "bearer abc.def.ghi",
        "BEARER abc.def.ghi",
        "  Bearer   abc.def.ghi  ",
        "Bearer\tabc.def.ghi",
    ] {
        assert_eq!(bearer_token(Some(value)), Ok("abc.def.ghi"), "{value:?}");
    }
}

#[test]
fn missing_or_empty_token_is_missing() {
    for value in [
        None,
        Some(""),
        Some("   "),
        Some("Bearer"),
        Some("Bearer   "),
    ] {
        assert_eq!(bearer_token(value), Err(AuthError::Missing), "{value:?}");
    }
}

#[test]
fn other_schemes_and_spaces_in_token_are_malformed() {
    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearerabc.def.ghi",
        "abc.def.ghi",
        "Bearer abc def",
        "Token abc.def.ghi",
    ] {
        assert_eq!(
            bearer_token(Some(value)),
            Err(AuthError::Malformed),
            "{value:?}"
        );
    }
}
