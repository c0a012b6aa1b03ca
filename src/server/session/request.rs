//! A client's request (a Skreaver `request`, a Socket.IO event that is not sigmahub's
//! own), answered by the application's request hook.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::value::RawValue;

use super::reply::refusal;
use super::Session;
use crate::auth::permissions::Identity;
use crate::dialect::{socketio, Dialect, ServerMessage};
use crate::hooks::{Caller, HookError, Request};
use crate::protocol::code::ErrorCode;
use crate::protocol::message::{CorrelationId, MessageError};

impl Session {
    /// Passes the request to the application and, when it answers, sends the client its
    /// `response` (or its ack), or an `error` with the same correlation id.
    ///
    /// The answer is awaited on its own task: the connection reads on meanwhile, and
    /// answers come in the order the application gives them. A Socket.IO event without an
    /// ack is passed on all the same; its answer is dropped.
    pub(super) fn request(
        &self,
        identity: &Arc<Identity>,
        method: Option<String>,
        data: Option<String>,
        correlation_id: Option<CorrelationId>,
        now: SystemTime,
    ) {
        let data = data
            .and_then(|d| RawValue::from_string(d).ok())
            .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        let request = Request {
            caller: Caller {
                client: self.client.id(),
                identity: identity.clone(),
            },
            method: method.clone(),
            data,
        };
        let Some(answering) = self.shared.hooks.request(request) else {
            let e = match method {
                Some(name) => MessageError {
                    correlation_id,
                    ..socketio::unknown_event(&name)
                },
                None => MessageError {
                    code: ErrorCode::NotSupported,
                    message: "this server answers no requests (hooks.request_url is not set)"
                        .to_owned(),
                    correlation_id,
                },
            };
            self.refuse(&e, now);
            return;
        };
        let dialect = self.client.dialect();
        let answered = dialect != Dialect::SocketIo || socketio::asks_ack(correlation_id.as_ref());
        let outbox = self.client.outbox().clone();
        tokio::spawn(async move {
            let now = SystemTime::now();
            let frame = match answering.await {
                Ok(_) if !answered => return,
                Ok(answer) => dialect.message(
                    ServerMessage::Response,
                    correlation_id.as_ref(),
                    now,
                    &answer,
                ),
                Err(error) => {
                    let code = match error {
                        HookError::Refused(_) => ErrorCode::Forbidden,
                        HookError::Unavailable(_) => ErrorCode::Unavailable,
                        HookError::NotSupported => ErrorCode::NotSupported,
                    };
                    let e = MessageError {
                        code,
                        message: error.to_string(),
                        correlation_id,
                    };
                    refusal(dialect, &e, now)
                }
            };
            outbox.push(frame);
        });
    }
}
