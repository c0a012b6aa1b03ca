//! Sequences of hub operations against a model: exactly the clients subscribed to a channel
//! receive its frames, once each and in order, whenever their queues are drained (in
//! part, in whole, or given back with `Outbox::shrink`, which only a dry queue allows);
//! subscriber counts match and never pass the per-channel limit, which refuses only a full
//! channel; nothing is left behind when every client has gone.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sigmahub::{Client, Config, Hub};

const CHANNELS: [&str; 4] = ["a", "b", "system.status", "bad name"];
const MAX_PER_CHANNEL: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Subscribe { client: u8, channels: Vec<u8> },
    Unsubscribe { client: u8, channels: Vec<u8> },
    Publish { channel: u8 },
    /// The client's writer takes up to `max` frames (0: all).
    Drain { client: u8, max: u8 },
    /// The client's writer gives its queue back, if the queue is dry.
    Shrink { client: u8 },
    Disconnect { client: u8 },
}

/// A client, its subscriptions, and the frames it has been sent and not yet drained.
struct Modelled<'a> {
    client: Client,
    channels: BTreeSet<&'a str>,
    pending: VecDeque<Bytes>,
}

impl Modelled<'_> {
    /// Drains up to `max` frames and checks them against the model.
    fn drain(&mut self, max: usize) {
        let mut got = Vec::new();
        let n = self.client.outbox().drain_into(&mut got, max);
        assert_eq!(n, got.len());
        assert_eq!(n, max.min(self.pending.len()), "a frame missing or extra");
        let expected: Vec<Bytes> = self.pending.drain(..n).collect();
        assert_eq!(got, expected, "frames out of order or wrong");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut config = Config::default();
    config.max_subscriptions_per_connection = 3;
    config.max_subscribers_per_channel = MAX_PER_CHANNEL;
    config.client_queue_capacity = 1 << 16;
    let hub = Hub::new(&config);
    let mut clients: Vec<Modelled> = Vec::new();
    let mut seq = 0u64;
    for op in ops.into_iter().take(200) {
        let pick = |i: u8, n: usize| (n > 0).then(|| i as usize % n);
        match op {
            Op::Connect => clients.push(Modelled {
                client: hub.connect().unwrap(),
                channels: BTreeSet::new(),
                pending: VecDeque::new(),
            }),
            Op::Subscribe { client, channels } => {
                let Some(i) = pick(client, clients.len()) else {
                    continue;
                };
                let names: Vec<&str> = channels.iter().map(|c| CHANNELS[*c as usize % 4]).collect();
                let holders = |name: &str| clients.iter().filter(|m| m.channels.contains(name)).count();
                let full: Vec<bool> = CHANNELS
                    .iter()
                    .map(|n| holders(n) >= MAX_PER_CHANNEL)
                    .collect();
                let Modelled { client: c, channels: model, .. } = &mut clients[i];
                let change = c.subscribe(names.iter().copied());
                for r in &change.rejected {
                    if r.code == "channel_full" {
                        let k = CHANNELS.iter().position(|n| *n == r.channel).unwrap();
                        assert!(full[k], "{} refused while not full", r.channel);
                    }
                }
                for ch in &change.changed {
                    let k = CHANNELS.iter().position(|n| *n == ch.as_str()).unwrap();
                    assert!(!full[k], "{ch} accepted past the limit");
                    assert!(model.insert(CHANNELS.iter().find(|n| **n == ch.as_str()).unwrap()));
                }
                assert!(model.len() <= 3);
                assert!(!model.contains("bad name"));
            }
            Op::Unsubscribe { client, channels } => {
                let Some(i) = pick(client, clients.len()) else {
                    continue;
                };
                let names: Vec<&str> = channels.iter().map(|c| CHANNELS[*c as usize % 4]).collect();
                let Modelled { client: c, channels: model, .. } = &mut clients[i];
                let change = c.unsubscribe(names.iter().copied());
                for ch in &change.changed {
                    assert!(model.remove(ch.as_str()));
                }
            }
            Op::Publish { channel } => {
                let name = CHANNELS[channel as usize % 3];
                seq += 1;
                let frame = Bytes::from(seq.to_be_bytes().to_vec());
                let delivery = hub.publish_frame(name, &frame);
                let mut expected = 0;
                for m in clients.iter_mut().filter(|m| m.channels.contains(name)) {
                    m.pending.push_back(frame.clone());
                    expected += 1;
                }
                assert_eq!(delivery.queued, expected);
                for m in &clients {
                    assert_eq!(m.client.outbox().len(), m.pending.len());
                }
            }
            Op::Drain { client, max } => {
                let Some(i) = pick(client, clients.len()) else {
                    continue;
                };
                let max = if max == 0 { usize::MAX } else { max as usize };
                clients[i].drain(max);
            }
            Op::Shrink { client } => {
                let Some(i) = pick(client, clients.len()) else {
                    continue;
                };
                let m = &clients[i];
                if m.client.outbox().shrink() {
                    assert!(m.pending.is_empty(), "a queue holding frames was given back");
                }
            }
            Op::Disconnect { client } => {
                let Some(i) = pick(client, clients.len()) else {
                    continue;
                };
                clients.swap_remove(i);
            }
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &clients {
            for ch in &m.channels {
                *counts.entry(ch).or_default() += 1;
            }
        }
        for ch in &CHANNELS[..3] {
            assert_eq!(
                hub.subscriber_count(ch),
                counts.get(ch).copied().unwrap_or(0)
            );
            assert!(hub.subscriber_count(ch) <= MAX_PER_CHANNEL);
        }
    }
    for m in &mut clients {
        m.drain(usize::MAX);
        m.client.outbox().shrink();
        assert!(m.client.outbox().is_empty());
    }
    clients.clear();
    assert!(hub.channels().is_empty());
    assert_eq!(hub.stats().clients, 0);
});
