//! The SigmaVault WebSocket Protocol v1.0 as sigmahub speaks it: channel names, client
//! messages, error and close codes. See `docs/protocol.md` for the whole wire format.

pub mod channel;
pub mod close;
pub mod code;
pub mod message;
pub mod publish;
pub(crate) mod rate;
pub mod recovery;
