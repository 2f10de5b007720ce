//! The session table: sessions by key, and in order of their last event, so that the
//! quietest session (the one to judge when the table is full, and the first to pass the
//! correlation window) is always at the front, without a scan.
//!
//! Sessions live in slots of one vector, linked into a list by slot index, oldest last
//! event first. An event moves its session to the place its new last event gives it,
//! searched from the back: events come in time order (the ring buffer delivers them as
//! the program saw them; replay feeds packets in capture order), so the place is the back
//! and the move costs O(1); an event that arrives late walks back past the sessions it is
//! late for, and only past those.

use std::collections::{HashMap, hash_map::Entry};

use super::{SessionKey, key::Packed, session::Session};

const NIL: u32 = u32::MAX;

struct Slot {
    key: SessionKey,
    session: Session,
}

/// A slot's place in the list, kept apart from the slots so that moving a session touches
/// a few small entries, not its neighbours' large ones.
#[derive(Clone, Copy)]
struct Link {
    /// Neighbours in last-event order (NIL at either end); a free slot's `next` links the
    /// free list.
    prev: u32,
    next: u32,
    /// The session's last event, as of its last update.
    last_ns: u64,
}

#[derive(Default)]
pub(super) struct Table {
    index: HashMap<Packed<SessionKey>, u32>,
    slots: Vec<Slot>,
    links: Vec<Link>,
    /// The first free slot, linked through `next`.
    free: Option<u32>,
    /// The quietest session, and the latest.
    head: Option<u32>,
    tail: Option<u32>,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.index
            .get(&Packed(*key))
            .map(|&i| &self.slots[i as usize].session)
    }

    pub(super) fn remove(&mut self, key: &SessionKey) -> Option<Session> {
        let i = self.index.remove(&Packed(*key))?;
        self.unlink(i);
        Some(self.release(i))
    }

    /// Applies `f` to the session under `key` (made by `new` if there is none), then puts
    /// the session where its last event now places it.
    pub(super) fn update<R>(
        &mut self,
        key: SessionKey,
        new: impl FnOnce() -> Session,
        f: impl FnOnce(&mut Session) -> R,
    ) -> R {
        let i = match self.index.entry(Packed(key)) {
            Entry::Occupied(o) => {
                let i = *o.get();
                self.unlink(i);
                i
            }
            Entry::Vacant(v) => *v.insert(allocate(
                &mut self.slots,
                &mut self.links,
                &mut self.free,
                key,
                new(),
            )),
        };
        let r = f(&mut self.slots[i as usize].session);
        self.links[i as usize].last_ns = self.slots[i as usize].session.last_ns;
        self.link_in_order(i);
        r
    }

    /// The oldest last event of any session here.
    pub(super) fn quietest_last_ns(&self) -> Option<u64> {
        self.head.map(|i| self.links[i as usize].last_ns)
    }

    /// Takes the session with the oldest last event, if `pick` accepts its last event.
    pub(super) fn pop_quietest_if(
        &mut self,
        pick: impl FnOnce(u64) -> bool,
    ) -> Option<(SessionKey, Session)> {
        let i = self.head?;
        if !pick(self.links[i as usize].last_ns) {
            return None;
        }
        let key = self.slots[i as usize].key;
        self.index.remove(&Packed(key));
        self.unlink(i);
        Some((key, self.release(i)))
    }

    /// Takes every session, in no particular order.
    pub(super) fn drain(&mut self) -> Vec<(SessionKey, Session)> {
        let mut all = Vec::with_capacity(self.len());
        while let Some(s) = self.pop_quietest_if(|_| true) {
            all.push(s);
        }
        all
    }

    /// Frees slot `i` (already unlinked), keeping its allocation for the next session.
    fn release(&mut self, i: u32) -> Session {
        self.links[i as usize] = Link {
            prev: NIL,
            next: self.free.unwrap_or(NIL),
            last_ns: 0,
        };
        self.free = Some(i);
        std::mem::take(&mut self.slots[i as usize].session)
    }

    fn unlink(&mut self, i: u32) {
        let Link { prev, next, .. } = self.links[i as usize];
        match prev {
            NIL => self.head = (next != NIL).then_some(next),
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.tail = (prev != NIL).then_some(prev),
            n => self.links[n as usize].prev = prev,
        }
        let l = &mut self.links[i as usize];
        l.prev = NIL;
        l.next = NIL;
    }

    /// Links slot `i` (unlinked) after the last session whose last event is no later than
    /// its own, searching from the back.
    fn link_in_order(&mut self, i: u32) {
        let last = self.links[i as usize].last_ns;
        let mut after = self.tail;
        while let Some(a) = after {
            let l = &self.links[a as usize];
            if l.last_ns <= last {
                break;
            }
            after = (l.prev != NIL).then_some(l.prev);
        }
        let next = match after {
            Some(a) => std::mem::replace(&mut self.links[a as usize].next, i),
            None => self.head.replace(i).unwrap_or(NIL),
        };
        match next {
            NIL => self.tail = Some(i),
            n => self.links[n as usize].prev = i,
        }
        let l = &mut self.links[i as usize];
        l.prev = after.unwrap_or(NIL);
        l.next = next;
    }
}

/// A slot for a new session: a free one if any, else a new one at the end.
fn allocate(
    slots: &mut Vec<Slot>,
    links: &mut Vec<Link>,
    free: &mut Option<u32>,
    key: SessionKey,
    session: Session,
) -> u32 {
    let link = Link {
        prev: NIL,
        next: NIL,
        last_ns: 0,
    };
    match *free {
        Some(i) => {
            *free = (links[i as usize].next != NIL).then_some(links[i as usize].next);
            slots[i as usize] = Slot { key, session };
            links[i as usize] = link;
            i
        }
        None => {
            let i = u32::try_from(slots.len()).expect("fewer than 2^32 sessions");
            slots.push(Slot { key, session });
            links.push(link);
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn key(n: u16) -> SessionKey {
        (
            SocketAddr::from(([10, 0, 0, 1], 40_000 + n)),
            SocketAddr::from(([10, 0, 0, 2], 443)),
        )
    }

    fn touch(t: &mut Table, n: u16, ts: u64) {
        t.update(key(n), Session::default, |s| s.last_ns = s.last_ns.max(ts));
    }

    /// Keys in last-event order, walked both ways (the links agree).
    fn order(t: &Table) -> Vec<u16> {
        let mut fwd = Vec::new();
        let mut at = t.head;
        while let Some(i) = at {
            fwd.push(t.slots[i as usize].key.0.port() - 40_000);
            let l = &t.links[i as usize];
            at = (l.next != NIL).then_some(l.next);
        }
        let mut back = Vec::new();
        let mut at = t.tail;
        while let Some(i) = at {
            back.push(t.slots[i as usize].key.0.port() - 40_000);
            let l = &t.links[i as usize];
            at = (l.prev != NIL).then_some(l.prev);
        }
        back.reverse();
        assert_eq!(fwd, back, "forward and backward links disagree");
        assert_eq!(fwd.len(), t.len());
        fwd
    }

    #[test]
    fn sessions_stay_in_last_event_order_whatever_order_events_come_in() {
        let mut t = Table::default();
        touch(&mut t, 1, 10);
        touch(&mut t, 2, 20);
        touch(&mut t, 3, 30);
        assert_eq!(order(&t), [1, 2, 3]);
        // The oldest gets a new event: it goes to the back.
        touch(&mut t, 1, 40);
        assert_eq!(order(&t), [2, 3, 1]);
        // A late event for a new session goes where its time places it.
        touch(&mut t, 4, 25);
        assert_eq!(order(&t), [2, 4, 3, 1]);
        touch(&mut t, 5, 5);
        assert_eq!(order(&t), [5, 2, 4, 3, 1]);
        // An event older than the session's last leaves its place unchanged.
        touch(&mut t, 3, 1);
        assert_eq!(order(&t), [5, 2, 4, 3, 1]);
        // Equal times keep arrival order.
        touch(&mut t, 6, 40);
        assert_eq!(order(&t), [5, 2, 4, 3, 1, 6]);
    }

    #[test]
    fn quietest_first_and_slots_reused() {
        let mut t = Table::default();
        for n in 0..100 {
            touch(&mut t, n, 1000 - u64::from(n));
        }
        assert_eq!(order(&t)[..3], [99, 98, 97]);
        assert!(t.remove(&key(50)).is_some());
        assert!(t.remove(&key(50)).is_none());
        assert!(t.get(&key(50)).is_none());
        let popped: Vec<u64> =
            std::iter::from_fn(|| t.pop_quietest_if(|last| last < 910).map(|(_, s)| s.last_ns))
                .collect();
        assert_eq!(popped, (901..910).collect::<Vec<u64>>());
        assert_eq!(t.len(), 90);
        let slots = t.slots.len();
        for n in 200..210 {
            touch(&mut t, n, 2000);
        }
        assert_eq!(t.slots.len(), slots, "freed slots are used again");
        assert_eq!(order(&t).len(), 100);
        assert_eq!(t.drain().len(), 100);
        assert_eq!(t.len(), 0);
        assert_eq!((t.head, t.tail), (None, None));
    }
}
