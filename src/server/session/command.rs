//! Carrying out what the control API tells a connection (see `engine::control`): a
//! server-side subscribe or unsubscribe, or a disconnect.

use std::sync::OnceLock;
use std::time::SystemTime;

use super::{Ending, Session};
use crate::auth::permissions::Identity;
use crate::broker::Completion;
use crate::dialect::Dialect;
use crate::engine::control::Command;
use crate::protocol::channel::Channel;
use crate::protocol::close::CloseCode;
use crate::protocol::message::ChannelList;

impl Session {
    /// Carries out the commands waiting for this connection, in order. Returns how the
    /// connection ends if one of them disconnects it (the rest are dropped with it); its
    /// reason is then in `farewell`, for the close frame.
    pub(super) async fn obey(&mut self, farewell: &OnceLock<Box<str>>) -> Option<Ending> {
        for command in self.shared.hub.take_commands(self.client.id()) {
            match command {
                Command::Disconnect(bye) => {
                    tracing::debug!(
                        client_id = self.client.id(),
                        code = bye.code,
                        reason = &*bye.reason,
                        "disconnected by the control API"
                    );
                    if self.client.dialect() == Dialect::SocketIo {
                        // Socket.IO's own "server disconnect": its client does not reconnect.
                        self.client.send(crate::dialect::socketio::disconnect());
                    }
                    let _ = farewell.set(bye.reason);
                    return Some(Ending::Dismissed(CloseCode {
                        code: bye.code,
                        reason: CloseCode::DISCONNECTED.reason,
                    }));
                }
                // Before the welcome, a subscription would let events ahead of it.
                _ if self.identity.is_none() => {
                    tracing::debug!(
                        client_id = self.client.id(),
                        "a control command before authentication is ignored"
                    );
                }
                Command::Subscribe(channels) => {
                    let mut listened = channels.iter().cloned();
                    if let Completion::Pending(listening) =
                        self.shared.broker.listen(&mut listened, None)
                    {
                        listening.await;
                    }
                    self.subscribe(
                        &Identity::server(),
                        &server_list(channels),
                        &[],
                        SystemTime::now(),
                    );
                }
                Command::Unsubscribe(channels) => {
                    self.unsubscribe(&server_list(channels), SystemTime::now())
                }
            }
        }
        None
    }
}

/// A server's request for `channels`: no correlation id, nothing to resume.
fn server_list(channels: Vec<Channel>) -> ChannelList {
    ChannelList {
        channels: channels.into_iter().map(|c| c.to_string()).collect(),
        correlation_id: None,
        resume: None,
    }
}
