//! The runtime's bookkeeping, apart from every socket (as rumqttc keeps `state.rs` beside
//! its event loop): which messages are held and until which batch ([`Held`]), and which
//! stream sequences this process already handled ([`Handled`]), so that a redelivery is
//! acked without its effect being applied a second time.
//!
//! Generic over the ack handle so it is tested with plain values.

use std::collections::{BTreeMap, HashMap};

/// One held message: its ack handle and what the runtime needs to renew and forget it.
#[derive(Debug)]
pub struct Entry<H> {
    pub handle: H,
    pub input: usize,
    /// JetStream stream sequence (keys [`Held::token_of`]).
    pub seq: Option<u64>,
    /// The renewal round it was taken in ([`Held::renewal`]).
    round: u64,
}

/// Messages whose effect waits in the stage, by the token the stage gave them.
#[derive(Debug)]
pub struct Held<H> {
    by_token: BTreeMap<u64, Vec<Entry<H>>>,
    by_seq: HashMap<(usize, u64), u64>,
    len: usize,
    round: u64,
}

impl<H> Default for Held<H> {
    fn default() -> Self {
        Held {
            by_token: BTreeMap::new(),
            by_seq: HashMap::new(),
            len: 0,
            round: 0,
        }
    }
}

impl<H> Held<H> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds `handle` until a batch covering `token` is written.
    pub fn hold(&mut self, token: u64, handle: H, input: usize, seq: Option<u64>) {
        if let Some(s) = seq {
            self.by_seq.insert((input, s), token);
        }
        self.by_token.entry(token).or_default().push(Entry {
            handle,
            input,
            seq,
            round: self.round,
        });
        self.len += 1;
    }

    /// The token a held message of `input` with stream sequence `seq` waits on.
    pub fn token_of(&self, input: usize, seq: u64) -> Option<u64> {
        self.by_seq.get(&(input, seq)).copied()
    }

    /// Takes every entry held with a token below `covers` (their batch was written).
    pub fn release_below(&mut self, covers: u64) -> Vec<Entry<H>> {
        let keep = self.by_token.split_off(&covers);
        let gone = std::mem::replace(&mut self.by_token, keep);
        let mut out = Vec::new();
        for (_, v) in gone {
            for e in v {
                if let Some(s) = e.seq {
                    self.by_seq.remove(&(e.input, s));
                }
                out.push(e);
            }
        }
        self.len -= out.len();
        out
    }

    /// Takes everything (shutdown).
    pub fn take_all(&mut self) -> Vec<Entry<H>> {
        let all: Vec<Entry<H>> = std::mem::take(&mut self.by_token)
            .into_values()
            .flatten()
            .collect();
        self.by_seq.clear();
        self.len = 0;
        all
    }

    /// Starts a renewal round: returns the entries taken before it (held for at least one
    /// whole round), to be reported in progress.
    pub fn renewal(&mut self) -> Vec<&H> {
        let before = self.round;
        self.round += 1;
        self.by_token
            .values()
            .flatten()
            .filter(|e| e.round < before)
            .map(|e| &e.handle)
            .collect()
    }
}

/// Stream sequences this process applied the effect of, for one input, above the point
/// the server confirmed every ack (the consumer's ack floor). A redelivery of one of them
/// (an ack lost with the connection or with a restarted server, or `ack_wait` passed) is
/// acked without effect.
///
/// Kept as disjoint ranges (one process on a durable takes runs of sequences, so a few
/// ranges cover millions of messages), at most `cap` ranges; past that the lowest range is
/// forgotten and counted ([`Handled::evicted`]).
///
/// Pruning lags one floor report behind: a range is forgotten only once the floor that
/// covered it has been reported twice, so an ack the server held only in memory when it
/// was killed (and forgot on restart) is not forgotten here first.
#[derive(Debug)]
pub struct Handled {
    /// start -> end, inclusive, disjoint, not adjacent.
    ranges: BTreeMap<u64, u64>,
    cap: usize,
    floor_seen: Option<u64>,
    evicted: u64,
}

impl Handled {
    pub fn new(cap: usize) -> Self {
        Handled {
            ranges: BTreeMap::new(),
            cap: cap.max(1),
            floor_seen: None,
            evicted: 0,
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Records `seq` as handled.
    pub fn insert(&mut self, seq: u64) {
        // The common case: seq extends the last range by one.
        if let Some(mut last) = self.ranges.last_entry() {
            let (start, end) = (*last.key(), *last.get());
            if seq == end.wrapping_add(1) && end != u64::MAX {
                *last.get_mut() = seq;
                self.merge_next(start);
                return;
            }
            if seq >= start && seq <= end {
                return;
            }
        }
        let below = self.ranges.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        let start = match below {
            Some((_, e)) if e >= seq => return,
            Some((s, e)) if e.checked_add(1) == Some(seq) => {
                self.ranges.insert(s, seq);
                s
            }
            _ => {
                self.ranges.insert(seq, seq);
                seq
            }
        };
        self.merge_next(start);
        while self.ranges.len() > self.cap {
            if self.ranges.pop_first().is_some() {
                self.evicted += 1;
            }
        }
    }

    /// Joins the range at `start` with the next one when they touch.
    fn merge_next(&mut self, start: u64) {
        let Some(&end) = self.ranges.get(&start) else {
            return;
        };
        let Some(next) = end.checked_add(1) else {
            return;
        };
        if let Some(next_end) = self.ranges.remove(&next) {
            self.ranges.insert(start, next_end);
        }
    }

    /// The server's ack floor, as reported now: forgets what the previous report covered.
    pub fn floor(&mut self, floor: u64) {
        if let Some(prev) = self.floor_seen {
            let prune = prev.min(floor);
            while let Some(e) = self.ranges.first_entry() {
                let (start, end) = (*e.key(), *e.get());
                if end <= prune {
                    e.remove();
                } else {
                    if start <= prune {
                        e.remove();
                        self.ranges.insert(prune + 1, end);
                    }
                    break;
                }
            }
        }
        self.floor_seen = Some(floor);
    }

    /// Ranges kept.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Ranges forgotten to stay within the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_releases_below_the_cover_and_forgets_the_sequences() {
        let mut h: Held<&str> = Held::default();
        h.hold(1, "a", 0, Some(10));
        h.hold(2, "b", 0, Some(11));
        h.hold(1, "c", 1, None);
        h.hold(5, "d", 0, Some(12));
        assert_eq!(h.len(), 4);
        assert_eq!(h.token_of(0, 11), Some(2));
        assert_eq!(h.token_of(1, 11), None);
        let got: Vec<&str> = h.release_below(2).into_iter().map(|e| e.handle).collect();
        assert_eq!(got, ["a", "c"]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.token_of(0, 10), None);
        let got: Vec<&str> = h.release_below(6).into_iter().map(|e| e.handle).collect();
        assert_eq!(got, ["b", "d"]);
        assert!(h.is_empty());
        h.hold(u64::MAX, "z", 0, None);
        h.hold(3, "y", 0, None);
        assert_eq!(h.take_all().len(), 2);
        assert!(h.is_empty());
    }

    #[test]
    fn renewal_reports_only_what_was_held_a_whole_round() {
        let mut h: Held<u32> = Held::default();
        h.hold(1, 1, 0, None);
        // Taken in this round: not yet.
        assert!(h.renewal().is_empty());
        h.hold(1, 2, 0, None);
        assert_eq!(h.renewal(), [&1]);
        assert_eq!(h.renewal(), [&1, &2]);
    }

    #[test]
    fn handled_merges_runs_and_answers_membership() {
        let mut s = Handled::new(100);
        for q in 1..=1000 {
            s.insert(q);
        }
        assert_eq!(s.ranges(), 1);
        assert!(s.contains(1) && s.contains(1000) && !s.contains(1001) && !s.contains(0));
        // Out of order, with a gap, then the gap filled.
        s.insert(1005);
        s.insert(1003);
        assert_eq!(s.ranges(), 3);
        assert!(!s.contains(1002) && s.contains(1003) && !s.contains(1004));
        s.insert(1002);
        s.insert(1004);
        s.insert(1001);
        assert_eq!(s.ranges(), 1);
        assert!(s.contains(1005));
        s.insert(500);
        assert_eq!(s.ranges(), 1);
    }

    #[test]
    fn handled_prunes_one_floor_report_behind() {
        let mut s = Handled::new(100);
        for q in 1..=100 {
            s.insert(q);
        }
        s.floor(50);
        assert!(s.contains(1), "the first report prunes nothing");
        s.floor(80);
        assert!(
            !s.contains(50) && s.contains(51),
            "pruned up to the previous floor"
        );
        // A server that lost acks on restart reports a lower floor: nothing above it is
        // forgotten.
        s.floor(60);
        assert!(s.contains(61) && s.contains(80));
        s.floor(100);
        assert!(!s.contains(60) && s.contains(61));
        s.floor(100);
        assert_eq!(s.ranges(), 0);
    }

    #[test]
    fn handled_stays_within_its_cap_and_counts() {
        let mut s = Handled::new(3);
        for q in [1, 3, 5, 7, 9] {
            s.insert(q);
        }
        assert_eq!(s.ranges(), 3);
        assert_eq!(s.evicted(), 2);
        assert!(!s.contains(1) && s.contains(5));
    }

    #[test]
    fn handled_matches_a_plain_set_on_random_input() {
        let mut s = Handled::new(usize::MAX);
        let mut oracle = std::collections::BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let q = x % 3000;
            s.insert(q);
            oracle.insert(q);
        }
        for q in 0..3100 {
            assert_eq!(s.contains(q), oracle.contains(&q), "{q}");
        }
        // Ranges are disjoint and not adjacent.
        let v: Vec<(u64, u64)> = s.ranges.iter().map(|(a, b)| (*a, *b)).collect();
        for w in v.windows(2) {
            assert!(w[0].1 + 1 < w[1].0, "{w:?}");
        }
    }
}
