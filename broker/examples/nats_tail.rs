//! A tiny NATS subscriber: prints every event on a subject, one JSON line each, with its
//! subject. The Rust version of `nats sub 'dnstap.>'`.
//!
//! ```text
//! cargo run --release -p tapbus-broker --example nats_tail -- nats://127.0.0.1:4222 'dnstap.>' 10
//! ```

use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let subject = args.next().unwrap_or_else(|| "dnstap.>".into());
    let limit: Option<usize> = args.next().map(|n| n.parse()).transpose()?;
    let client = async_nats::connect(&url).await?;
    let mut sub = client.subscribe(subject.clone()).await?;
    eprintln!("subscribed to {subject} on {url}");
    let mut n = 0;
    while let Some(msg) = sub.next().await {
        println!("{} {}", msg.subject, String::from_utf8_lossy(&msg.payload));
        n += 1;
        if limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    Ok(())
}
