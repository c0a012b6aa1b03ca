//! The client's error type.

/// What can go wrong for a caller of the client.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The client is closed (by [`Client::close`](crate::Client::close), or because the
    /// server's answer means retrying cannot succeed); the reason says which.
    #[error("the client is closed: {0}")]
    Closed(String),
    /// The connection was lost before the server answered. A publish may or may not
    /// have been carried out.
    #[error("the connection was lost before the server answered")]
    Disconnected,
    /// The server refused the request: a channel it will not subscribe the client to, a
    /// publish the token does not allow, a malformed request.
    #[error("refused by the server: {code}: {message}")]
    Refused {
        /// The server's code (`forbidden`, `invalid_channel`, `subscription_limit`, …).
        code: String,
        /// Its explanation.
        message: String,
    },
    /// An argument the server would refuse anyway (an invalid channel name, data that
    /// does not serialise to JSON).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// The error a token source may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
