//! Stress test of the publish / subscribe / disconnect race, on real threads.
//!
//! One publisher per channel publishes numbered frames as fast as it can while churn threads
//! connect clients, subscribe each to one channel, read for a while, and disconnect, so slot
//! ids are freed and reused constantly. Every client checks that it received:
//! - only frames of the channel it subscribed to (never another slot owner's traffic),
//! - each sequence number at most once, in increasing order,
//! - every frame whose publish started after its subscribe returned and finished before
//!   it left (none lost).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sigmahub::{Config, Hub};

const CHANNELS: [&str; 2] = ["red", "blue"];

struct Publisher {
    /// The sequence number being published now (its publish may be in progress).
    started: AtomicU64,
    /// Every sequence number below this one has been fully published.
    done: AtomicU64,
}

fn frame(channel: usize, seq: u64) -> Bytes {
    let mut b = Vec::with_capacity(9);
    b.push(channel as u8);
    b.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

#[test]
fn racing_publish_subscribe_and_disconnect_never_misdeliver() {
    let mut config = Config::default();
    // Bounds far above what a churner that is descheduled for a while can collect; a client
    // that overflows anyway (closed as a slow consumer) is checked for misdelivery and order
    // but not for loss, and the run must check loss on most clients.
    config.client_queue_capacity = sigmahub::engine::outbox::MAX_CAPACITY;
    config.client_queue_bytes = sigmahub::engine::outbox::MAX_BYTE_CAPACITY;
    let hub = Hub::new(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Arc<Vec<Publisher>> = Arc::new(
        CHANNELS
            .iter()
            .map(|_| Publisher {
                started: AtomicU64::new(0),
                done: AtomicU64::new(0),
            })
            .collect(),
    );

    let publisher_threads: Vec<_> = (0..CHANNELS.len())
        .map(|c| {
            let (hub, stop, publishers) = (hub.clone(), stop.clone(), publishers.clone());
            std::thread::spawn(move || {
                let me = &publishers[c];
                let mut seq = 1;
                while !stop.load(Ordering::Relaxed) {
                    me.started.store(seq, Ordering::SeqCst);
                    hub.publish_frame(CHANNELS[c], &frame(c, seq));
                    me.done.store(seq + 1, Ordering::SeqCst);
                    seq += 1;
                }
            })
        })
        .collect();

    let churners: Vec<_> = (0..4)
        .map(|t| {
            let (hub, publishers) = (hub.clone(), publishers.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut clients = 0u64;
                let mut frames = 0u64;
                let mut overflowed = 0u64;
                while Instant::now() < deadline {
                    let c = (clients as usize + t) % CHANNELS.len();
                    let mut client = hub.connect().unwrap();
                    client.subscribe([CHANNELS[c]]);
                    let first_required = publishers[c].started.load(Ordering::SeqCst) + 1;
                    // Stay subscribed for a short, varying while.
                    for _ in 0..(clients % 7) * 50 {
                        std::hint::spin_loop();
                    }
                    if clients % 3 == 0 {
                        std::thread::yield_now();
                    }
                    let done_before_leaving = publishers[c].done.load(Ordering::SeqCst);
                    let mut got = Vec::new();
                    client.outbox().drain_into(&mut got, usize::MAX);
                    let complete = !client.outbox().is_closing();
                    drop(client);

                    let mut last = 0;
                    for (i, f) in got.iter().enumerate() {
                        assert_eq!(
                            f[0] as usize,
                            c,
                            "a frame of another channel reached this client: frame {i} of {}, \
                             seq {}, first required {first_required}",
                            got.len(),
                            u64::from_be_bytes(f[1..9].try_into().unwrap()),
                        );
                        let seq = u64::from_be_bytes(f[1..9].try_into().unwrap());
                        assert!(seq > last, "duplicate or reordered: {seq} after {last}");
                        last = seq;
                    }
                    let seqs: std::collections::HashSet<u64> = got
                        .iter()
                        .map(|f| u64::from_be_bytes(f[1..9].try_into().unwrap()))
                        .collect();
                    if complete {
                        for required in first_required..done_before_leaving {
                            assert!(seqs.contains(&required), "lost seq {required}");
                        }
                    } else {
                        overflowed += 1;
                    }
                    frames += got.len() as u64;
                    clients += 1;
                }
                (clients, frames, overflowed)
            })
        })
        .collect();

    let mut total_clients = 0;
    let mut total_frames = 0;
    let mut total_overflowed = 0;
    for churner in churners {
        let (clients, frames, overflowed) =
            churner.join().expect("a churn thread found a violation");
        total_clients += clients;
        total_frames += frames;
        total_overflowed += overflowed;
    }
    stop.store(true, Ordering::Relaxed);
    for p in publisher_threads {
        p.join().unwrap();
    }
    assert_eq!(hub.stats().clients, 0);
    assert!(hub.channels().is_empty(), "{:?}", hub.channels());
    // The run must have exercised the race, not idled.
    assert!(
        total_clients > 1_000,
        "only {total_clients} clients churned"
    );
    assert!(total_frames > 1_000, "only {total_frames} frames delivered");
    assert!(
        total_overflowed * 10 < total_clients,
        "{total_overflowed} of {total_clients} clients overflowed: loss went mostly unchecked"
    );
    println!(
        "{total_clients} clients churned ({total_overflowed} overflowed), {total_frames} frames checked"
    );
}
