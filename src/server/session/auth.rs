//! Who the client is: the upgrade's token or an `auth` message, refreshes, and the welcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::{Presented, Session, WELCOME_MESSAGE};
use crate::auth::permissions::{Identity, Method};
use crate::auth::AuthError;
use crate::broker::Completion;
use crate::dialect::Dialect;
use crate::dialect::ServerMessage;
use crate::engine::control::Command;
use crate::event::{self, unix_seconds};
use crate::hooks::webhook::{About, Notice};
use crate::hooks::Identified;
use crate::hooks::{Attempt, Headers};
use crate::protocol::channel::Channel;
use crate::protocol::close::CloseCode;
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{CorrelationId, MessageError};
use crate::protocol::recovery::Recovery;
use crate::server::analytics::ClientKey;

impl Session {
    /// Authenticates with the upgrade's token (or, with `hooks.connect_headers`, its
    /// headers), or starts waiting for an `auth` message (or, in a dialect that connects
    /// in band, the connect), and welcomes the client once it is known. Returns the close
    /// code of refused credentials.
    pub(super) async fn start(
        &mut self,
        token: Option<Box<str>>,
        headers: Headers,
    ) -> Option<CloseCode> {
        let by_headers = !headers.is_empty();
        if self.client.dialect().connects_in_band() {
            // The connect brings the credentials, or uses these.
            self.keep(token, headers);
            self.deadlines.await_auth(self.shared.config.auth.timeout);
            return None;
        }
        self.keep(None, headers);
        match token {
            Some(token) => {
                let identified = self.identify(Some(token.into())).await;
                return self.authenticated(identified, None);
            }
            None if by_headers => {
                let identified = self.identify(None).await;
                return self.authenticated(identified, None);
            }
            None if self.shared.requires_token() => {
                self.deadlines.await_auth(self.shared.config.auth.timeout);
            }
            None => {
                self.identity = Some(self.shared.auth.anonymous());
                self.welcome();
            }
        }
        None
    }

    /// Keeps what the upgrade brought for the connect hook, if anything.
    fn keep(&mut self, token: Option<Box<str>>, headers: Headers) {
        if token.is_some() || !headers.is_empty() {
            self.presented = Some(Box::new(Presented { token, headers }));
        }
    }

    /// Who the client presenting `token` (and the upgrade's headers) is (see
    /// [`Shared::identify`]).
    ///
    /// [`Shared::identify`]: crate::server::Shared::identify
    pub(super) fn identify(&self, token: Option<String>) -> Completion<Identified> {
        self.shared.identify(Attempt {
            client: self.client.id(),
            address: self.address,
            dialect: self.client.dialect().as_str(),
            token,
            headers: self
                .presented
                .as_ref()
                .map(|presented| presented.headers.clone())
                .unwrap_or_default(),
        })
    }

    /// Answers credentials checked as `identified` with `auth_response`, and on success
    /// welcomes the client (first time) or applies the refreshed grant. Returns the close
    /// code of a refusal.
    pub(super) fn authenticated(
        &mut self,
        identified: Identified,
        correlation_id: Option<&CorrelationId>,
    ) -> Option<CloseCode> {
        let now = SystemTime::now();
        let (identity, join) = match identified {
            Ok(identified) => identified,
            Err(e) => {
                self.count_refusal(&e.to_string());
                let body = serde_json::json!({
                    "success": false,
                    "error": { "code": e.code(), "message": e.to_string() },
                });
                self.say(ServerMessage::AuthResponse, correlation_id, now, &body);
                return Some(e.close_code());
            }
        };
        if let Err(mut e) = self.same_subject(&identity) {
            e.correlation_id = correlation_id.cloned();
            self.refuse(&e, now);
            return None;
        }
        let (first, revoked) = self.adopt(identity.clone());
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
                unsubscribed: &revoked,
            },
        );
        if first {
            self.welcome();
        }
        self.join(join);
        None
    }

    /// A Socket.IO namespace connect: credentials from its `auth` payload, else the
    /// upgrade's, else the identity the connection already has (another namespace), else
    /// anonymous where that is allowed. Answer it with [`connected`](Self::connected).
    pub(super) fn connect(&mut self, token: Option<String>) -> Completion<Identified> {
        let token = token.or_else(|| {
            let presented = self.presented.as_deref_mut()?;
            presented.token.take().map(String::from)
        });
        let by_headers = self
            .presented
            .as_ref()
            .is_some_and(|presented| !presented.headers.is_empty());
        let known = |identity| Completion::Ready(Ok((identity, Vec::new())));
        match (token, &self.identity) {
            (Some(token), _) => self.identify(Some(token)),
            (None, Some(identity)) => known(identity.clone()),
            (None, None) if by_headers => self.identify(None),
            (None, None) if self.shared.requires_token() => Completion::Ready(Err(
                AuthError::Missing("connect with a token, io(url, {auth: {token}})"),
            )),
            (None, None) => known(self.shared.auth.anonymous()),
        }
    }

    /// Answers a Socket.IO namespace connect whose credentials were checked as
    /// `identified`: `40{"sid"}` and the welcome on the first connect, or a connect error
    /// (`44`) and the close code.
    pub(super) fn connected(
        &mut self,
        identified: Identified,
        address: Option<&CorrelationId>,
    ) -> Option<CloseCode> {
        let now = SystemTime::now();
        let (identity, join) = match identified {
            Ok(identified) => identified,
            Err(e) => {
                let message = e.to_string();
                self.count_refusal(&message);
                let body = serde_json::json!({ "message": message, "data": { "code": e.code() } });
                self.say(ServerMessage::ConnectError, address, now, &body);
                return Some(e.close_code());
            }
        };
        if let Err(e) = self.same_subject(&identity) {
            let body = serde_json::json!({ "message": e.message, "data": { "code": e.code } });
            self.say(ServerMessage::ConnectError, address, now, &body);
            return None;
        }
        let (first, _revoked) = self.adopt(identity);
        let sid = serde_json::json!({ "sid": self.client.id().to_string() });
        self.say(ServerMessage::Connected, address, now, &sid);
        if first {
            self.welcome();
        }
        self.join(join);
        None
    }

    /// Has the client join `channels` the application named, as a server-side subscribe:
    /// after the welcome, whatever its grant.
    fn join(&self, channels: Vec<Channel>) {
        if !channels.is_empty() {
            self.shared
                .hub
                .command(self.client.id(), Command::Subscribe(channels));
        }
    }

    fn count_refusal(&self, error: &str) {
        tracing::debug!(
            client_id = self.client.id(),
            error,
            "authentication refused"
        );
        self.shared
            .counters
            .auth_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refuses a refreshed token for another subject than the connection's.
    fn same_subject(&self, identity: &Identity) -> Result<(), MessageError> {
        match &self.identity {
            Some(current)
                if identity.subject != current.subject && current.method != Method::Anonymous =>
            {
                Err(MessageError {
                    code: ErrorCode::AuthSubjectChanged,
                    message: format!(
                        "a refreshed token must be for {:?}; connect again to change identity",
                        current.subject
                    ),
                    correlation_id: None,
                })
            }
            _ => Ok(()),
        }
    }

    /// Makes `identity` the connection's: leaves the channels a narrower grant no longer
    /// allows (returned) and arms the token's expiry. Says whether it is the first.
    fn adopt(&mut self, identity: Arc<Identity>) -> (bool, Vec<Channel>) {
        let revoked: Vec<String> = self
            .client
            .subscriptions()
            .iter()
            .filter(|c| !identity.may_subscribe(c))
            .map(|c| c.to_string())
            .collect();
        let revoked = self.leave(revoked.iter().map(String::as_str));
        self.deadlines.authenticated(identity.expires_at);
        // Listed under its user from its first named identity (a refreshed token names
        // the same one).
        if !self.identity.as_deref().is_some_and(is_named) && is_named(&identity) {
            self.shared.users.add(&identity.subject, self.client.id());
        }
        let first = self.identity.replace(identity).is_none();
        if first {
            self.notify(Notice::Connect, None, None);
        }
        (first, revoked.changed)
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
            #[serde(skip_serializing_if = "Option::is_none")]
            offsets: Option<BTreeMap<&'a str, u64>>,
        }
        let epoch = self.epoch();
        let identity = self
            .identity
            .clone()
            .expect("welcome follows authentication");
        // A dialect without a welcome (Skreaver) has no default subscriptions either: its
        // clients subscribe to what they want.
        let welcomes = self.client.dialect().welcomes();
        let config = &self.shared.config;
        let defaults = match welcomes {
            true => config.default_subscriptions.as_slice(),
            false => &[],
        };
        // Socket.IO clients also join the default room, as Seneca's server has them do.
        let room = match self.client.dialect() {
            Dialect::SocketIo => Some(config.socketio.default_room.as_str())
                .filter(|room| !room.is_empty() && !defaults.iter().any(|d| d == room)),
            _ => None,
        };
        let change = self.client.plan_subscribe(
            defaults
                .iter()
                .map(String::as_str)
                .chain(room)
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
        let offsets = welcomes.then(|| self.positions(&change)).flatten();
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
                offsets,
            },
        );
        self.complete_subscribe(&change, resumption);
    }

    /// Tells the application's webhook, if there is one, of this client: `kind`, and for a
    /// disconnect, why and with which close code.
    pub(super) fn notify(&self, kind: Notice, reason: Option<&'static str>, code: Option<u16>) {
        let (Some(webhook), Some(identity)) = (&self.shared.webhook, &self.identity) else {
            return;
        };
        webhook.notify(
            kind,
            About::Client {
                client: self.client.id(),
                user: identity.subject.clone(),
                address: self.address,
                dialect: self.client.dialect().as_str(),
                reason,
                code,
            },
        );
    }

    /// The epoch of this server's offsets, if it keeps history.
    pub(super) fn epoch(&self) -> Option<Arc<String>> {
        self.shared.hub.history().map(|h| h.epoch())
    }
}

/// Whether a connection with `identity` is listed under its user (not anonymous).
pub(super) fn is_named(identity: &Identity) -> bool {
    identity.method != Method::Anonymous
}
