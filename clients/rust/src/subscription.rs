//! A subscription: the events of one channel, in order, as a `Stream`.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::driver::Command;
use crate::event::{Event, Gap};

/// An event as it came, its data not decoded yet; shared by a channel's subscriptions.
#[derive(Debug)]
pub(crate) struct RawEvent {
    pub(crate) channel: String,
    pub(crate) timestamp: String,
    pub(crate) offset: Option<u64>,
    pub(crate) data: Box<RawValue>,
}

/// What the connection hands a subscription.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(Arc<RawEvent>),
    Gap(Gap),
}

/// Something other than the next event on a subscription.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Interruption {
    /// Events were lost here: the next event is the first one after them.
    #[error("events lost on {}: {:?}", .0.channel, .0.reason)]
    Gap(Gap),
    /// An event whose data is not a `T`; the subscription goes on with the next one.
    #[error("an event on {channel} (offset {offset:?}) could not be decoded: {message}")]
    Undecodable {
        /// The channel.
        channel: String,
        /// The event's offset.
        offset: Option<u64>,
        /// serde's explanation.
        message: String,
    },
}

/// The events of one channel, oldest first, each once, with [`Interruption::Gap`] where
/// events were lost. Ends when the client closes or the server refuses the channel after
/// a reconnect. Dropping it unsubscribes (once the channel's last subscription is gone).
#[derive(Debug)]
pub struct Subscription<T> {
    channel: String,
    id: u64,
    items: mpsc::Receiver<Item>,
    commands: mpsc::UnboundedSender<Command>,
    decode: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Subscription<T> {
    pub(crate) fn new(
        channel: String,
        id: u64,
        items: mpsc::Receiver<Item>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            channel,
            id,
            items,
            commands,
            decode: PhantomData,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event, or why there is none in its place; `None` once the subscription
    /// has ended.
    pub async fn recv(&mut self) -> Option<Result<Event<T>, Interruption>> {
        self.items.recv().await.map(decode)
    }
}

fn decode<T: DeserializeOwned>(item: Item) -> Result<Event<T>, Interruption> {
    match item {
        Item::Gap(gap) => Err(Interruption::Gap(gap)),
        Item::Event(raw) => match serde_json::from_str(raw.data.get()) {
            Ok(data) => Ok(Event {
                channel: raw.channel.clone(),
                timestamp: raw.timestamp.clone(),
                offset: raw.offset,
                data,
            }),
            Err(e) => Err(Interruption::Undecodable {
                channel: raw.channel.clone(),
                offset: raw.offset,
                message: e.to_string(),
            }),
        },
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<Event<T>, Interruption>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.poll_recv(cx).map(|item| item.map(decode))
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}
