//! Field case 5's question: after how long does something on the path to a server forget
//! idle flows?

use std::{
    cmp::Reverse,
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
};

use super::key::Packed;
use crate::output::detail::TimeoutEstimate;

/// Each server endpoint's idle gaps are kept in two sets, gaps that flows survived and
/// gaps after which they died; the timeout lies between the longest survived and the
/// shortest fatal gap, and is estimated as the latter.
///
/// Two orderings are kept beside the gaps, updated with them in O(log n), so that neither
/// making room nor exporting the best-supported estimates scans the servers: all servers
/// by flows (fewest first, the one to drop), and those with an estimate by flows (most
/// first, the ones to export).
#[derive(Default)]
pub struct TimeoutEstimator {
    servers: HashMap<Packed<SocketAddr>, Gaps>,
    by_flows: BTreeSet<(u64, SocketAddr)>,
    estimated: BTreeSet<(Reverse<u64>, SocketAddr)>,
    /// Changes whenever the estimates do: a reader compares it to tell whether what it
    /// exported is still current.
    generation: u64,
}

#[derive(Default, Clone)]
struct Gaps {
    survived: u64,
    survived_max_ns: u64,
    died_min_ns: Option<u64>,
    flows: u64,
}

impl Gaps {
    fn estimate(&self) -> Option<TimeoutEstimate> {
        let died = self.died_min_ns?;
        (self.survived > 0 && died > self.survived_max_ns).then_some(TimeoutEstimate {
            seconds: died as f64 / 1e9,
            flows: self.flows,
        })
    }
}

/// Server endpoints tracked for timeout estimates; beyond this the quietest are dropped.
const MAX_ESTIMATED_SERVERS: usize = 4096;

impl TimeoutEstimator {
    pub(super) fn survived(&mut self, server: SocketAddr, gap_ns: u64) {
        self.update(server, |g| {
            g.survived += 1;
            g.survived_max_ns = g.survived_max_ns.max(gap_ns);
        });
    }

    pub(super) fn died(&mut self, server: SocketAddr, gap_ns: u64) {
        self.update(server, |g| {
            g.died_min_ns = Some(g.died_min_ns.map_or(gap_ns, |d| d.min(gap_ns)));
        });
    }

    /// Counts one more flow to `server` and applies `f` to its gaps, keeping both
    /// orderings in step.
    fn update(&mut self, server: SocketAddr, f: impl FnOnce(&mut Gaps)) {
        if !self.servers.contains_key(&Packed(server))
            && self.servers.len() >= MAX_ESTIMATED_SERVERS
            && let Some((flows, k)) = self.by_flows.pop_first()
        {
            self.servers.remove(&Packed(k));
            self.estimated.remove(&(Reverse(flows), k));
        }
        let g = self.servers.entry(Packed(server)).or_default();
        let before = (g.flows, g.estimate().is_some());
        f(g);
        g.flows += 1;
        let after = (g.flows, g.estimate().is_some());
        self.by_flows.remove(&(before.0, server));
        self.by_flows.insert((after.0, server));
        if before.1 {
            self.estimated.remove(&(Reverse(before.0), server));
        }
        if after.1 {
            self.estimated.insert((Reverse(after.0), server));
        }
        if before.1 || after.1 {
            self.generation += 1;
        }
    }

    /// The estimate, once flows to the server have both survived idle gaps and died after
    /// a longer one: deaths alone (a server resetting idle clients itself, say) bound
    /// nothing about the path.
    pub fn estimate(&self, server: SocketAddr) -> Option<TimeoutEstimate> {
        self.servers.get(&Packed(server))?.estimate()
    }

    /// Changes whenever any estimate does (see [`TimeoutEstimator::top`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The `n` estimates resting on the most flows (metric labels stay bounded), most
    /// first, ties by address.
    pub fn top(&self, n: usize) -> Vec<(SocketAddr, TimeoutEstimate)> {
        self.estimated
            .iter()
            .take(n)
            .filter_map(|&(_, s)| self.estimate(s).map(|e| (s, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(n: u32) -> SocketAddr {
        let [_, _, a, b] = n.to_be_bytes();
        SocketAddr::from(([192, 0, a, b], 443))
    }

    /// What `top` returned when it sorted every server on each call.
    fn top_by_sorting(t: &TimeoutEstimator, n: usize) -> Vec<(SocketAddr, u64, f64)> {
        let mut all: Vec<(SocketAddr, TimeoutEstimate)> = t
            .servers
            .keys()
            .filter_map(|Packed(s)| t.estimate(*s).map(|e| (*s, e)))
            .collect();
        all.sort_by(|a, b| b.1.flows.cmp(&a.1.flows).then(a.0.cmp(&b.0)));
        all.into_iter()
            .take(n)
            .map(|(s, e)| (s, e.flows, e.seconds))
            .collect()
    }

    #[test]
    fn top_and_room_agree_with_a_full_scan() {
        let mut t = TimeoutEstimator::default();
        // More servers than kept, with uneven evidence; a cheap deterministic mix.
        let mut x: u32 = 12345;
        for i in 0..40_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let s = server((x >> 8) % 6000);
            if i % 3 == 0 {
                t.died(s, 300_000_000_000 + u64::from(x % 1000));
            } else {
                t.survived(s, 30_000_000_000 + u64::from(x % 1000));
            }
            assert_eq!(t.servers.len(), t.by_flows.len());
            assert!(t.servers.len() <= MAX_ESTIMATED_SERVERS);
            if i % 997 == 0 {
                let got: Vec<(SocketAddr, u64, f64)> = t
                    .top(20)
                    .into_iter()
                    .map(|(s, e)| (s, e.flows, e.seconds))
                    .collect();
                assert_eq!(got, top_by_sorting(&t, 20));
                assert_eq!(t.estimated.len(), top_by_sorting(&t, usize::MAX).len());
            }
        }
        let expected: BTreeSet<(u64, SocketAddr)> =
            t.servers.iter().map(|(s, g)| (g.flows, s.0)).collect();
        assert!(
            t.by_flows == expected,
            "the room ordering drifted from the gaps"
        );
    }

    #[test]
    fn generation_moves_only_with_the_estimates() {
        let mut t = TimeoutEstimator::default();
        let g0 = t.generation();
        t.survived(server(1), 30);
        assert_eq!(t.generation(), g0, "no estimate yet");
        t.died(server(1), 300);
        assert_ne!(t.generation(), g0, "an estimate appeared");
        let g1 = t.generation();
        t.died(server(2), 300);
        assert_eq!(t.generation(), g1, "deaths alone bound nothing");
        t.survived(server(1), 30);
        assert_ne!(t.generation(), g1, "an estimate's flows changed");
        assert_eq!(t.top(5).len(), 1);
    }
}
