//! Who the client is: the upgrade's token or an `auth` message, refreshes, and the welcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::{Session, WELCOME_MESSAGE};
use crate::auth::permissions::Method;
use crate::dialect::ServerMessage;
use crate::event::{self, unix_seconds};
use crate::protocol::channel::Channel;
use crate::protocol::close::CloseCode;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{CorrelationId, MessageError};
use crate::protocol::recovery::Recovery;
use crate::server::analytics::ClientKey;

impl Session<'_> {
    /// Authenticates with the upgrade's token, or starts waiting for an `auth` message,
    /// and welcomes the client once it is known. Returns the close code of a refused token.
    pub(super) fn start(&mut self, token: Option<Box<str>>) -> Option<CloseCode> {
        let auth = &self.shared.auth;
        match token {
            Some(token) => return self.authenticate(&token, None),
            None if auth.requires_token() => {
                self.deadlines.await_auth(self.shared.config.auth.timeout);
            }
            None => {
                self.identity = Some(auth.anonymous());
                self.welcome();
            }
        }
        None
    }

    /// Checks `token`, answers with `auth_response`, and on success welcomes the client
    /// (first time) or applies the refreshed grant. Returns the close code of a refusal.
    pub(super) fn authenticate(
        &mut self,
        token: &str,
        correlation_id: Option<&CorrelationId>,
    ) -> Option<CloseCode> {
        let now = SystemTime::now();
        let identity = match self.shared.verify_token(self.address, token) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::debug!(client_id = self.client.id(), error = %e, "authentication refused");
                self.shared
                    .counters
                    .auth_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = serde_json::json!({
                    "success": false,
                    "error": { "code": e.code(), "message": e.to_string() },
                });
                self.say(ServerMessage::AuthResponse, correlation_id, now, &body);
                return Some(e.close_code());
            }
        };
        let first = self.identity.is_none();
        if let Some(current) = &self.identity {
            if identity.subject != current.subject && current.method != Method::Anonymous {
                let e = MessageError {
                    code: ErrorCode::AuthSubjectChanged,
                    message: format!(
                        "a refreshed token must be for {:?}; connect again to change identity",
                        current.subject
                    ),
                    correlation_id: correlation_id.cloned(),
                };
                self.refuse(&e, now);
                return None;
            }
        }
        // A refreshed grant may be narrower: leave what it no longer allows.
        let revoked: Vec<String> = self
            .client
            .subscriptions()
            .iter()
            .filter(|c| !identity.may_subscribe(c))
            .map(|c| c.to_string())
            .collect();
        let revoked = self.client.unsubscribe(revoked.iter().map(String::as_str));
        #[derive(Serialize)]
        struct Granted<'a> {
            success: bool,
            subject: &'a str,
            method: Method,
            expires_at: Option<String>,
            subscribe: Vec<String>,
            publish: Vec<String>,
            unsubscribed: &'a [Channel],
        }
        self.say(
            ServerMessage::AuthResponse,
            correlation_id,
            now,
            &Granted {
                success: true,
                subject: &identity.subject,
                method: identity.method,
                expires_at: identity.expires_at.map(event::rfc3339),
                subscribe: identity.subscribe.to_strings(),
                publish: identity.publish.to_strings(),
                unsubscribed: &revoked.changed,
            },
        );
        self.deadlines.authenticated(identity.expires_at);
        self.identity = Some(identity);
        if first {
            self.welcome();
        }
        None
    }

    /// Queues the welcome notification and the defaults' snapshots, then subscribes to the
    /// defaults the client may have, so that the welcome comes before any event.
    pub(super) fn welcome(&mut self) {
        #[derive(Serialize)]
        struct Welcome<'a> {
            message: &'static str,
            level: &'static str,
            client_id: String,
            subscriptions: &'a [Channel],
            server_time: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            recovery: Option<&'a BTreeMap<String, Recovery>>,
        }
        let epoch = self.epoch();
        let identity = self
            .identity
            .clone()
            .expect("welcome follows authentication");
        // A dialect without a welcome (Skreaver) has no default subscriptions either: its
        // clients subscribe to what they want.
        let welcomes = self.client.dialect().welcomes();
        let defaults = match welcomes {
            true => self.shared.config.default_subscriptions.as_slice(),
            false => &[],
        };
        let change = self.client.plan_subscribe(
            defaults
                .iter()
                .map(String::as_str)
                .filter(|c| identity.may_subscribe(c)),
        );
        let reconnection = self
            .shared
            .analytics
            .arrived(&ClientKey::of(&identity, self.address), crate::clock::now());
        tracing::info!(
            conn = self.client.id(),
            peer = %self.address,
            subject = %identity.subject,
            method = ?identity.method,
            reconnection,
            "client connected"
        );
        let resume = self.resume.take();
        let resumption = self.plan_resume(resume.as_deref(), &change);
        let now = SystemTime::now();
        if !welcomes {
            self.complete_subscribe(&change, resumption);
            return;
        }
        self.say(
            ServerMessage::Welcome,
            None,
            now,
            &Welcome {
                message: WELCOME_MESSAGE,
                level: "info",
                client_id: self.client.id().to_string(),
                subscriptions: &change.changed,
                server_time: unix_seconds(now),
                epoch: epoch.as_deref().map(String::as_str),
                recovery: resume.is_some().then_some(&resumption.outcomes),
            },
        );
        self.complete_subscribe(&change, resumption);
    }

    /// The epoch of this server's offsets, if it keeps history.
    pub(super) fn epoch(&self) -> Option<Arc<String>> {
        self.shared.hub.history().map(|h| h.epoch())
    }
}
