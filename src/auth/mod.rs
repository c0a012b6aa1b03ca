//! Who may connect, subscribe and publish.
//!
//! - **WebSocket clients** authenticate with a JWT (see `jwt`) given as `?token=` on the
//!   upgrade, as `Authorization: Bearer`, or in an `auth` message within `auth.timeout`.
//!   A publish API key works as a token too and grants everything (a trusted service).
//!   Without any JWT key configured, clients are anonymous: they may subscribe to any
//!   channel and publish on none over the socket.
//! - **`POST /api/v1/publish`** needs one of `auth.publish_keys` (as `Authorization: Bearer`
//!   or `X-API-Key`) once any is configured.
//! - **Browsers** may be held to an origin allowlist (see `origin`); every request must
//!   name a host the server answers to (see `host`), against DNS rebinding.
//!
//! Secure by default: a server listening on a non-loopback address refuses to start
//! without token authentication and publish keys, unless `auth.allow_anonymous` says that
//! open access is intended (see [`crate::Config::validate`]).

pub(crate) mod host;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod origin;
pub mod permissions;

use std::sync::Arc;

use crate::config::{AuthConfig, ConfigError};
use crate::protocol::close::CloseCode;
use crate::protocol::code::ErrorCode;
use jwt::{JwtSettings, JwtVerifier};
use keys::ApiKeys;
use origin::OriginPolicy;
use permissions::{Identity, Method, Patterns};

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, forged, for another issuer or audience, or not accepted here.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// No credentials arrived within `auth.timeout`.
    #[error("no credentials within the authentication timeout")]
    Timeout,
    /// The application (a connect hook or an [`Authorizer`](crate::hooks::Authorizer))
    /// refused the client, for this reason.
    #[error("refused by the application: {0}")]
    Refused(String),
    /// No credentials where they are required; the text says how to give them.
    #[error("authentication required: {0}")]
    Missing(&'static str),
    /// The application did not answer who the client is; try again later.
    #[error("the application did not answer: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The stable code sent in `auth_response` and counted in the stats.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) | Self::Refused(_) => ErrorCode::InvalidToken,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Expired => ErrorCode::TokenExpired,
            Self::Timeout => ErrorCode::AuthTimeout,
            Self::Missing(_) => ErrorCode::AuthRequired,
        }
    }

    /// The close code the connection ends with.
    pub fn close_code(&self) -> CloseCode {
        if let Self::Missing(_) = self {
            return CloseCode::AUTH_FAILED;
        }
        self.code()
            .close_code()
            .expect("every credentials error ends the connection")
    }
}

/// The server's authentication policy, built once from [`AuthConfig`].
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    keys: ApiKeys,
    origins: OriginPolicy,
    anonymous: Arc<Identity>,
    service: Arc<Identity>,
}

impl Authenticator {
    /// Builds the policy; reads the RS256 public key file if one is configured.
    pub fn new(config: &AuthConfig, default_channels: &[String]) -> Result<Self, ConfigError> {
        let pem = match &config.jwt_public_key_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        // jsonwebtoken would take a private key here and verify with its public half; a
        // private key has no business on the hub, and is most likely the wrong file.
        if pem
            .as_deref()
            .is_some_and(|pem| pem.windows(11).any(|w| w == b"PRIVATE KEY"))
        {
            return Err(ConfigError::Invalid {
                field: "auth.jwt_public_key_file",
                reason: "holds a private key; give sigmahub only the public key \
                         (openssl rsa -in private.pem -pubout -out public.pem)"
                    .to_owned(),
            });
        }
        // Config::validate bounds it too; an embedder may build an AuthConfig directly, and
        // jsonwebtoken computes `now - leeway` unchecked (a leeway past 1970 overflowed:
        // found by the token_times fuzz target).
        if config.leeway > crate::config::MAX_DURATION {
            return Err(ConfigError::Invalid {
                field: "auth.leeway",
                reason: "must be at most 10 years".to_owned(),
            });
        }
        let default_subscribe =
            Patterns::new(default_channels).map_err(|e| ConfigError::Invalid {
                field: "default_subscriptions",
                reason: e.to_string(),
            })?;
        let jwt = JwtVerifier::new(JwtSettings {
            hs256_secret: config.jwt_secret.as_deref().map(str::as_bytes),
            rs256_public_pem: pem.as_deref(),
            issuer: config.issuer.as_deref(),
            audience: config.audience.as_deref(),
            leeway: config.leeway,
            default_subscribe,
        })
        .map_err(|e| ConfigError::Invalid {
            field: "auth.jwt_public_key_file",
            reason: format!("not an RSA public key in PEM form: {e}"),
        })?;
        let origins =
            OriginPolicy::new(&config.allowed_origins).map_err(|e| ConfigError::Invalid {
                field: "auth.allowed_origins",
                reason: e.to_string(),
            })?;
        Ok(Self {
            jwt,
            keys: ApiKeys::new(&config.publish_keys),
            origins,
            anonymous: Identity::anonymous(),
            service: Arc::new(Identity {
                subject: "api-key".to_owned(),
                method: Method::ApiKey,
                expires_at: None,
                subscribe: Patterns::All,
                publish: Patterns::All,
                info: None,
            }),
        })
    }

    /// Whether WebSocket clients must present a token (a JWT key is configured).
    pub fn requires_token(&self) -> bool {
        self.jwt.is_some()
    }

    /// The identity of a client that presents no token, when [`requires_token`] is false.
    ///
    /// [`requires_token`]: Self::requires_token
    pub fn anonymous(&self) -> Arc<Identity> {
        self.anonymous.clone()
    }

    /// Checks a WebSocket client's token: a publish key, or a JWT when a key is configured.
    /// On a server without either, a token is ignored and the client is anonymous.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if self.keys.find(token).is_some() {
            return Ok(self.service.clone());
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token).map(Arc::new),
            None if self.keys.is_empty() => Ok(self.anonymous.clone()),
            None => Err(AuthError::Invalid(
                "not a known key, and this server accepts no JWTs".to_owned(),
            )),
        }
    }

    /// Whether `POST /api/v1/publish` needs a key.
    pub fn publish_needs_key(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `key` is one of the publish keys (constant time).
    pub fn is_publish_key(&self, key: &str) -> bool {
        self.keys.find(key).is_some()
    }

    /// Whether a browser page from `origin` may read HTTP API answers (CORS): only origins
    /// on `auth.allowed_origins`.
    pub fn cors_allowed(&self, origin: &[u8]) -> bool {
        self.origins.lists(origin)
    }

    /// Whether a WebSocket upgrade with this `Origin` header to this `Host` may proceed.
    pub fn origin_allowed(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        self.origins.allows(origin, host)
    }

    /// Whether an HTTP API request with this `Origin` (if any) to this `Host` may be
    /// answered: no origin, the server's own, or a listed one.
    pub fn api_origin_allowed(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        self.origins.api_allows(origin, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        vec!["notification".to_owned()]
    }

    #[test]
    fn without_keys_everyone_is_anonymous() {
        let auth = Authenticator::new(&AuthConfig::default(), &defaults()).unwrap();
        assert!(!auth.requires_token());
        assert!(!auth.publish_needs_key());
        assert_eq!(auth.verify("whatever").unwrap().method, Method::Anonymous);
    }

    #[test]
    fn a_publish_key_is_a_service_token() {
        let config = AuthConfig {
            publish_keys: vec!["service-key-0123456789".into()],
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&config, &defaults()).unwrap();
        let id = auth.verify("service-key-0123456789").unwrap();
        assert_eq!(id.method, Method::ApiKey);
        assert!(id.may_publish("anything"));
        assert!(matches!(auth.verify("guess"), Err(AuthError::Invalid(_))));
        assert!(auth.is_publish_key("service-key-0123456789"));
        assert!(!auth.is_publish_key("service-key-012345678"));
    }

    #[test]
    fn a_leeway_past_ten_years_is_refused_not_overflowed() {
        let secret = "leeway-test-secret-leeway-test-32b";
        let token = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let mut config = AuthConfig {
            jwt_secret: Some(secret.into()),
            leeway: std::time::Duration::from_secs(u64::from(u32::MAX)),
            ..AuthConfig::default()
        };
        let err = Authenticator::new(&config, &defaults()).unwrap_err();
        assert!(err.to_string().contains("auth.leeway"), "{err}");
        // Ten years is the most, and works: a token expired five years ago is inside it.
        config.leeway = crate::config::MAX_DURATION;
        let auth = Authenticator::new(&config, &defaults()).unwrap();
        let five_years_ago =
            crate::event::unix_seconds(std::time::SystemTime::now()) - 5 * 365 * 24 * 3600;
        let claims = serde_json::json!({"sub": "a", "exp": five_years_ago});
        let id = auth.verify(&token(claims)).unwrap();
        assert_eq!(id.subject, "a");
    }

    #[test]
    fn a_missing_key_file_is_a_config_error() {
        let config = AuthConfig {
            jwt_public_key_file: Some("/nonexistent/key.pem".into()),
            ..AuthConfig::default()
        };
        let err = Authenticator::new(&config, &defaults()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn a_private_key_given_as_the_public_key_is_refused() {
        let config = AuthConfig {
            jwt_public_key_file: Some(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/test-rsa-private.pem"
                )
                .into(),
            ),
            ..AuthConfig::default()
        };
        let err = Authenticator::new(&config, &defaults())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("private key") && err.contains("-pubout"),
            "{err}"
        );
        let config = AuthConfig {
            jwt_public_key_file: Some(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/test-rsa-public.pem"
                )
                .into(),
            ),
            ..AuthConfig::default()
        };
        assert!(Authenticator::new(&config, &defaults())
            .unwrap()
            .requires_token());
    }

    #[test]
    fn errors_map_to_documented_codes() {
        assert_eq!(AuthError::Expired.close_code().code, 4004);
        assert_eq!(AuthError::Invalid(String::new()).close_code().code, 4003);
        assert_eq!(AuthError::Timeout.close_code().code, 4002);
        assert_eq!(AuthError::Refused(String::new()).close_code().code, 4003);
        assert_eq!(
            AuthError::Unavailable(String::new()).close_code().code,
            1013
        );
    }
}
