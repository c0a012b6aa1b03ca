//! sigmahub: a lock-free WebSocket event-streaming hub.
//!
//! Clients connect to `/ws`, subscribe to channels (event types), and receive every event
//! published on them, in the SigmaVault WebSocket Protocol v1.0 format. Each event is
//! serialized once into a complete WebSocket frame and fanned out to subscribers as
//! refcounted clones.
//!
//! Embedding the hub and publishing in-process:
//!
//! ```
//! use sigmahub::{Config, Event, Hub};
//!
//! let hub = Hub::new(&Config::default());
//! let mut client = hub.connect().unwrap();
//! client.subscribe(["orders"]);
//!
//! let delivery = hub.publish(&Event::new("orders", &serde_json::json!({"id": 7})).unwrap());
//! assert_eq!(delivery.queued, 1);
//! ```
//!
//! To serve it over HTTP and WebSocket, see [`Server`].

pub mod auth;
pub mod broker;
mod clock;
pub mod cluster;
pub mod compression;
pub mod config;
pub mod dialect;
pub mod engine;
pub mod event;
pub mod frame;
pub mod hooks;
pub mod protocol;
pub mod server;
pub mod snapshot;
pub mod upstream;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use broker::{Broker, Completion, MemoryBroker, Published};
pub use cluster::{ClusterError, NatsBroker};
pub use config::{
    AuthConfig, ChannelRule, ClusterConfig, CompressionConfig, Config, ConfigError, HooksConfig,
    SlowConsumerPolicy, SocketIoConfig,
};
pub use dialect::Dialect;
pub use engine::client::Client;
pub use engine::control::Farewell;
pub use engine::hub::{Delivery, Hub, HubStats, Swept};
pub use event::{ConflateKey, Event, EventError, Priority};
pub use hooks::Authorizer;
pub use protocol::channel::Channel;
pub use protocol::close::CloseCode;
pub use server::control::{Control, Target};
pub use server::{ServeError, Server};

// The shared public types cross threads and tasks: a change that made one of them
// `!Send` or `!Sync` fails to compile here, not in an embedder's service.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Server>();
    shared::<Hub>();
    shared::<Client>();
    shared::<Config>();
    shared::<Event>();
    shared::<Channel>();
    shared::<CloseCode>();
    shared::<Dialect>();
    shared::<MemoryBroker>();
    shared::<NatsBroker>();
    shared::<std::sync::Arc<dyn Broker>>();
    shared::<engine::outbox::Outbox>();
    shared::<snapshot::SnapshotCache>();
    shared::<ServeError>();
    shared::<ClusterError>();
};

/// The README's Rust examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
