//! The result of a broker operation: already there, or on its way.

use std::future::IntoFuture;

use futures_util::future::{BoxFuture, Either, Ready};

/// What a [`Broker`](super::Broker) operation returns: `Ready` when the work is done (on
/// one node, always), `Pending` when it waits on the network. Await it, or match on it to
/// answer at once when it is ready and spawn the rest only when it is not.
#[must_use = "a completion says when and how the operation ended"]
pub enum Completion<T> {
    /// Done; here is the outcome.
    Ready(T),
    /// Under way; the future yields the outcome.
    Pending(BoxFuture<'static, T>),
}

impl<T> Completion<T> {
    /// A completion that waits for `future`.
    pub fn pending(future: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Self::Pending(Box::pin(future))
    }
}

impl<T> IntoFuture for Completion<T> {
    type Output = T;
    type IntoFuture = Either<Ready<T>, BoxFuture<'static, T>>;

    fn into_future(self) -> Self::IntoFuture {
        match self {
            Self::Ready(value) => Either::Left(futures_util::future::ready(value)),
            Self::Pending(future) => Either::Right(future),
        }
    }
}

impl<T> std::fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("Completion::Ready"),
            Self::Pending(_) => f.write_str("Completion::Pending"),
        }
    }
}
