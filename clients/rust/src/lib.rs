//! The Rust client of [sigmahub](https://github.com/sigmahub): subscribe to channels and
//! receive every event published on them, each once and in order, across reconnects.
//!
//! ```no_run
//! # async fn run() -> Result<(), sigmahub_client::Error> {
//! use sigmahub_client::{Client, Interruption, Options};
//!
//! #[derive(serde::Deserialize, Debug)]
//! struct Order { id: u64 }
//!
//! let client = Client::with_options(Options::new("ws://127.0.0.1:12080/ws").token("<JWT>"));
//! let mut orders = client.subscribe::<Order>("orders").await?;
//! while let Some(next) = orders.recv().await {
//!     match next {
//!         Ok(event) => println!("{} #{:?}: {:?}", event.channel, event.offset, event.data),
//!         Err(Interruption::Gap(gap)) => println!("lost on {}: {:?}", gap.channel, gap.reason),
//!         Err(other) => println!("{other}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! What the client does by itself (docs/protocol.md has the server's side):
//! - **Reconnects** after any loss with exponential backoff and full jitter
//!   ([`Backoff`]), honours `Retry-After` on 429/503 refusals, moves to the next URL of
//!   a cluster ([`Options::fallback`]), and stops only where retrying cannot succeed
//!   (close codes 1002, 1003, 1007, 1009 and 4003; HTTP 4xx refusals other than 429).
//! - **Resumes**: each channel's last offset (or the position the server gave when it
//!   subscribed) and the epoch go with the reconnect, as `since`; the server replays
//!   what was missed. Duplicates are dropped; what the server could not replay is
//!   reported as an [`Interruption::Gap`] in the subscription, in place, and as a
//!   [`Notice::Gap`].
//! - **Refreshes the token** from [`Options::token_source`] before `expires_at`, and
//!   after a 4004 close.
//! - **Detects a dead connection**: nothing received for [`Options::dead_after`].
//! - **Bounds memory**: a subscription holds at most [`Options::buffer`] events; a full
//!   one makes the client stop reading (see [`Notice::SlowHandler`]).
//!
//! [`Client::presence`] asks who is subscribed to a channel that keeps presence.
//!
//! It speaks the SigmaVault dialect of `/ws`; `wss://` needs a TLS build of
//! `tokio-tungstenite`, which this crate does not enable yet.

mod backoff;
mod client;
mod driver;
mod ending;
mod error;
mod event;
mod options;
mod position;
mod subscription;
mod wire;

pub use backoff::Backoff;
pub use client::Client;
pub use error::{BoxError, Error};
pub use event::{Event, Gap, GapReason, Member, Notice, Presence, PublishAck, State};
pub use options::{Options, TokenSource};
pub use subscription::{Interruption, Subscription};
