//! The time paths of a token: correctly signed tokens whose `exp`, `nbf` and `iat` are any
//! JSON number (seconds, milliseconds, 2^63, negative, fractional) or other value, through
//! the verifier with any leeway, then what the session does with an accepted one (the
//! `expires_at` it shows, the expiry timer it arms). Never a panic; an accepted token's
//! `expires_at` is a real RFC 3339 time no earlier than its `exp`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sigmahub::auth::Authenticator;
use sigmahub::AuthConfig;

const SECRET: &str = "fuzzing-secret-fuzzing-secret-32b";

#[derive(Debug, Arbitrary)]
enum Time {
    Seconds(u64),
    Signed(i64),
    Fraction(f64),
    Text(String),
    Missing,
}

impl Time {
    fn json(&self) -> Option<Value> {
        match self {
            Self::Seconds(n) => Some(json!(n)),
            Self::Signed(n) => Some(json!(n)),
            Self::Fraction(f) => Some(json!(f)),
            Self::Text(t) => Some(json!(t)),
            Self::Missing => None,
        }
    }
}

fuzz_target!(|input: (Time, Time, Time, u32)| {
    let (exp, nbf, iat, leeway) = input;
    let mut config = AuthConfig::default();
    config.jwt_secret = Some(SECRET.into());
    config.leeway = std::time::Duration::from_secs(u64::from(leeway));
    // A leeway past 10 years is refused (jsonwebtoken computes `now - leeway`).
    let Ok(auth) = Authenticator::new(&config, &["notification".to_owned()]) else {
        assert!(config.leeway > sigmahub::config::MAX_DURATION);
        return;
    };
    let mut claims = json!({"sub": "fuzz"});
    for (name, time) in [("exp", &exp), ("nbf", &nbf), ("iat", &iat)] {
        if let Some(value) = time.json() {
            claims[name] = value;
        }
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signing does not fail");
    if let Ok(identity) = auth.verify(&token) {
        let expires_at = identity.expires_at.expect("a JWT always expires");
        let (shown, _armed) = sigmahub::fuzzing::token_lifetime(expires_at);
        assert_eq!(shown.len(), "9999-12-31T23:59:59.999Z".len(), "{shown}");
        if let Time::Seconds(exp) = exp {
            let exp = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
            assert!(expires_at >= exp);
        }
    }
});
