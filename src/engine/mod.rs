//! The broadcast engine: sans-IO, clock-free, lock-free on the publish path.
//!
//! - [`hub`]: publishing, and the clients as a whole (the public [`Hub`](hub::Hub)).
//! - [`client`]: one client, its subscriptions (the public [`Client`](client::Client)).
//! - `topics`: channel names to subscriber sets, sharded (private).
//! - [`bitset`]: a channel's subscriber set, copy-on-write in chunks.
//! - [`slots`]: slot ids to outboxes, with epoch-protected reuse.
//! - [`outbox`]: a client's bounded queue of ready frames.
//! - [`counter`]: a thread-sharded counter for hot paths.
//! - [`history`]: each channel's recent events and offsets, for recovery.
//! - [`latency`]: publish timestamps and a thread-sharded latency histogram.

pub mod bitset;
pub mod client;
pub mod counter;
pub mod history;
pub mod hub;
pub mod latency;
pub mod outbox;
pub mod slots;
pub(crate) mod topics;
