//! The slow timer of §5.2.2: three hierarchical timing wheels of 1024, 256
//! and 256 slots with one-second ticks, instead of a timer per connection.
//!
//! Level 0 holds what expires within 1,024 ticks (so an ESTABLISHED entry
//! with the 15-minute default goes straight to level 0), level 1 the next
//! 256 × 1,024 ticks, level 2 the next 256 × 256 × 1,024 (≈ 2 years; longer
//! is clamped). When level 0 wraps, one level-1 slot is cascaded down, and
//! likewise from level 2. Entries are identified by `u32` ids (indices of
//! the connection table's entries) and doubly linked through fields the
//! owner keeps ([`Links`]: in the table, inside each entry), so insert,
//! remove and expiry are O(1) per entry and no allocation happens per timer.

/// "No id" / "not scheduled".
pub const NONE: u32 = u32::MAX;
const L0_BITS: u32 = 10;
const L1_BITS: u32 = 8;
const L2_BITS: u32 = 8;
const L0: u64 = 1 << L0_BITS;
const L1: u64 = 1 << L1_BITS;
const L2: u64 = 1 << L2_BITS;
const SPAN1: u64 = L0 * L1;
const SPAN2: u64 = L0 * L1 * L2;
/// Number of slots over the three levels (fits a `u16`).
pub const SLOTS: u32 = (L0 + L1 + L2) as u32;

/// Where the wheel keeps its per-id links and reads each id's due tick.
///
/// The connection table implements it on its entries themselves, so linking
/// and expiring one connection touches the one cache line that holds it
/// rather than four per-id arrays.
pub trait Links {
    fn next(&self, id: u32) -> u32;
    fn prev(&self, id: u32) -> u32;
    /// The slot `id` is linked in, or [`NONE`].
    fn slot(&self, id: u32) -> u32;
    fn set_next(&mut self, id: u32, next: u32);
    fn set_prev(&mut self, id: u32, prev: u32);
    fn set_links(&mut self, id: u32, next: u32, prev: u32, slot: u32);
    /// The tick `id` is due at, kept by the owner. The owner may move it
    /// later without telling the wheel (the id fires at the old tick and is
    /// rescheduled); moving it earlier requires [`TimingWheel::schedule`].
    fn when(&self, id: u32) -> u64;
    /// A hint: `id`'s links are about to be read.
    fn prefetch(&self, _id: u32) {}
}

pub struct TimingWheel {
    now: u64,
    heads: Vec<u32>, // L0 + L1 + L2 list heads
    len: usize,
}

impl TimingWheel {
    /// A wheel whose clock reads `now`.
    pub fn new(now: u64) -> Self {
        TimingWheel {
            now,
            heads: vec![NONE; SLOTS as usize],
            len: 0,
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of scheduled ids.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot_for(&self, when: u64) -> u32 {
        let delta = when.saturating_sub(self.now);
        if delta < L0 {
            (when & (L0 - 1)) as u32
        } else if delta < SPAN1 {
            (L0 + ((when >> L0_BITS) & (L1 - 1))) as u32
        } else {
            let w = when.min(self.now + SPAN2 - 1);
            (L0 + L1 + ((w >> (L0_BITS + L1_BITS)) & (L2 - 1))) as u32
        }
    }

    /// Schedules `id` at its tick, `links.when(id)` (a past tick fires on
    /// the next tick). Re-scheduling an already scheduled id moves it.
    pub fn schedule<L: Links>(&mut self, links: &mut L, id: u32) {
        self.cancel(links, id);
        let when = links.when(id).max(self.now + 1);
        let s = self.slot_for(when);
        self.link(links, id, s);
        self.len += 1;
    }

    fn link<L: Links>(&mut self, links: &mut L, id: u32, s: u32) {
        let head = self.heads[s as usize];
        links.set_links(id, head, NONE, s);
        if head != NONE {
            links.set_prev(head, id);
        }
        self.heads[s as usize] = id;
    }

    /// Removes `id` from the wheel; returns whether it was scheduled.
    pub fn cancel<L: Links>(&mut self, links: &mut L, id: u32) -> bool {
        let s = links.slot(id);
        if s == NONE {
            return false;
        }
        let (n, p) = (links.next(id), links.prev(id));
        if p != NONE {
            links.set_next(p, n);
        } else {
            self.heads[s as usize] = n;
        }
        if n != NONE {
            links.set_prev(n, p);
        }
        links.set_links(id, NONE, NONE, NONE);
        self.len -= 1;
        true
    }

    /// Unlinks the whole list of slot `s` and returns its first id (the
    /// rest follow through `next`, still readable until each is relinked).
    fn take_slot(&mut self, s: u32) -> u32 {
        std::mem::replace(&mut self.heads[s as usize], NONE)
    }

    /// Advances the clock to `now`, calling `fire` for every id due at or
    /// before it (each id once; it is no longer scheduled when called).
    /// `fire` returns true to keep the id (it is rescheduled at its
    /// `when`, which the owner has moved on) or false when the owner has
    /// released it.
    pub fn advance<L: Links>(
        &mut self,
        links: &mut L,
        now: u64,
        mut fire: impl FnMut(&mut L, u32) -> bool,
    ) {
        while self.now < now {
            if self.len == 0 {
                self.now = now;
                return;
            }
            self.now += 1;
            let t = self.now;
            if t & (L0 - 1) == 0 {
                if (t >> L0_BITS) & (L1 - 1) == 0 {
                    let s = (L0 + L1 + ((t >> (L0_BITS + L1_BITS)) & (L2 - 1))) as u32;
                    self.cascade(links, s);
                }
                let s = (L0 + ((t >> L0_BITS) & (L1 - 1))) as u32;
                self.cascade(links, s);
            }
            let mut cur = self.take_slot((t & (L0 - 1)) as u32);
            while cur != NONE {
                let id = cur;
                cur = links.next(id);
                links.prefetch(cur);
                links.set_links(id, NONE, NONE, NONE);
                self.len -= 1;
                // A clamped far-future id is not yet due.
                if links.when(id) > t || fire(links, id) {
                    self.schedule(links, id);
                }
            }
        }
    }

    fn cascade<L: Links>(&mut self, links: &mut L, s: u32) {
        let mut cur = self.take_slot(s);
        while cur != NONE {
            let id = cur;
            cur = links.next(id);
            let w = links.when(id).max(self.now);
            let slot = if w == self.now {
                (w & (L0 - 1)) as u32
            } else {
                self.slot_for(w)
            };
            self.link(links, id, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Links in per-id arrays, for testing the wheel alone.
    #[derive(Default)]
    struct Arrays {
        next: Vec<u32>,
        prev: Vec<u32>,
        slot: Vec<u32>,
        when: Vec<u64>,
    }

    impl Arrays {
        fn at(&mut self, id: u32, when: u64) -> u32 {
            let need = id as usize + 1;
            if self.next.len() < need {
                self.next.resize(need, NONE);
                self.prev.resize(need, NONE);
                self.slot.resize(need, NONE);
                self.when.resize(need, 0);
            }
            self.when[id as usize] = when;
            id
        }
    }

    impl Links for Arrays {
        fn next(&self, id: u32) -> u32 {
            self.next[id as usize]
        }
        fn prev(&self, id: u32) -> u32 {
            self.prev[id as usize]
        }
        fn slot(&self, id: u32) -> u32 {
            self.slot[id as usize]
        }
        fn set_next(&mut self, id: u32, next: u32) {
            self.next[id as usize] = next
        }
        fn set_prev(&mut self, id: u32, prev: u32) {
            self.prev[id as usize] = prev
        }
        fn set_links(&mut self, id: u32, next: u32, prev: u32, slot: u32) {
            let i = id as usize;
            (self.next[i], self.prev[i], self.slot[i]) = (next, prev, slot);
        }
        fn when(&self, id: u32) -> u64 {
            self.when[id as usize]
        }
    }

    fn run(w: &mut TimingWheel, l: &mut Arrays, to: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while w.now() < to {
            let t = w.now() + 1;
            w.advance(l, t, |_, id| {
                out.push((t, id));
                false
            });
        }
        out
    }

    #[test]
    fn fires_at_exact_tick_on_every_level() {
        let (mut w, mut l) = (TimingWheel::new(0), Arrays::default());
        let whens = [
            1u64, 5, 1023, 1024, 1025, 2048, 60, 900, 300_000, 262_144, 262_145,
        ];
        for (i, &t) in whens.iter().enumerate() {
            let id = l.at(i as u32, t);
            w.schedule(&mut l, id);
        }
        assert_eq!(w.len(), whens.len());
        let fired = run(&mut w, &mut l, 300_001);
        assert_eq!(fired.len(), whens.len());
        for (t, id) in fired {
            assert_eq!(t, whens[id as usize], "id {id}");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn starting_mid_wheel_and_cancel() {
        let (mut w, mut l) = (TimingWheel::new(1000), Arrays::default());
        for (id, t) in [(1, 1030), (2, 6000), (3, 1070)] {
            l.at(id, t);
            w.schedule(&mut l, id);
        }
        assert!(w.cancel(&mut l, 3));
        assert!(!w.cancel(&mut l, 3));
        l.at(1, 1040);
        w.schedule(&mut l, 1); // reschedule moves it
        let fired = run(&mut w, &mut l, 7000);
        assert_eq!(fired, vec![(1040, 1), (6000, 2)]);
    }

    #[test]
    fn far_future_is_clamped_not_lost() {
        let (mut w, mut l) = (TimingWheel::new(0), Arrays::default());
        l.at(7, SPAN2 + 10);
        l.at(8, 3);
        w.schedule(&mut l, 7);
        w.schedule(&mut l, 8);
        let mut got = Vec::new();
        w.advance(&mut l, 5000, |_, id| {
            got.push(id);
            false
        });
        assert_eq!(got, vec![8]);
        assert_ne!(l.slot(7), NONE);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn empty_wheel_jumps() {
        let (mut w, mut l) = (TimingWheel::new(0), Arrays::default());
        w.advance(&mut l, u64::MAX / 2, |_, _| unreachable!());
        assert_eq!(w.now(), u64::MAX / 2);
    }

    #[test]
    fn past_deadline_fires_next_tick() {
        let (mut w, mut l) = (TimingWheel::new(50), Arrays::default());
        l.at(0, 10);
        w.schedule(&mut l, 0);
        let fired = run(&mut w, &mut l, 51);
        assert_eq!(fired, vec![(51, 0)]);
    }

    #[test]
    fn kept_ids_fire_again_at_their_moved_tick() {
        let (mut w, mut l) = (TimingWheel::new(0), Arrays::default());
        for id in 0..3 {
            l.at(id, 10);
            w.schedule(&mut l, id);
        }
        // The owner pushed id 1's deadline out without telling the wheel
        // (a lazy refresh) and id 2's far out (it cascades from level 1).
        l.at(1, 25);
        l.at(2, 5000);
        let mut got = Vec::new();
        let mut t = 0;
        while t < 6000 {
            t += 1;
            w.advance(&mut l, t, |l, id| {
                let keep = l.when(id) > t;
                if !keep {
                    got.push((t, id));
                }
                keep
            });
        }
        assert_eq!(got, vec![(10, 0), (25, 1), (5000, 2)]);
        assert!(w.is_empty());
    }
}
