//! Settlement: a producer (a consumer publishing back, e.g. reduce) learns when what it
//! queued was confirmed by the bus, so it acknowledges its own input only then.
//!
//! A [`Settlement`] is opened for a group of messages; each message carries a [`Ticket`]
//! ([`Settlement::ticket`]). The output's task marks a ticket published when the bus
//! confirmed the message (the same confirmation that counts `tapbus_published_total`);
//! a ticket dropped without that (the message was dropped for any reason: too large,
//! refused, output shut down, queue closed) counts as dropped. [`Settlement::settled`]
//! waits until every ticket of the group is one or the other.
//!
//! The broker does not use tickets (`Message::settle` is `None`): nothing changes on its
//! hot path but an `Option` check where a message is confirmed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Group {
    /// Tickets not yet settled, plus one while the group is still open.
    left: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    done: Notify,
}

impl Group {
    fn settle_one(&self, published: bool) {
        if published {
            self.published.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.release();
    }

    fn release(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Wakes every `Notified` made before this, polled or not.
            self.done.notify_waiters();
        }
    }
}

/// A group of messages whose settlement is awaited together.
#[derive(Debug)]
pub struct Settlement {
    group: Arc<Group>,
    sealed: bool,
}

/// What became of a group's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub published: u64,
    pub dropped: u64,
}

impl Settled {
    /// Every message was confirmed.
    pub fn all_published(&self) -> bool {
        self.dropped == 0
    }
}

impl Default for Settlement {
    fn default() -> Self {
        Self::new()
    }
}

impl Settlement {
    pub fn new() -> Self {
        let group = Arc::new(Group::default());
        // The group's own hold, released by `settled`.
        group.left.store(1, Ordering::Relaxed);
        Settlement {
            group,
            sealed: false,
        }
    }

    /// A ticket for one more message of the group.
    pub fn ticket(&self) -> Ticket {
        self.group.left.fetch_add(1, Ordering::AcqRel);
        Ticket(Arc::new(TicketInner {
            group: self.group.clone(),
            settled: AtomicBool::new(false),
        }))
    }

    /// Waits until every ticket handed out was published or dropped. Cancel-safe.
    pub async fn settled(&mut self) -> Settled {
        if !self.sealed {
            self.sealed = true;
            self.group.release();
        }
        loop {
            let notified = self.group.done.notified();
            if self.group.left.load(Ordering::Acquire) == 0 {
                return Settled {
                    published: self.group.published.load(Ordering::Relaxed),
                    dropped: self.group.dropped.load(Ordering::Relaxed),
                };
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct TicketInner {
    group: Arc<Group>,
    settled: AtomicBool,
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.group.settle_one(false);
        }
    }
}

/// One message's share of a [`Settlement`]. Cloning shares it (a message held for a
/// re-send and the copy on the wire are one message): it settles once, published when
/// any holder says so, dropped when the last holder lets go without that.
#[derive(Debug, Clone)]
pub struct Ticket(Arc<TicketInner>);

impl Ticket {
    /// The bus confirmed the message.
    pub fn published(&self) {
        if !self.0.settled.swap(true, Ordering::AcqRel) {
            self.0.group.settle_one(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn published_dropped_and_clones() {
        let mut s = Settlement::new();
        let a = s.ticket();
        let b = s.ticket();
        let c = s.ticket();
        let c2 = c.clone();
        a.published();
        a.published(); // once only
        drop(a);
        drop(b); // never confirmed: dropped
        drop(c); // a clone still holds it
        let waiter = tokio::spawn(async move { s.settled().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c2.published();
        drop(c2);
        let got = waiter.await.expect("join");
        assert_eq!(
            got,
            Settled {
                published: 2,
                dropped: 1
            }
        );
        assert!(!got.all_published());
    }

    #[tokio::test]
    async fn an_empty_group_is_settled_at_once_and_early_settling_waits_for_the_seal() {
        let mut s = Settlement::new();
        assert_eq!(
            s.settled().await,
            Settled {
                published: 0,
                dropped: 0
            }
        );
        let mut s = Settlement::new();
        let t = s.ticket();
        t.published();
        drop(t);
        // All tickets settled before `settled` was called: still counted.
        assert_eq!(s.settled().await.published, 1);
    }
}
