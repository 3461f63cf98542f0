//! What the end-to-end benchmarks share (`consumers/*/benches/e2e.rs`): a process's CPU
//! time, a metric summed from an exposition text, and JetStream filled with copies of a
//! capture by a real broker.

use std::io::Read as _;
use std::path::Path;
use std::process::Command;

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process in seconds (`/proc/PID/stat`), 0 when it is gone.
pub fn cpu_secs(pid: u32, ticks: f64) -> f64 {
    let mut s = String::new();
    let ok = std::fs::File::open(format!("/proc/{pid}/stat"))
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_ok();
    if !ok {
        return 0.0;
    }
    // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / ticks
}

/// The sum of every sample of `name` (any labels) in a Prometheus exposition text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `broker` replays the test data's `capture` `copies` times into JetStream on
/// `nats_url` (stream `DNSTAP`, made by the broker); returns the events published. The
/// bench's own `TAPBUS_*` variables (settings of the consumer under test) are not passed.
pub fn fill_jetstream(broker: &Path, nats_url: &str, capture: &str, copies: usize) -> u64 {
    (0..copies)
        .map(|_| crate::jetstream::replay_capture(broker, nats_url, capture).len() as u64)
        .sum()
}
