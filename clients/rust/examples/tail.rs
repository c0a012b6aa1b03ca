//! Prints every event of the channels named on the command line, across reconnects, with
//! the gaps the server could not fill.
//!
//! ```text
//! cargo run --release                                   # the server, in another terminal
//! cargo run -p sigmahub-client --example tail -- ws://127.0.0.1:12080/ws orders notification
//! curl -H 'Content-Type: application/json' -d '{"type":"orders","data":{"id":1}}' \
//!     http://127.0.0.1:12080/api/v1/publish
//! ```
//!
//! Set `SIGMAHUB_TOKEN` to authenticate. Stop it with Ctrl-C.

use futures_util::StreamExt;
use sigmahub_client::{Client, Interruption, Notice, Options};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:12080/ws".to_owned());
    let channels: Vec<String> = args.collect();
    let channels = if channels.is_empty() {
        vec!["notification".to_owned()]
    } else {
        channels
    };
    let mut options = Options::new(url);
    if let Ok(token) = std::env::var("SIGMAHUB_TOKEN") {
        options = options.token(token);
    }
    let client = Client::with_options(options);

    let mut notices = client.notices();
    tokio::spawn(async move {
        while let Ok(notice) = notices.recv().await {
            if let Notice::State(state) = notice {
                eprintln!("[{state:?}]");
            }
        }
    });

    let mut streams = Vec::new();
    for channel in &channels {
        match client.subscribe::<serde_json::Value>(channel).await {
            Ok(subscription) => streams.push(subscription),
            Err(e) => {
                eprintln!("{channel}: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut all = futures_util::stream::select_all(streams);
    loop {
        tokio::select! {
            next = all.next() => match next {
                Some(Ok(event)) => println!("{} {:?} {}", event.channel, event.offset, event.data),
                Some(Err(Interruption::Gap(gap))) => eprintln!("lost on {}: {:?} after {:?}", gap.channel, gap.reason, gap.after),
                Some(Err(other)) => eprintln!("{other}"),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
}
