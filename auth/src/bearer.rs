//! Parsing the `authorization` metadata value.

use crate::error::AuthError;

/// Extracts the token from an `authorization: Bearer <token>` value.
///
/// The scheme is case-insensitive. A missing value, an empty value or `Bearer` with no token
/// is [`AuthError::Missing`]; another scheme, or a token containing whitespace, is
/// [`AuthError::Malformed`].
pub fn bearer_token(metadata_value: Option<&str>) -> Result<&str, AuthError> {
    let value = metadata_value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}
