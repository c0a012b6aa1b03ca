//! Client credentials: any token text, and tokens correctly signed over any claims JSON,
//! through the authenticator as the server configures it. Never a panic; raw text is
//! accepted only as the publish key (forging a signature by chance is not a thing); a
//! signed token is accepted only with its own `sub` and an expiry, and its channel globs
//! answer for any name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigmahub::auth::permissions::Method;
use sigmahub::auth::Authenticator;
use sigmahub::AuthConfig;

const SECRET: &str = "fuzzing-secret-fuzzing-secret-32b";

fuzz_target!(|input: (bool, &[u8], &str)| {
    let (sign, bytes, channel) = input;
    let mut config = AuthConfig::default();
    config.jwt_secret = Some(SECRET.into());
    config.publish_keys = vec!["fuzzing-publish-key".into()];
    let auth = Authenticator::new(&config, &["notification".to_owned()]).expect("valid config");
    let claims = if sign {
        // Claims must be JSON to be signed at all.
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(claims) => Some(claims),
            Err(_) => return,
        }
    } else {
        None
    };
    let token = match &claims {
        Some(claims) => jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("HS256 signing does not fail"),
        None => String::from_utf8_lossy(bytes).into_owned(),
    };
    if let Ok(identity) = auth.verify(&token) {
        match &claims {
            None => assert_eq!(identity.method, Method::ApiKey, "{token:?} accepted"),
            Some(claims) => {
                assert_eq!(identity.method, Method::Jwt);
                assert_eq!(claims["sub"].as_str(), Some(identity.subject.as_str()));
                assert!(identity.expires_at.is_some());
            }
        }
        let _ = identity.may_subscribe(channel);
        let _ = identity.may_publish(channel);
        let _ = identity.subscribe.to_strings();
    }
});
