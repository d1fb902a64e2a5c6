//! A second election timer beside openraft's, for a split vote openraft 0.9 can repeat for a
//! long time.
//!
//! openraft 0.9 draws a node's election timeout once per process and checks it on a tick every
//! 1.5 heartbeats, so each node campaigns a fixed whole number of its own ticks after its last
//! campaign. Two surviving voters of three that drew timeouts worth the same number of ticks,
//! and first campaigned within a round trip of each other, split the vote (each voted for
//! itself) and then campaign again in the same lockstep, round after round, until scheduling
//! jitter drifts their ticks apart: seconds to minutes without a leader. Fixed upstream on the
//! 0.10 line only (databendlabs/openraft#1838, a fresh random timeout per campaign).
//!
//! The watchdog gives every stretch without a leader a fresh random campaign time: a voter that
//! has heard from no leader for longer than openraft's own timer ever needs ([`quiet`]) starts
//! an election itself after a random delay, and again after each further quiet spell. Raft's
//! votes keep this safe whatever the timing; it only adds campaigns where openraft's timer
//! already campaigns (a node cut off from a live leader does so on its own anyway).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::Raft;

/// When this node last heard from a leader (an AppendEntries it accepted or answered with a
/// conflict, heartbeats included).
pub(crate) struct Contact {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
}

impl Contact {
    pub(crate) fn new() -> Contact {
        Contact {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn heard(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// Longer than openraft's own timer takes to campaign after the last word from a leader: the
/// leader's lease (the maximum timeout) plus this node's timeout (at most the maximum).
pub(crate) fn quiet(election_timeout: (Duration, Duration)) -> Duration {
    election_timeout.1 * 2
}

/// A campaign time after a quiet spell: `quiet` plus a random part of the maximum timeout,
/// drawn anew each time (what openraft 0.9 does not do).
fn next_campaign(from: Instant, election_timeout: (Duration, Duration)) -> Instant {
    let max_ms = election_timeout.1.as_millis().max(1) as u64;
    let mut b = [0u8; 8];
    // Without randomness the delay is the longest: still a campaign, just not desynchronised.
    let extra = getrandom::fill(&mut b).map_or(max_ms - 1, |()| u64::from_le_bytes(b) % max_ms);
    from + quiet(election_timeout) + Duration::from_millis(extra)
}

/// Decides when a voter starts an election itself; the node's ticker asks it on every tick.
pub(crate) struct Watchdog {
    election_timeout: (Duration, Duration),
    /// When to campaign if the leaderless spell lasts; none while a leader is heard.
    due: Option<Instant>,
}

impl Watchdog {
    pub(crate) fn new(election_timeout: (Duration, Duration)) -> Watchdog {
        Watchdog {
            election_timeout,
            due: None,
        }
    }

    /// Whether to start an election `now`, given whether this voter is without a leader (see
    /// [`leaderless`]). Yes once per quiet spell, each time at a freshly drawn time.
    pub(crate) fn due(&mut self, leaderless: bool, now: Instant) -> bool {
        if !leaderless {
            self.due = None;
            return false;
        }
        let t = self.election_timeout;
        let at = *self.due.get_or_insert_with(|| next_campaign(now, t));
        if now < at {
            return false;
        }
        self.due = Some(next_campaign(now, t));
        true
    }
}

/// Whether this node is a voter that knows no leader, or has heard from none for a quiet spell.
pub(crate) fn leaderless(
    raft: &Raft,
    id: u64,
    contact: &Contact,
    election_timeout: (Duration, Duration),
) -> bool {
    let m = raft.metrics();
    let m = m.borrow_watched();
    m.membership_config
        .membership()
        .voter_ids()
        .any(|v| v == id)
        && m.state != ServerState::Leader
        && (m.current_leader.is_none() || contact.silent_for() > quiet(election_timeout))
}

/// Starts an election (the watchdog said it is due).
pub(crate) async fn campaign(raft: &Raft, contact: &Contact) {
    tracing::warn!(
        silent_ms = contact.silent_for().as_millis() as u64,
        "no leader for a long while: starting an election at a fresh random time"
    );
    metrics::counter!("micro_watchdog_elections_total").increment(1);
    if let Err(e) = raft.trigger().elect(false).await {
        tracing::error!("cannot start an election: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaigns_come_after_a_quiet_spell_at_varying_times() {
        let t = (Duration::from_millis(800), Duration::from_millis(1600));
        let from = Instant::now();
        let times: std::collections::BTreeSet<Duration> =
            (0..64).map(|_| next_campaign(from, t) - from).collect();
        assert!(times.iter().all(|d| *d >= quiet(t) && *d < quiet(t) + t.1));
        // Fresh draws: 64 draws over 1,600 ms agree on few values, if any.
        assert!(times.len() > 40, "{times:?}");
    }

    #[test]
    fn the_watchdog_campaigns_once_per_quiet_spell_and_never_with_a_leader() {
        let t = (Duration::from_millis(800), Duration::from_millis(1600));
        let mut w = Watchdog::new(t);
        let t0 = Instant::now();
        assert!(!w.due(false, t0));
        // Leaderless from t0: nothing before a quiet spell has passed...
        assert!(!w.due(true, t0));
        assert!(!w.due(true, t0 + quiet(t) - Duration::from_millis(1)));
        // ...one campaign once the drawn time has passed, then none until the next spell.
        let late = t0 + quiet(t) + t.1;
        assert!(w.due(true, late));
        assert!(!w.due(true, late + Duration::from_millis(1)));
        assert!(w.due(true, late + quiet(t) + t.1));
        // A leader heard resets it: a new spell starts from scratch.
        assert!(!w.due(false, late + quiet(t) * 3));
        assert!(!w.due(true, late + quiet(t) * 3));
    }

    #[test]
    fn contact_counts_silence_from_the_last_word() {
        let c = Contact::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.silent_for() >= Duration::from_millis(30));
        let before = Instant::now();
        c.heard();
        // Kept in whole milliseconds: at most one more than the time since.
        assert!(c.silent_for() <= before.elapsed() + Duration::from_millis(1));
    }
}
