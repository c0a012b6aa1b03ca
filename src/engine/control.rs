//! Commands to one connected client from outside its connection: the control API's
//! disconnect, and its server-side subscribe and unsubscribe.
//!
//! A connection's subscriptions belong to its session (its `Client`), so a command is not
//! carried out here: [`Hub::command`](super::hub::Hub::command) leaves it in the hub's
//! mailbox under the client's id and flags the client's outbox, which wakes the
//! connection (a dormant one gets its task back): its
//! [`Outbox::poll_commands`](super::outbox::Outbox::poll_commands) is then ready, and it
//! takes its commands
//! ([`Hub::take_commands`](super::hub::Hub::take_commands)) and carries them out in order,
//! between two of its client's messages.
//!
//! The mailbox is empty but for commands on their way, so it costs a connection nothing:
//! a client that leaves with commands still waiting takes them with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::protocol::channel::Channel;

/// Most bytes of a close reason: a close frame's payload is at most 125 bytes, two of them
/// the code (RFC 6455 §5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// What a connection is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Subscribe to these channels, whatever the client's grant allows (the server
    /// decides): the client is sent a `subscribe_response` without a correlation id, and
    /// the snapshots of snapshot channels, as for its own subscribe.
    Subscribe(Vec<Channel>),
    /// Unsubscribe from these channels; the client is sent an `unsubscribe_response`.
    Unsubscribe(Vec<Channel>),
    /// Close the connection once what is queued for it is written.
    Disconnect(Farewell),
}

/// The close frame a disconnected client is sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "UncheckedFarewell")]
pub struct Farewell {
    /// The close code: 1000, 1001, 1008 or an application code (3000-4999).
    pub code: u16,
    /// Why, at most [`MAX_CLOSE_REASON`] bytes.
    pub reason: Box<str>,
}

/// A [`Farewell`] that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FarewellError {
    /// The code is not one a server may send for this.
    #[error("close code {0} cannot be sent: use 1000, 1001, 1008 or 3000-4999")]
    Code(u16),
    /// The reason is too long for a close frame.
    #[error("the close reason is {0} bytes; a close frame holds at most 123")]
    ReasonTooLong(usize),
}

impl Farewell {
    /// The code sigmahub uses when none is given: 4010, "disconnected by the server".
    pub const DEFAULT_CODE: u16 = 4010;
    /// The reason sigmahub gives when none is given.
    pub const DEFAULT_REASON: &'static str = "disconnected by the server";

    /// A farewell with `code` and `reason`, if a close frame can carry them.
    pub fn new(code: u16, reason: &str) -> Result<Self, FarewellError> {
        if !matches!(code, 1000 | 1001 | 1008 | 3000..=4999) {
            return Err(FarewellError::Code(code));
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(FarewellError::ReasonTooLong(reason.len()));
        }
        Ok(Self {
            code,
            reason: reason.into(),
        })
    }
}

/// A farewell as it arrives from elsewhere (another node), checked by [`Farewell::new`].
#[derive(serde::Deserialize)]
struct UncheckedFarewell {
    code: u16,
    reason: String,
}

impl TryFrom<UncheckedFarewell> for Farewell {
    type Error = FarewellError;

    fn try_from(unchecked: UncheckedFarewell) -> Result<Self, FarewellError> {
        Self::new(unchecked.code, &unchecked.reason)
    }
}

impl Default for Farewell {
    fn default() -> Self {
        Self {
            code: Self::DEFAULT_CODE,
            reason: Self::DEFAULT_REASON.into(),
        }
    }
}

/// Commands on their way to connections, by client id.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    waiting: Mutex<HashMap<u64, Vec<Command>>>,
    /// Clients with commands waiting: a client that leaves looks in the mailbox only when
    /// some are, so a mass disconnect takes no lock.
    addressees: AtomicUsize,
}

impl Mailbox {
    /// Leaves `command` for client `id`, after those waiting for it already.
    pub(super) fn post(&self, id: u64, command: Command) {
        let mut waiting = self.waiting.lock();
        let commands = waiting.entry(id).or_default();
        if commands.is_empty() {
            self.addressees.fetch_add(1, Ordering::Relaxed);
        }
        commands.push(command);
    }

    /// The commands waiting for client `id`, oldest first.
    pub(super) fn take(&self, id: u64) -> Vec<Command> {
        if self.addressees.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let taken = self.waiting.lock().remove(&id);
        if taken.is_some() {
            self.addressees.fetch_sub(1, Ordering::Relaxed);
        }
        taken.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_farewell_takes_only_codes_and_reasons_a_close_frame_can_carry() {
        assert!(Farewell::new(4010, "banned").is_ok());
        assert!(Farewell::new(1000, "").is_ok());
        assert!(Farewell::new(3000, &"x".repeat(123)).is_ok());
        assert_eq!(Farewell::new(1005, ""), Err(FarewellError::Code(1005)));
        assert_eq!(Farewell::new(999, ""), Err(FarewellError::Code(999)));
        assert_eq!(Farewell::new(5000, ""), Err(FarewellError::Code(5000)));
        assert_eq!(
            Farewell::new(4000, &"é".repeat(62)),
            Err(FarewellError::ReasonTooLong(124))
        );
    }

    #[test]
    fn commands_wait_in_order_for_their_client_alone() {
        let mailbox = Mailbox::default();
        let orders = Channel::new("orders").unwrap();
        mailbox.post(1, Command::Subscribe(vec![orders.clone()]));
        mailbox.post(2, Command::Disconnect(Farewell::default()));
        mailbox.post(1, Command::Unsubscribe(vec![orders.clone()]));
        assert_eq!(
            mailbox.take(1),
            [
                Command::Subscribe(vec![orders.clone()]),
                Command::Unsubscribe(vec![orders])
            ]
        );
        assert!(mailbox.take(1).is_empty());
        assert_eq!(mailbox.take(2), [Command::Disconnect(Farewell::default())]);
        assert_eq!(mailbox.addressees.load(Ordering::Relaxed), 0);
    }
}
