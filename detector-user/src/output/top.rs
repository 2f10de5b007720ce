//! Who fails most: the server endpoints (with their SNI when known) with the most diagnoses
//! of each kind over a trailing window, for a dashboard table.
//!
//! Bounded whatever the traffic: at most [`TRACKED`] endpoints are counted (when a new one
//! comes to a full table, the quarter with the fewest diagnoses in the window go to their
//! kinds' "other" counts), and a view holds at most `k` endpoints per kind plus one "other" row per
//! kind. Counts live in [`SLOTS`] slots of the window, so a view only ever counts the
//! trailing window and endpoints quiet for a whole window disappear from it.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use time::OffsetDateTime;

use super::diagnosis::Kind;

/// Endpoints counted at once.
pub const TRACKED: usize = 1024;
/// Endpoints left when room is made in a full table.
const KEPT_AFTER_ROOM: usize = TRACKED * 3 / 4;
/// Slots a window is cut into: a count leaves the view at most a slot after the window.
pub const SLOTS: usize = 12;

/// Diagnoses per slot of the window, each slot tagged with its number since the epoch so a
/// stale one reads as empty.
#[derive(Clone, Debug, Default)]
struct Slots {
    counts: [(i64, u64); SLOTS],
}

impl Slots {
    fn add(&mut self, slot: i64, n: u64) {
        let cell = &mut self.counts[slot.rem_euclid(SLOTS as i64) as usize];
        if cell.0 != slot {
            *cell = (slot, 0);
        }
        cell.1 += n;
    }

    /// Diagnoses in the window that ends with slot `now`.
    fn total(&self, now: i64) -> u64 {
        self.counts
            .iter()
            .filter(|(s, _)| *s > now - SLOTS as i64 && *s <= now)
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds another's counts still in the window ending at `now`.
    fn absorb(&mut self, other: &Slots, now: i64) {
        for &(s, n) in &other.counts {
            if s > now - SLOTS as i64 && s <= now && n > 0 {
                self.add(s, n);
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Endpoint {
    kind: Kind,
    server: SocketAddr,
    sni: Option<String>,
}

/// One row of a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub kind: Kind,
    /// `None` for the kind's "other" row.
    pub server: Option<SocketAddr>,
    pub sni: Option<String>,
    pub diagnoses: u64,
}

pub struct TopServers {
    k: usize,
    slot_len: i128,
    counts: HashMap<Endpoint, Slots>,
    other: HashMap<Kind, Slots>,
}

impl TopServers {
    /// The `k` endpoints with most diagnoses per kind over the trailing `window`.
    pub fn new(k: usize, window: Duration) -> TopServers {
        let slot_len = (window.as_nanos() / SLOTS as u128).max(1) as i128;
        TopServers {
            k,
            slot_len,
            counts: HashMap::new(),
            other: HashMap::new(),
        }
    }

    fn slot(&self, at: OffsetDateTime) -> i64 {
        at.unix_timestamp_nanos().div_euclid(self.slot_len) as i64
    }

    pub fn record(
        &mut self,
        kind: Kind,
        server: SocketAddr,
        sni: Option<&str>,
        at: OffsetDateTime,
    ) {
        let slot = self.slot(at);
        let key = Endpoint {
            kind,
            server,
            sni: sni.map(str::to_string),
        };
        if !self.counts.contains_key(&key) && self.counts.len() >= TRACKED {
            self.make_room(slot);
        }
        self.counts.entry(key).or_default().add(slot, 1);
    }

    /// Forgets endpoints with nothing in the window; if that leaves more than
    /// [`KEPT_AFTER_ROOM`], moves those with the fewest diagnoses into their kinds'
    /// "other" counts down to that many. Room is made for a batch of new endpoints at a
    /// time, so the walk over the table this takes is paid once per batch, not for every
    /// new endpoint of a flood.
    fn make_room(&mut self, now: i64) {
        self.counts.retain(|_, s| s.total(now) > 0);
        let excess = self.counts.len().saturating_sub(KEPT_AFTER_ROOM);
        if excess == 0 {
            return;
        }
        let mut by_total: Vec<(u64, &Endpoint)> =
            self.counts.iter().map(|(e, s)| (s.total(now), e)).collect();
        by_total.select_nth_unstable_by_key(excess - 1, |(n, _)| *n);
        let smallest: Vec<Endpoint> = by_total[..excess]
            .iter()
            .map(|(_, e)| (*e).clone())
            .collect();
        for e in smallest {
            let slots = self.counts.remove(&e).expect("just found");
            self.other.entry(e.kind).or_default().absorb(&slots, now);
        }
    }

    /// The view at `now`: per kind, the `k` endpoints with most diagnoses in the window
    /// (ties broken by address, so the view is stable), then an "other" row with the rest
    /// when there is any. Endpoints quiet for the whole window are forgotten.
    pub fn view(&mut self, now: OffsetDateTime) -> Vec<Row> {
        let now = self.slot(now);
        self.counts.retain(|_, s| s.total(now) > 0);
        self.other.retain(|_, s| s.total(now) > 0);
        let mut rows = Vec::new();
        for kind in Kind::ALL {
            let mut of_kind: Vec<(&Endpoint, u64)> = self
                .counts
                .iter()
                .filter(|(e, _)| e.kind == kind)
                .map(|(e, s)| (e, s.total(now)))
                .collect();
            of_kind.sort_by(|a, b| {
                b.1.cmp(&a.1)
                    .then(a.0.server.cmp(&b.0.server))
                    .then(a.0.sni.cmp(&b.0.sni))
            });
            let rest: u64 = of_kind.iter().skip(self.k).map(|(_, n)| n).sum::<u64>()
                + self.other.get(&kind).map_or(0, |s| s.total(now));
            rows.extend(of_kind.iter().take(self.k).map(|(e, n)| Row {
                kind,
                server: Some(e.server),
                sni: e.sni.clone(),
                diagnoses: *n,
            }));
            if rest > 0 {
                rows.push(Row {
                    kind,
                    server: None,
                    sni: None,
                    diagnoses: rest,
                });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    fn server(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, (n % 250) as u8 + 1], 443 + n / 250))
    }

    #[test]
    fn top_k_per_kind_then_the_rest_as_other() {
        let mut t = TopServers::new(2, HOUR);
        for (n, count) in [(1, 5), (2, 3), (3, 1), (4, 1)] {
            for _ in 0..count {
                t.record(Kind::FatalAlert, server(n), Some("a.example"), at(0));
            }
        }
        t.record(Kind::IdleClose, server(9), None, at(10));
        let rows = t.view(at(20));
        let summary: Vec<(Kind, Option<SocketAddr>, u64)> = rows
            .iter()
            .map(|r| (r.kind, r.server, r.diagnoses))
            .collect();
        let mut expected = vec![
            (Kind::FatalAlert, Some(server(1)), 5),
            (Kind::FatalAlert, Some(server(2)), 3),
            (Kind::FatalAlert, None, 2),
            (Kind::IdleClose, Some(server(9)), 1),
        ];
        // Kinds come in Kind::ALL order.
        let pos = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap();
        expected.sort_by_key(|(k, _, _)| pos(*k));
        assert_eq!(summary, expected);
        assert_eq!(rows[0].sni.as_deref(), Some("a.example"));
    }

    #[test]
    fn counts_leave_the_view_after_the_window() {
        let mut t = TopServers::new(10, HOUR);
        t.record(Kind::FatalAlert, server(1), None, at(0));
        t.record(Kind::FatalAlert, server(1), None, at(1800));
        assert_eq!(t.view(at(3000))[0].diagnoses, 2);
        // The first has left the window, the second not yet.
        assert_eq!(t.view(at(3600 + 400))[0].diagnoses, 1);
        assert!(
            t.view(at(1800 + 3600 + 400)).is_empty(),
            "quiet endpoints disappear"
        );
        assert!(t.counts.is_empty());
    }

    #[test]
    fn a_flood_of_endpoints_stays_bounded_and_counted() {
        let mut t = TopServers::new(3, HOUR);
        // The heavy hitter first, then more distinct endpoints than the table holds.
        for _ in 0..50 {
            t.record(Kind::HandshakeReset, server(0), None, at(0));
        }
        let flood = TRACKED as u16 * 3;
        for n in 1..=flood {
            t.record(Kind::HandshakeReset, server(n), None, at(1));
        }
        assert!(t.counts.len() <= TRACKED);
        let rows = t.view(at(2));
        assert_eq!(rows.len(), 4, "three endpoints and other");
        assert_eq!((rows[0].server, rows[0].diagnoses), (Some(server(0)), 50));
        let total: u64 = rows.iter().map(|r| r.diagnoses).sum();
        assert_eq!(total, 50 + u64::from(flood), "nothing lost, only merged");
        assert_eq!(rows[3].server, None);
    }
}
