//! `nats_pub`: how fast can one async-nats client publish? (the ceiling for the broker's
//! NATS egress, which publishes one message per event the same way).
//!
//! ```text
//! nats_pub --server nats://127.0.0.1:4222 --count 1000000 --size 914 [--subject dnstap.bench.client_query] [--mode publish|batch]
//! ```
//!
//! `publish` mode does what `egress::nats::run` does per event (render the subject into a
//! String, clone it, `client.publish(...).await`); `batch` mode reuses one pre-built
//! `Subject` (no per-message allocation). Prints one JSON line with the rate and CPU ticks.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;

#[path = "common/proc.rs"]
#[allow(dead_code)] // not every example needs every helper
mod proc;
use proc::self_cpu_ticks;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Payload size in bytes (914 is the mean JSON event of bulk-100k.fstrm).
    #[arg(long, default_value_t = 914)]
    size: usize,
    #[arg(long, default_value = "dnstap.bench.client_query")]
    subject: String,
    /// `publish`: String subject cloned per message (like the broker); `subject`: one
    /// pre-built `async_nats::Subject` reused.
    #[arg(long, default_value = "publish")]
    mode: String,
    /// async-nats client_capacity (the broker uses 8192).
    #[arg(long, default_value_t = 8192)]
    capacity: usize,
    /// Use a multi-thread runtime with this many workers (0: current thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = if a.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .client_capacity(a.capacity)
        .connect(a.server.as_str())
        .await?;
    let payload = Bytes::from(vec![b'x'; a.size]);
    let subject = async_nats::Subject::from(a.subject.as_str());
    let cpu0 = self_cpu_ticks();
    let t0 = Instant::now();
    let h = tokio::spawn({
        let client = client.clone();
        let mode = a.mode.clone();
        let name = a.subject.clone();
        async move {
            let mut subj = String::with_capacity(64);
            for _ in 0..a.count {
                let r = if mode == "publish" {
                    subj.clear();
                    subj.push_str(&name);
                    client.publish(subj.clone(), payload.clone()).await
                } else {
                    client.publish(subject.clone(), payload.clone()).await
                };
                r?;
            }
            client.flush().await?;
            anyhow::Ok(())
        }
    });
    h.await??;
    let secs = t0.elapsed().as_secs_f64();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    println!(
        "{{\"mode\":\"{}\",\"count\":{},\"size\":{},\"seconds\":{:.6},\"msgs_per_sec\":{:.0},\"cpu_ticks\":{},\"unix\":{}}}",
        a.mode,
        a.count,
        a.size,
        secs,
        a.count as f64 / secs,
        self_cpu_ticks().saturating_sub(cpu0),
        now
    );
    Ok(())
}
