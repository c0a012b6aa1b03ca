//! The broadcast engine: sans-IO and clock-free.
//!
//! The fan-out is lock-free: a publish loads its channel's subscriber set and pushes into
//! each subscriber's outbox without a lock. With history on (the default, `history.size >
//! 0`) a publish also takes its channel's log lock (a parking_lot mutex per channel, never
//! poisoned) and fans out under it, so that a resuming subscriber can replay and subscribe
//! with nothing slipping between; publishers of different channels never share a lock.
//! With `history.size = 0` no lock is taken at all.
//!
//! - [`hub`]: publishing, and the clients as a whole (the public [`Hub`](hub::Hub)).
//! - [`client`]: one client, its subscriptions (the public [`Client`](client::Client)).
//! - `topics`: channel names to subscriber sets (one per dialect), sharded (private).
//! - `bitset`: a channel's subscriber set, copy-on-write in chunks (private).
//! - `slots`: slot ids to outboxes, with epoch-protected reuse (private).
//! - `state`: what a hub's clones and its clients share (private).
//! - [`outbox`]: a client's bounded queue of ready frames.
//! - [`control`]: commands to one client from outside its connection (disconnect,
//!   server-side subscribe), through the hub's mailbox.
//! - `queue`: the outbox's lock-free frame queue, which gives its memory back when empty
//!   (private).
//! - `counter`: a thread-sharded counter for hot paths (private).
//! - [`degrade`]: what a client that cannot keep up missed and is owed (`slow_consumer =
//!   "degrade"`).
//! - [`history`]: each channel's recent events and offsets, for recovery.
//! - `rules`: channel options by pattern (`[[channels]]`), resolved per channel (private).
//! - `latency`: publish timestamps and a thread-sharded latency histogram (private).

pub(crate) mod bitset;
pub mod client;
pub mod control;
pub(crate) mod counter;
pub mod degrade;
pub mod history;
pub mod hub;
pub(crate) mod latency;
pub mod outbox;
mod queue;
pub(crate) mod rules;
pub(crate) mod slots;
mod state;
pub(crate) mod topics;
