//! Sequences of hub operations against a model: after every publish, exactly the clients
//! subscribed to the channel received the frame, once; subscriber counts match and never
//! pass the per-channel limit, which refuses only a full channel; nothing is left behind
//! when every client has gone.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

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
    Disconnect { client: u8 },
}

fuzz_target!(|ops: Vec<Op>| {
    let mut config = Config::default();
    config.max_subscriptions_per_connection = 3;
    config.max_subscribers_per_channel = MAX_PER_CHANNEL;
    config.client_queue_capacity = 1 << 16;
    let hub = Hub::new(&config);
    let mut clients: Vec<(Client, BTreeSet<&str>)> = Vec::new();
    let mut seq = 0u64;
    for op in ops.into_iter().take(200) {
        let pick = |i: u8, n: usize| (n > 0).then(|| i as usize % n);
        match op {
            Op::Connect => clients.push((hub.connect().unwrap(), BTreeSet::new())),
            Op::Subscribe { client, channels } => {
                let Some(i) = pick(client, clients.len()) else {
                    continue;
                };
                let names: Vec<&str> = channels.iter().map(|c| CHANNELS[*c as usize % 4]).collect();
                let holders = |name: &str| clients.iter().filter(|(_, m)| m.contains(name)).count();
                let full: Vec<bool> = CHANNELS
                    .iter()
                    .map(|n| holders(n) >= MAX_PER_CHANNEL)
                    .collect();
                let (c, model) = &mut clients[i];
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
                let (c, model) = &mut clients[i];
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
                let expected = clients.iter().filter(|(_, m)| m.contains(name)).count();
                assert_eq!(delivery.queued, expected);
                for (c, model) in &clients {
                    let mut got = Vec::new();
                    c.outbox().drain_into(&mut got, usize::MAX);
                    if model.contains(name) {
                        assert_eq!(got, vec![frame.clone()], "subscriber missed or duplicated");
                    } else {
                        assert!(got.is_empty(), "a non-subscriber received a frame");
                    }
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
        for (_, model) in &clients {
            for ch in model {
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
    clients.clear();
    assert!(hub.channels().is_empty());
    assert_eq!(hub.stats().clients, 0);
});
