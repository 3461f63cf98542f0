//! Shared by the benchmark examples: wall-clock nanoseconds and this process's CPU time.
//!
//! Included with `#[path = "common/proc.rs"] mod proc;` (cargo does not build a file in a
//! subdirectory of `examples/` as an example of its own unless it is `main.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// utime + stime of this process, in clock ticks (from /proc/self/stat; 0 if unavailable).
pub fn self_cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    tick(11) + tick(12)
}
