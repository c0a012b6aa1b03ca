//! JWT verification (HS256 with a shared secret, RS256 with a PEM public key).
//!
//! The key is chosen by the token's `alg` among the configured ones, so an RS256 public key
//! can never be used as an HMAC secret (the classic algorithm-confusion attack), and `none`
//! is never accepted. Required claims: `sub` and `exp` (in seconds, at most the end of year
//! 9999), and `iss` and `aud` whenever `auth.issuer` and `auth.audience` are configured (a
//! token without them is refused, not waved through); `nbf` is honoured. sigmahub's own
//! claims:
//!
//! | claim       | meaning                                                        | absent    |
//! |-------------|----------------------------------------------------------------|-----------|
//! | `subscribe` | channel globs the client may subscribe to (alias `channels`)   | the server's default channels |
//! | `publish`   | channel globs the client may publish on over the WebSocket     | none      |

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::permissions::{Identity, Method, PatternError, Patterns, MAX_INFO};
use super::AuthError;

/// The latest `exp` accepted: 9999-12-31T23:59:59Z, the end of RFC 3339's range. A larger
/// one is almost always milliseconds where seconds belong, and is refused as such.
pub(crate) const MAX_EXP: u64 = 253_402_300_799;

/// The claims sigmahub reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, alias = "channels")]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// Verifies tokens against the configured keys.
pub(crate) struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    validation: Validation,
    default_subscribe: Patterns,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .finish_non_exhaustive()
    }
}

/// The parts of the configuration a verifier needs.
pub(crate) struct JwtSettings<'a> {
    pub(crate) hs256_secret: Option<&'a [u8]>,
    pub(crate) rs256_public_pem: Option<&'a [u8]>,
    pub(crate) issuer: Option<&'a str>,
    pub(crate) audience: Option<&'a str>,
    pub(crate) leeway: Duration,
    /// Patterns granted when a token has no `subscribe` claim.
    pub(crate) default_subscribe: Patterns,
}

impl JwtVerifier {
    /// A verifier, or `None` when no key is configured. Fails on an unreadable PEM key.
    pub(crate) fn new(
        settings: JwtSettings<'_>,
    ) -> Result<Option<Self>, jsonwebtoken::errors::Error> {
        let hs256 = settings.hs256_secret.map(DecodingKey::from_secret);
        let rs256 = settings
            .rs256_public_pem
            .map(DecodingKey::from_rsa_pem)
            .transpose()?;
        if hs256.is_none() && rs256.is_none() {
            return Ok(None);
        }
        // The algorithm is set per token (see `verify`); this one is a placeholder.
        let mut validation = Validation::new(Algorithm::HS256);
        // jsonwebtoken checks `iss` and `aud` only when a token carries them; configured,
        // they are required.
        let required = ["exp", "sub"]
            .into_iter()
            .chain(settings.issuer.map(|_| "iss"))
            .chain(settings.audience.map(|_| "aud"));
        validation.required_spec_claims = required.map(str::to_owned).collect::<HashSet<_>>();
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        // Without a configured audience, tokens that name one are refused (RFC 7519 §4.1.3:
        // a principal that does not find itself in `aud` must reject the token).
        if let Some(aud) = settings.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = settings.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Some(Self {
            hs256,
            rs256,
            validation,
            default_subscribe: settings.default_subscribe,
        }))
    }

    /// Checks `token` and returns the identity it grants.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            AuthError::Invalid(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ))
        })?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => invalid(&e),
            })?
            .claims;
        if claims.exp > MAX_EXP {
            return Err(AuthError::Invalid(
                "`exp` is past the year 9999: give it in seconds since 1970, not milliseconds"
                    .to_owned(),
            ));
        }
        let patterns = |p: Result<Patterns, PatternError>, claim: &str| {
            p.map_err(|e| AuthError::Invalid(format!("`{claim}` claim: {e}")))
        };
        let subscribe = match &claims.subscribe {
            Some(list) => patterns(Patterns::new(list), "subscribe")?,
            None => self.default_subscribe.clone(),
        };
        let publish = patterns(Patterns::new(&claims.publish), "publish")?;
        let info = match claims.info {
            Some(info) if info.get().len() > MAX_INFO => {
                return Err(AuthError::Invalid(format!(
                    "`info` claim is over {MAX_INFO} bytes"
                )))
            }
            Some(info) if info.get() == "null" => None,
            Some(info) => Some(Arc::from(info)),
            None => None,
        };
        Ok(Identity {
            subject: claims.sub,
            method: Method::Jwt,
            // The token is accepted until `exp` plus the leeway, so the connection lasts
            // as long (`MAX_EXP` keeps the sum far from overflowing).
            expires_at: (SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp))
                .checked_add(Duration::from_secs(self.validation.leeway)),
            subscribe,
            publish,
            info,
        })
    }
}

fn invalid(e: &jsonwebtoken::errors::Error) -> AuthError {
    let reason = match e.kind() {
        ErrorKind::InvalidSignature => "bad signature".to_owned(),
        ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
        ErrorKind::InvalidAudience => "wrong audience".to_owned(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".to_owned(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key".to_owned(),
        _ => format!("malformed token: {e}"),
    };
    AuthError::Invalid(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"a-test-secret-that-is-32-bytes!!";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET),
            rs256_public_pem: None,
            issuer: Some("sigmahub-tests"),
            audience: None,
            leeway: Duration::ZERO,
            default_subscribe: Patterns::new(&["notification"]).unwrap(),
        })
        .unwrap()
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn a_good_token_grants_its_claims() {
        let t = token(serde_json::json!({
            "sub": "alice", "exp": now() + 60, "iss": "sigmahub-tests",
            "subscribe": ["agent.*"], "publish": ["chat.alice"],
        }));
        let id = verifier().verify(&t).unwrap();
        assert_eq!(id.subject, "alice");
        assert!(id.may_subscribe("agent.status"));
        assert!(!id.may_subscribe("system.status"));
        assert!(id.may_publish("chat.alice"));
        assert!(!id.may_publish("chat.bob"));
    }

    #[test]
    fn the_info_claim_is_kept_as_sent_up_to_its_bound() {
        let claims = |info: serde_json::Value| {
            token(serde_json::json!({
                "sub": "a", "exp": now() + 60, "iss": "sigmahub-tests", "info": info,
            }))
        };
        let id = verifier()
            .verify(&claims(serde_json::json!({"name": "Ann", "seat": 4})))
            .unwrap();
        assert_eq!(
            id.info.as_deref().unwrap().get(),
            r#"{"name":"Ann","seat":4}"#
        );
        let id = verifier().verify(&claims(serde_json::Value::Null)).unwrap();
        assert!(id.info.is_none());
        let long = claims(serde_json::json!("x".repeat(MAX_INFO)));
        assert!(matches!(
            verifier().verify(&long),
            Err(AuthError::Invalid(m)) if m.contains("`info`")
        ));
    }

    #[test]
    fn missing_channel_claims_fall_back_to_the_defaults() {
        let t = token(serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "sigmahub-tests"}));
        let v = verifier();
        let id = v.verify(&t).unwrap();
        assert!(id.may_subscribe("notification"));
        assert!(!id.may_subscribe("agent.status"));
        assert!(!id.may_publish("notification"));
        // Every such connection shares the compiled defaults instead of a copy each.
        let other = v.verify(&t).unwrap();
        match (&id.subscribe, &other.subscribe, &id.publish, &other.publish) {
            (Patterns::Some(a), Patterns::Some(b), Patterns::Some(c), Patterns::Some(d)) => {
                assert!(std::sync::Arc::ptr_eq(a, b) && std::sync::Arc::ptr_eq(c, d));
            }
            patterns => panic!("expected pattern lists, got {patterns:?}"),
        }
    }

    #[test]
    fn bad_tokens_say_why() {
        let v = verifier();
        let expired =
            token(serde_json::json!({"sub": "a", "exp": now() - 10, "iss": "sigmahub-tests"}));
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let wrong_iss = token(serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "other"}));
        assert!(matches!(v.verify(&wrong_iss), Err(AuthError::Invalid(r)) if r.contains("issuer")));
        let no_sub = token(serde_json::json!({"exp": now() + 60, "iss": "sigmahub-tests"}));
        assert!(matches!(v.verify(&no_sub), Err(AuthError::Invalid(r)) if r.contains("sub")));
        let forged = encode(
            &Header::default(),
            &serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "sigmahub-tests"}),
            &EncodingKey::from_secret(b"another-secret-another-secret-!!"),
        )
        .unwrap();
        assert!(matches!(v.verify(&forged), Err(AuthError::Invalid(r)) if r.contains("signature")));
        assert!(matches!(v.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify(""), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn configured_issuer_and_audience_are_required_claims() {
        let v = JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET),
            rs256_public_pem: None,
            issuer: Some("sigmahub-tests"),
            audience: Some("sigmahub"),
            leeway: Duration::ZERO,
            default_subscribe: Patterns::none(),
        })
        .unwrap()
        .unwrap();
        let exp = now() + 60;
        let both = token(
            serde_json::json!({"sub": "a", "exp": exp, "iss": "sigmahub-tests", "aud": "sigmahub"}),
        );
        assert!(v.verify(&both).is_ok());
        let no_iss = token(serde_json::json!({"sub": "a", "exp": exp, "aud": "sigmahub"}));
        assert!(matches!(v.verify(&no_iss), Err(AuthError::Invalid(r)) if r.contains("`iss`")));
        let no_aud = token(serde_json::json!({"sub": "a", "exp": exp, "iss": "sigmahub-tests"}));
        assert!(matches!(v.verify(&no_aud), Err(AuthError::Invalid(r)) if r.contains("`aud`")));
        // Neither configured: neither needed.
        let plain = JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET),
            rs256_public_pem: None,
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            default_subscribe: Patterns::none(),
        })
        .unwrap()
        .unwrap();
        assert!(plain
            .verify(&token(serde_json::json!({"sub": "a", "exp": exp})))
            .is_ok());
    }

    #[test]
    fn an_expiry_past_year_9999_is_an_invalid_token_not_a_panic() {
        let v = verifier();
        for exp in [
            serde_json::json!(MAX_EXP + 1),
            serde_json::json!(now() * 1000),
            serde_json::json!(u64::MAX),
            serde_json::json!(1u64 << 63),
            serde_json::json!(1e300),
            serde_json::json!(-1),
            serde_json::json!("tomorrow"),
        ] {
            let t = token(serde_json::json!({"sub": "a", "exp": exp, "iss": "sigmahub-tests"}));
            assert!(
                matches!(v.verify(&t), Err(AuthError::Invalid(_))),
                "exp {exp}"
            );
        }
        let t =
            token(serde_json::json!({"sub": "a", "exp": now() * 1000, "iss": "sigmahub-tests"}));
        assert!(matches!(v.verify(&t), Err(AuthError::Invalid(r)) if r.contains("milliseconds")));
        let last = token(serde_json::json!({"sub": "a", "exp": MAX_EXP, "iss": "sigmahub-tests"}));
        let id = v.verify(&last).unwrap();
        assert_eq!(
            crate::event::rfc3339(id.expires_at.unwrap()),
            "9999-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn a_token_lasts_until_exp_plus_the_leeway() {
        let v = JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET),
            rs256_public_pem: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            default_subscribe: Patterns::none(),
        })
        .unwrap()
        .unwrap();
        // Expired 10 s ago, inside the leeway: accepted, and good for 20 s more.
        let exp = now() - 10;
        let id = v
            .verify(&token(serde_json::json!({"sub": "a", "exp": exp})))
            .unwrap();
        assert_eq!(
            id.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp + 30))
        );
    }

    #[test]
    fn audience_and_not_before_are_enforced() {
        let v = JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET),
            rs256_public_pem: None,
            issuer: None,
            audience: Some("sigmahub"),
            leeway: Duration::ZERO,
            default_subscribe: Patterns::none(),
        })
        .unwrap()
        .unwrap();
        let ok = token(serde_json::json!({"sub": "a", "exp": now() + 60, "aud": "sigmahub"}));
        assert!(v.verify(&ok).is_ok());
        let other = token(serde_json::json!({"sub": "a", "exp": now() + 60, "aud": "billing"}));
        assert!(matches!(v.verify(&other), Err(AuthError::Invalid(r)) if r.contains("audience")));
        let early = token(
            serde_json::json!({"sub": "a", "exp": now() + 600, "aud": "sigmahub", "nbf": now() + 300}),
        );
        assert!(matches!(v.verify(&early), Err(AuthError::Invalid(r)) if r.contains("nbf")));
        // Without a configured audience, a token meant for another service is refused.
        let elsewhere = token(
            serde_json::json!({"sub": "a", "exp": now() + 60, "iss": "sigmahub-tests", "aud": "billing"}),
        );
        assert!(verifier().verify(&elsewhere).is_err());
    }

    #[test]
    fn unsigned_and_unconfigured_algorithms_are_refused() {
        // {"alg":"none"} with a valid-looking body and no signature.
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(matches!(
            verifier().verify(unsigned),
            Err(AuthError::Invalid(_))
        ));
        let rs = Header::new(Algorithm::RS256);
        let mut parts: Vec<String> = token(serde_json::json!({"sub": "a", "exp": now() + 60}))
            .split('.')
            .map(str::to_owned)
            .collect();
        parts[0] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&rs).unwrap());
        let relabelled = parts.join(".");
        assert!(
            matches!(verifier().verify(&relabelled), Err(AuthError::Invalid(r)) if r.contains("RS256"))
        );
    }
}
