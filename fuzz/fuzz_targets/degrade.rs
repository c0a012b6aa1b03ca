//! Publishes of every priority, with and without conflation keys, against a client that
//! drains its queue at arbitrary moments, under `slow_consumer = "degrade"`. Checked:
//! what the client receives of a channel is in publish order; what it receives plus what
//! its gap books say it missed is exactly what was published; only a `critical` event that
//! finds the queue at twice its bound closes the client; every `critical` event and the
//! newest event of every key arrive (two keys per channel, within the parking room); the
//! queue stays within twice its bound (plus the parked events a `critical` event sends
//! ahead of itself).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sigmahub::event::{ConflateKey, Priority};
use sigmahub::{Config, Event, Hub, SlowConsumerPolicy};

const CHANNELS: [&str; 3] = ["a", "b", "c"];
const QUEUE: usize = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    Publish { channel: u8, priority: u8, key: Option<u8> },
    Drain { max: u8 },
}

#[derive(Default)]
struct Channel {
    /// Each published event's seq, priority and key.
    published: Vec<(u64, Priority, Option<u8>)>,
    received: Vec<u64>,
    missed: u64,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut config = Config::default();
    config.slow_consumer = SlowConsumerPolicy::Degrade;
    config.client_queue_capacity = QUEUE;
    let hub = Hub::new(&config);
    let mut client = hub.connect().unwrap();
    client.subscribe(CHANNELS);
    let mut model: BTreeMap<&str, Channel> = CHANNELS.iter().map(|c| (*c, Channel::default())).collect();
    let mut seq = 0u64;
    let read = |model: &mut BTreeMap<&str, Channel>, max: usize| {
        let mut frames = Vec::new();
        client.outbox().drain_into(&mut frames, max);
        if let Some(book) = client.outbox().take_book() {
            for held in book.into_held() {
                let channel = model.get_mut(&*held.channel).unwrap();
                channel.missed += held.missed;
                frames.extend(held.parked);
            }
        }
        for frame in frames {
            let payload = sigmahub::frame::payload_of(&frame);
            let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let name = event["type"].as_str().unwrap();
            model.get_mut(name).unwrap().received.push(event["data"]["seq"].as_u64().unwrap());
        }
    };
    for op in ops.into_iter().take(500) {
        match op {
            Op::Publish { channel, priority, key } => {
                let name = CHANNELS[channel as usize % CHANNELS.len()];
                let priority = Priority::ALL[priority as usize % 4];
                let key = key.map(|k| k % 2);
                let event = Event::new(name, &serde_json::json!({ "seq": seq }))
                    .unwrap()
                    .with_priority(priority)
                    .with_conflate(key.map(|k| ConflateKey::new(&format!("k{k}")).unwrap()));
                let delivery = hub.publish(&event);
                if delivery.overflowed > 0 {
                    // Only a critical event that finds the queue at twice its bound closes
                    // the client; the run ends there.
                    assert_eq!(priority, Priority::Critical, "closed for a {priority:?} event");
                    assert!(client.outbox().len() >= 2 * QUEUE, "closed below twice the bound");
                    return;
                }
                model.get_mut(name).unwrap().published.push((seq, priority, key));
                seq += 1;
                assert!(client.outbox().len() <= 2 * QUEUE + QUEUE);
            }
            Op::Drain { max } => read(&mut model, max as usize),
        }
    }
    read(&mut model, usize::MAX);
    for (name, channel) in &model {
        assert!(channel.received.windows(2).all(|w| w[0] < w[1]), "{name}: out of order");
        assert_eq!(
            channel.received.len() as u64 + channel.missed,
            channel.published.len() as u64,
            "{name}: received + missed != published"
        );
        for &(seq, priority, _) in &channel.published {
            if priority == Priority::Critical {
                assert!(channel.received.contains(&seq), "{name}: critical {seq} lost");
            }
        }
        let mut newest = BTreeMap::new();
        for &(seq, _, key) in &channel.published {
            if let Some(key) = key {
                newest.insert(key, seq);
            }
        }
        for (key, seq) in newest {
            assert!(channel.received.contains(&seq), "{name}: newest of k{key} ({seq}) lost");
        }
    }
});
