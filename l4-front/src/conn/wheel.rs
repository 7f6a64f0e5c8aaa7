//! The slow timer of §5.2.2: three hierarchical timing wheels of 1024, 256
//! and 256 slots with one-second ticks, instead of a timer per connection.
//!
//! Level 0 holds what expires within 1,024 ticks (so an ESTABLISHED entry
//! with the 15-minute default goes straight to level 0), level 1 the next
//! 256 × 1,024 ticks, level 2 the next 256 × 256 × 1,024 (≈ 2 years; longer
//! is clamped). When level 0 wraps, one level-1 slot is cascaded down, and
//! likewise from level 2. Entries are identified by `u32` ids (slab indices
//! of the connection table) and linked through index arrays, so insert,
//! remove and expiry are O(1) per entry and no allocation happens per timer.

const NONE: u32 = u32::MAX;
const L0_BITS: u32 = 10;
const L1_BITS: u32 = 8;
const L2_BITS: u32 = 8;
const L0: u64 = 1 << L0_BITS;
const L1: u64 = 1 << L1_BITS;
const L2: u64 = 1 << L2_BITS;
const SPAN1: u64 = L0 * L1;
const SPAN2: u64 = L0 * L1 * L2;

pub struct TimingWheel {
    now: u64,
    heads: Vec<u32>, // L0 + L1 + L2 list heads
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Slot index (into `heads`) the id is linked in, or NONE.
    slot: Vec<u32>,
    when: Vec<u64>,
    len: usize,
}

impl TimingWheel {
    /// A wheel whose clock reads `now`.
    pub fn new(now: u64) -> Self {
        Self::with_capacity(now, 0)
    }

    /// The same with room reserved for ids below `ids` (no reallocation
    /// while the owner's slab stays under that).
    pub fn with_capacity(now: u64, ids: usize) -> Self {
        TimingWheel {
            now,
            heads: vec![NONE; (L0 + L1 + L2) as usize],
            next: Vec::with_capacity(ids),
            prev: Vec::with_capacity(ids),
            slot: Vec::with_capacity(ids),
            when: Vec::with_capacity(ids),
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

    /// Bytes used by the per-id arrays (for memory accounting).
    pub fn bytes(&self) -> usize {
        self.next.capacity() * 4
            + self.prev.capacity() * 4
            + self.slot.capacity() * 4
            + self.when.capacity() * 8
            + self.heads.capacity() * 4
    }

    fn ensure(&mut self, id: u32) {
        let need = id as usize + 1;
        if self.next.len() < need {
            self.next.resize(need, NONE);
            self.prev.resize(need, NONE);
            self.slot.resize(need, NONE);
            self.when.resize(need, 0);
        }
    }

    /// When `id` is due, if scheduled.
    pub fn when(&self, id: u32) -> Option<u64> {
        let i = id as usize;
        (i < self.slot.len() && self.slot[i] != NONE).then(|| self.when[i])
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

    /// Schedules `id` at tick `when` (a past tick fires on the next tick).
    /// Re-scheduling an already scheduled id moves it.
    pub fn schedule(&mut self, id: u32, when: u64) {
        self.ensure(id);
        self.cancel(id);
        let when = when.max(self.now + 1);
        let s = self.slot_for(when);
        self.link(id, s, when);
        self.len += 1;
    }

    fn link(&mut self, id: u32, s: u32, when: u64) {
        let i = id as usize;
        let head = self.heads[s as usize];
        self.next[i] = head;
        self.prev[i] = NONE;
        if head != NONE {
            self.prev[head as usize] = id;
        }
        self.heads[s as usize] = id;
        self.slot[i] = s;
        self.when[i] = when;
    }

    /// Removes `id` from the wheel; returns whether it was scheduled.
    pub fn cancel(&mut self, id: u32) -> bool {
        let i = id as usize;
        if i >= self.slot.len() || self.slot[i] == NONE {
            return false;
        }
        let (n, p) = (self.next[i], self.prev[i]);
        if p != NONE {
            self.next[p as usize] = n;
        } else {
            self.heads[self.slot[i] as usize] = n;
        }
        if n != NONE {
            self.prev[n as usize] = p;
        }
        self.slot[i] = NONE;
        self.next[i] = NONE;
        self.prev[i] = NONE;
        self.len -= 1;
        true
    }

    fn take_slot(&mut self, s: u32) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut cur = self.heads[s as usize];
        self.heads[s as usize] = NONE;
        while cur != NONE {
            let i = cur as usize;
            ids.push(cur);
            cur = self.next[i];
            self.slot[i] = NONE;
            self.next[i] = NONE;
            self.prev[i] = NONE;
            self.len -= 1;
        }
        ids
    }

    /// Advances the clock to `now`, calling `expire` for every id due at or
    /// before it (each id once; it is no longer scheduled when called).
    pub fn advance(&mut self, now: u64, mut expire: impl FnMut(u32)) {
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
                    self.cascade(s);
                }
                let s = (L0 + ((t >> L0_BITS) & (L1 - 1))) as u32;
                self.cascade(s);
            }
            let s = (t & (L0 - 1)) as u32;
            for id in self.take_slot(s) {
                let w = self.when[id as usize];
                if w > t {
                    // Clamped far-future entry: not yet due.
                    self.schedule(id, w);
                } else {
                    expire(id);
                }
            }
        }
    }

    fn cascade(&mut self, s: u32) {
        for id in self.take_slot(s) {
            let w = self.when[id as usize].max(self.now);
            let slot = if w == self.now {
                (w & (L0 - 1)) as u32
            } else {
                self.slot_for(w)
            };
            self.link(id, slot, w);
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(w: &mut TimingWheel, to: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while w.now() < to {
            let t = w.now() + 1;
            w.advance(t, |id| out.push((t, id)));
        }
        out
    }

    #[test]
    fn fires_at_exact_tick_on_every_level() {
        let mut w = TimingWheel::new(0);
        let whens = [
            1u64, 5, 1023, 1024, 1025, 2048, 60, 900, 300_000, 262_144, 262_145,
        ];
        for (i, &t) in whens.iter().enumerate() {
            w.schedule(i as u32, t);
        }
        assert_eq!(w.len(), whens.len());
        let fired = run(&mut w, 300_001);
        assert_eq!(fired.len(), whens.len());
        for (t, id) in fired {
            assert_eq!(t, whens[id as usize], "id {id}");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn starting_mid_wheel_and_cancel() {
        let mut w = TimingWheel::new(1000);
        w.schedule(1, 1000 + 30);
        w.schedule(2, 1000 + 5000);
        w.schedule(3, 1000 + 70);
        assert!(w.cancel(3));
        assert!(!w.cancel(3));
        w.schedule(1, 1000 + 40); // reschedule moves it
        let fired = run(&mut w, 7000);
        assert_eq!(fired, vec![(1040, 1), (6000, 2)]);
    }

    #[test]
    fn far_future_is_clamped_not_lost() {
        let mut w = TimingWheel::new(0);
        w.schedule(7, SPAN2 + 10);
        w.schedule(8, 3);
        let mut got = Vec::new();
        w.advance(5000, |id| got.push(id));
        assert_eq!(got, vec![8]);
        assert_eq!(w.when(7), Some(SPAN2 + 10));
    }

    #[test]
    fn empty_wheel_jumps() {
        let mut w = TimingWheel::new(0);
        w.advance(u64::MAX / 2, |_| unreachable!());
        assert_eq!(w.now(), u64::MAX / 2);
    }

    #[test]
    fn past_deadline_fires_next_tick() {
        let mut w = TimingWheel::new(50);
        w.schedule(0, 10);
        let fired = run(&mut w, 51);
        assert_eq!(fired, vec![(51, 0)]);
    }
}
