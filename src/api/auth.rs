//! JWT authentication of the API (docs/protocol.md §2.2): HMAC-signed tokens (HS256,
//! HS384, HS512) with the agent's secret; `exp`, `nbf` and `iat` checked
//! when present, with a clock tolerance of [`TIME_TOLERANCE`]. Each of them
//! must then be a non-negative integer: jwt-simple would read a negative
//! `exp` as a time that never comes, so the payload's shape is checked
//! before the token is handed to it.
//!
//! jwt-simple refuses HMAC keys shorter than 12 bytes, yet classic set-ups
//! use secrets such as `myJwtToken` (10 bytes). HMAC (RFC 2104) pads every key
//! shorter than the hash's block size with zero bytes, so the secret padded
//! with zeros to 32 bytes is the very same HMAC key: tokens signed with the
//! short secret verify, and nothing else does.

use std::time::Duration;

use jwt_simple::prelude::*;
use jwt_simple::JWTError;

/// Clock skew allowed for `exp`, `nbf` and `iat` (jwt-simple's default is
/// 15 minutes); docs/protocol.md §2.2 documents it.
pub const TIME_TOLERANCE: Duration = Duration::from_secs(30);

/// Why a request was not authenticated; the text is the 401 body's string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    MissingHeader,
    MalformedHeader,
    InvalidToken(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::MissingHeader => f.write_str("An authorization header is required"),
            AuthError::MalformedHeader => f.write_str("Invalid authorization token"),
            AuthError::InvalidToken(reason) => f.write_str(reason),
        }
    }
}

pub struct Authenticator {
    hs256: HS256Key,
    hs384: HS384Key,
    hs512: HS512Key,
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Authenticator {
        let key = hmac_key(secret);
        Authenticator {
            hs256: HS256Key::from_bytes(&key),
            hs384: HS384Key::from_bytes(&key),
            hs512: HS512Key::from_bytes(&key),
        }
    }

    /// Checks an `Authorization` header value: `<scheme> <jwt>`.
    pub fn check(&self, header: Option<&str>) -> Result<(), AuthError> {
        let header = match header {
            Some(h) if !h.is_empty() => h,
            _ => return Err(AuthError::MissingHeader),
        };
        let parts: Vec<&str> = header.split(' ').collect();
        if parts.len() != 2 {
            return Err(AuthError::MalformedHeader);
        }
        self.verify(parts[1])
    }

    pub fn verify(&self, token: &str) -> Result<(), AuthError> {
        if token.split('.').count() != 3 {
            return Err(AuthError::InvalidToken(
                "token contains an invalid number of segments".into(),
            ));
        }
        let metadata = Token::decode_metadata(token)
            .map_err(|_| AuthError::InvalidToken("token is malformed".into()))?;
        check_time_claims(token)?;
        let options = VerificationOptions {
            time_tolerance: Some(TIME_TOLERANCE.into()),
            ..VerificationOptions::default()
        };
        let result = match metadata.algorithm() {
            "HS256" => self
                .hs256
                .verify_token::<NoCustomClaims>(token, Some(options)),
            "HS384" => self
                .hs384
                .verify_token::<NoCustomClaims>(token, Some(options)),
            "HS512" => self
                .hs512
                .verify_token::<NoCustomClaims>(token, Some(options)),
            _ => {
                return Err(AuthError::InvalidToken(
                    "invalid authorization token".into(),
                ))
            }
        };
        result
            .map(|_| ())
            .map_err(|e| AuthError::InvalidToken(describe(&e)))
    }

    /// Mints an HS256 token with `iat` and `exp` (`agent token`).
    pub fn mint(&self, ttl: Duration) -> String {
        let claims = Claims::create(ttl.into());
        self.hs256
            .authenticate(claims)
            .expect("an HS256 token with standard claims always serializes")
    }
}

/// The secret as an HMAC key jwt-simple accepts (see the module comment).
fn hmac_key(secret: &[u8]) -> Vec<u8> {
    let mut key = secret.to_vec();
    if key.len() < 32 {
        key.resize(32, 0);
    }
    key
}

/// The registered time claims, which must be NumericDates without a
/// fraction (RFC 7519 §2 allows fractions; no client of the agent sends them).
const TIME_CLAIMS: [&str; 3] = ["exp", "nbf", "iat"];

/// Refuses a payload whose `exp`, `nbf` or `iat` is present but not a
/// non-negative integer. A payload that is not a JSON object is left to
/// jwt-simple, which refuses it with its own reason.
fn check_time_claims(token: &str) -> Result<(), AuthError> {
    use base64::Engine;
    let Some(payload) = token.split('.').nth(1) else {
        return Ok(());
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(&bytes) else {
        return Ok(());
    };
    for name in TIME_CLAIMS {
        if claims.get(name).is_some_and(|value| !value.is_u64()) {
            return Err(AuthError::InvalidToken(format!(
                "token claim {name} must be a non-negative integer"
            )));
        }
    }
    Ok(())
}

/// Error texts in the spirit of the reference's (`token is expired`, ...).
fn describe(e: &jwt_simple::Error) -> String {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::TokenHasExpired) => "token is expired".into(),
        Some(JWTError::TokenNotValidYet) => "token is not valid yet".into(),
        Some(JWTError::InvalidAuthenticationTag | JWTError::InvalidSignature) => {
            "signature is invalid".into()
        }
        _ => format!("invalid token: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Signs like any other JWT library would: HMAC over the raw secret.
    fn sign_raw(header: &str, payload: &str, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let mac = hmac_sha256::HMAC::mac(signing_input.as_bytes(), secret);
        format!("{signing_input}.{}", b64(&mac))
    }

    #[test]
    fn canonical_token_with_a_short_secret_verifies() {
        let auth = Authenticator::new(b"myJwtToken");
        let token = sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, "{}", b"myJwtToken");
        assert_eq!(auth.check(Some(&format!("Bearer {token}"))), Ok(()));
        // Any scheme word is accepted, as by the reference.
        assert_eq!(auth.check(Some(&format!("Token {token}"))), Ok(()));
    }

    #[test]
    fn time_claims_must_be_non_negative_integers() {
        let auth = Authenticator::new(b"myJwtToken");
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        for (payload, claim) in [
            (r#"{"exp":-1}"#.to_string(), "exp"),
            (format!(r#"{{"exp":{}}}"#, i64::MIN), "exp"),
            (r#"{"nbf":-1}"#.to_string(), "nbf"),
            (r#"{"iat":1.5}"#.to_string(), "iat"),
            (r#"{"exp":"4102444800"}"#.to_string(), "exp"),
            (r#"{"exp":null}"#.to_string(), "exp"),
        ] {
            let token = sign_raw(header, &payload, b"myJwtToken");
            assert_eq!(
                auth.verify(&token),
                Err(AuthError::InvalidToken(format!(
                    "token claim {claim} must be a non-negative integer"
                ))),
                "{payload}"
            );
        }
        let fine = sign_raw(header, r#"{"exp":4102444800,"iat":0}"#, b"myJwtToken");
        assert_eq!(auth.verify(&fine), Ok(()));
    }

    #[test]
    fn long_secrets_and_minted_tokens_verify() {
        let secret = b"a-much-longer-secret-than-thirty-two-bytes!!";
        let auth = Authenticator::new(secret);
        let token = sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, "{}", secret);
        assert_eq!(auth.verify(&token), Ok(()));
        assert_eq!(auth.verify(&auth.mint(Duration::from_secs(60))), Ok(()));
    }

    #[test]
    fn rejections() {
        let auth = Authenticator::new(b"myJwtToken");
        assert_eq!(auth.check(None), Err(AuthError::MissingHeader));
        assert_eq!(auth.check(Some("")), Err(AuthError::MissingHeader));
        assert_eq!(auth.check(Some("Bearer")), Err(AuthError::MalformedHeader));
        assert_eq!(
            auth.check(Some("Bearer a b")),
            Err(AuthError::MalformedHeader)
        );
        let wrong = sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, "{}", b"otherSecret");
        assert_eq!(
            auth.verify(&wrong),
            Err(AuthError::InvalidToken("signature is invalid".into()))
        );
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(b"{}"));
        assert_eq!(
            auth.verify(&none),
            Err(AuthError::InvalidToken(
                "invalid authorization token".into()
            ))
        );
        let expired = sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"exp":1000}"#,
            b"myJwtToken",
        );
        assert_eq!(
            auth.verify(&expired),
            Err(AuthError::InvalidToken("token is expired".into()))
        );
        assert_eq!(
            auth.verify("abc"),
            Err(AuthError::InvalidToken(
                "token contains an invalid number of segments".into()
            ))
        );
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token_with(claims: &str) -> String {
        sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, claims, b"myJwtToken")
    }

    #[test]
    fn tokens_two_minutes_outside_their_validity_are_refused() {
        let auth = Authenticator::new(b"myJwtToken");
        let now = now();
        assert_eq!(
            auth.verify(&token_with(&format!(r#"{{"exp":{}}}"#, now - 120))),
            Err(AuthError::InvalidToken("token is expired".into()))
        );
        assert_eq!(
            auth.verify(&token_with(&format!(r#"{{"nbf":{}}}"#, now + 120))),
            Err(AuthError::InvalidToken("token is not valid yet".into()))
        );
    }

    #[test]
    fn clock_skew_within_the_tolerance_is_accepted() {
        let auth = Authenticator::new(b"myJwtToken");
        let now = now();
        let claims = format!(
            r#"{{"exp":{},"nbf":{},"iat":{}}}"#,
            now - 10,
            now + 10,
            now + 10
        );
        assert_eq!(auth.verify(&token_with(&claims)), Ok(()));
    }

    #[test]
    fn hs384_and_hs512_tokens_verify() {
        let auth = Authenticator::new(b"myJwtToken");
        let input = |alg: &str| {
            format!(
                "{}.{}",
                b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
                b64(b"{}")
            )
        };
        let hs384 = input("HS384");
        let mac = hmac_sha512::sha384::HMAC::mac(hs384.as_bytes(), b"myJwtToken");
        assert_eq!(auth.verify(&format!("{hs384}.{}", b64(&mac))), Ok(()));
        let hs512 = input("HS512");
        let mac = hmac_sha512::HMAC::mac(hs512.as_bytes(), b"myJwtToken");
        assert_eq!(auth.verify(&format!("{hs512}.{}", b64(&mac))), Ok(()));
        let wrong = hmac_sha512::HMAC::mac(hs512.as_bytes(), b"otherSecret");
        assert_eq!(
            auth.verify(&format!("{hs512}.{}", b64(&wrong))),
            Err(AuthError::InvalidToken("signature is invalid".into()))
        );
    }

    #[test]
    fn header_errors_are_the_401_texts() {
        assert_eq!(
            AuthError::MissingHeader.to_string(),
            "An authorization header is required"
        );
        assert_eq!(
            AuthError::MalformedHeader.to_string(),
            "Invalid authorization token"
        );
        assert_eq!(AuthError::InvalidToken("x y".into()).to_string(), "x y");
    }

    #[test]
    fn other_claim_errors_name_the_cause() {
        let auth = Authenticator::new(b"myJwtToken");
        let issued_later = format!(r#"{{"iat":{}}}"#, now() + 3600);
        assert_eq!(
            auth.verify(&token_with(&issued_later)),
            Err(AuthError::InvalidToken(
                "invalid token: Clock drift detected".into()
            ))
        );
    }
}
