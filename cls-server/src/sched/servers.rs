//! The server table: liveness, weights and load of every server, as seen by
//! the CLS.
//!
//! Load model (documented in README.md):
//! * `units_i` — connection units in flight on server i: the sum over
//!   distributors of their last `LoadReport` for i, plus what the CLS itself
//!   assigned to i through that distributor since (1 per lookup, 2 if
//!   dynamic). A distributor's pending assignments are dropped at its next
//!   report, or at the next monitor tick if it did not report during the
//!   interval, so a distributor that never reports cannot skew the view.
//! * `weight_i` — dynamic weight from the resource monitor's feedback
//!   (`w += A * cbrt(0.95 - AGG)`, SPEC §2); starts at the configured weight.
//! * `load_i = units_i * mean(weight) / weight_i` — the value LBLL compares
//!   with T. In a homogeneous, equally loaded cluster it equals `units_i`, so
//!   T is in connection units (the LBLC `high` threshold).
//!
//! A server is *eligible* when it is alive and its configured weight is not
//! zero (weight 0 = administrative drain).

use slab::Slab;

/// Internal weight units per configured weight unit: a configured weight
/// `w` is the thesis' `DEFAULT_WEIGHT = 100 * w`, so the feedback step
/// `A = 5` moves a weight-1 server by at most about 5 % per interval.
pub const WEIGHT_UNIT: f64 = 100.0;

/// Per-server state.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub alive: bool,
    /// Configured weight; 0 = drained (never scheduled, never adjusted).
    pub base_weight: u32,
    /// Dynamic weight (feedback), in [`WEIGHT_UNIT`]s of the configured one.
    pub weight: f64,
    /// `mean(weight) / weight`, recomputed by [`ServerTable::recompute`].
    pub load_factor: f64,
    /// In-flight connection units (see the module doc).
    pub units: i64,
    /// Last aggregate load from the monitor (1.0 = just loaded).
    pub agg: f64,
}

#[derive(Debug, Default)]
struct Contrib {
    reported: Vec<u32>,
    pending: Vec<u32>,
    reported_since_tick: bool,
}

/// All servers, indexed by server id (`0..len`).
#[derive(Debug)]
pub struct ServerTable {
    servers: Vec<ServerState>,
    dists: Slab<Contrib>,
}

/// Handle of one distributor connection's contribution to the loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistKey(usize);

impl ServerTable {
    /// One entry per configured weight; servers start alive.
    pub fn new(weights: &[u32]) -> Self {
        let mut t = ServerTable {
            servers: weights
                .iter()
                .map(|&w| ServerState {
                    alive: true,
                    base_weight: w,
                    weight: w as f64 * WEIGHT_UNIT,
                    load_factor: 1.0,
                    units: 0,
                    agg: 0.0,
                })
                .collect(),
            dists: Slab::new(),
        };
        t.recompute();
        t
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
    pub fn get(&self, id: u16) -> Option<&ServerState> {
        self.servers.get(id as usize)
    }
    pub fn iter(&self) -> impl Iterator<Item = &ServerState> {
        self.servers.iter()
    }

    #[inline]
    pub fn eligible(&self, id: u16) -> bool {
        self.servers
            .get(id as usize)
            .is_some_and(|s| s.alive && s.base_weight > 0)
    }

    /// The load LBLL compares with T; infinite for ineligible servers.
    #[inline]
    pub fn load(&self, id: u16) -> f64 {
        match self.servers.get(id as usize) {
            Some(s) if s.alive && s.base_weight > 0 => s.units.max(0) as f64 * s.load_factor,
            _ => f64::INFINITY,
        }
    }

    /// Least loaded eligible server; ties go to the lowest id.
    pub fn least_loaded(&self) -> Option<u16> {
        let mut best: Option<(u16, f64)> = None;
        for i in 0..self.servers.len() as u16 {
            let l = self.load(i);
            if l.is_finite() && best.is_none_or(|(_, b)| l < b) {
                best = Some((i, l));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Whether some eligible server has `load < x` (or `<= x` if `inclusive`).
    pub fn any_below(&self, x: f64, inclusive: bool) -> bool {
        (0..self.servers.len() as u16).any(|i| {
            let l = self.load(i);
            l.is_finite() && (l < x || (inclusive && l == x))
        })
    }

    /// Marks a server up or down (resource monitor). Returns whether it
    /// changed.
    pub fn set_alive(&mut self, id: u16, alive: bool) -> bool {
        match self.servers.get_mut(id as usize) {
            Some(s) if s.alive != alive => {
                s.alive = alive;
                true
            }
            _ => false,
        }
    }

    /// Registers a distributor connection.
    pub fn add_distributor(&mut self) -> DistKey {
        let n = self.servers.len();
        DistKey(self.dists.insert(Contrib {
            reported: vec![0; n],
            pending: vec![0; n],
            reported_since_tick: false,
        }))
    }

    /// Removes a distributor connection and its contribution.
    pub fn remove_distributor(&mut self, k: DistKey) {
        if let Some(c) = self.dists.try_remove(k.0) {
            for (i, s) in self.servers.iter_mut().enumerate() {
                s.units -= c.reported[i] as i64 + c.pending[i] as i64;
            }
        }
    }

    /// The CLS sent a lookup for `units` connection units to `server`
    /// through distributor `k`.
    #[inline]
    pub fn assign(&mut self, k: DistKey, server: u16, units: u32) {
        let i = server as usize;
        if let (Some(c), Some(s)) = (self.dists.get_mut(k.0), self.servers.get_mut(i)) {
            c.pending[i] = c.pending[i].saturating_add(units);
            s.units += units as i64;
        }
    }

    /// Distributor `k` reports `inflight` units on `server`; unknown server
    /// ids are ignored (returns false).
    pub fn report(&mut self, k: DistKey, server: u16, inflight: u32) -> bool {
        let i = server as usize;
        match (self.dists.get_mut(k.0), self.servers.get_mut(i)) {
            (Some(c), Some(s)) => {
                s.units += inflight as i64 - c.reported[i] as i64 - c.pending[i] as i64;
                c.reported[i] = inflight;
                c.pending[i] = 0;
                c.reported_since_tick = true;
                true
            }
            _ => false,
        }
    }

    /// Monitor interval boundary: drop the pending assignments of
    /// distributors that did not report during the interval.
    pub fn tick(&mut self) {
        let servers = &mut self.servers;
        for (_, c) in self.dists.iter_mut() {
            if !c.reported_since_tick {
                for (i, p) in c.pending.iter_mut().enumerate() {
                    servers[i].units -= *p as i64;
                    *p = 0;
                }
            }
            c.reported_since_tick = false;
        }
    }

    /// Applies the aggregate loads (`agg[i]`, 1.0 = just loaded; `None` =
    /// no data, weight kept) with the thesis' feedback formula, then
    /// recomputes the load factors.
    pub fn apply_feedback(&mut self, agg: &[Option<f64>], a: f64, scale: f64) {
        for (s, g) in self.servers.iter_mut().zip(agg) {
            let Some(g) = *g else { continue };
            s.agg = g;
            if s.base_weight == 0 || !s.alive {
                continue;
            }
            let w = s.weight + a * (0.95 - g).cbrt();
            s.weight = w.clamp(0.0, scale * s.base_weight as f64 * WEIGHT_UNIT);
        }
        self.recompute();
    }

    /// Recomputes `load_factor = mean(weight) / weight` over eligible
    /// servers. A dynamic weight of 0 is floored at 1 % of the configured
    /// weight so the server stays schedulable as a last resort and its
    /// feedback can recover.
    pub fn recompute(&mut self) {
        let (sum, n) = self
            .servers
            .iter()
            .filter(|s| s.alive && s.base_weight > 0)
            .fold((0.0, 0usize), |(a, n), s| (a + s.weight, n + 1));
        let mean = if n == 0 { 1.0 } else { sum / n as f64 };
        for s in &mut self.servers {
            let floor = (s.base_weight as f64 * WEIGHT_UNIT * 0.01).max(1e-6);
            s.load_factor = mean / s.weight.max(floor);
        }
    }

    /// In-flight units per server (INPUT indicator and metrics).
    pub fn units(&self) -> impl Iterator<Item = i64> + '_ {
        self.servers.iter().map(|s| s.units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_replace_pending_and_disconnect_removes() {
        let mut t = ServerTable::new(&[1, 1]);
        let a = t.add_distributor();
        let b = t.add_distributor();
        t.assign(a, 0, 1);
        t.assign(a, 0, 2);
        t.assign(b, 0, 1);
        assert_eq!(t.load(0), 4.0);
        t.report(a, 0, 10);
        assert_eq!(t.load(0), 11.0);
        t.tick(); // b did not report: its pending unit goes.
        assert_eq!(t.load(0), 10.0);
        t.remove_distributor(a);
        assert_eq!(t.load(0), 0.0);
        assert!(!t.report(b, 7, 1));
    }

    #[test]
    fn least_loaded_skips_dead_and_drained() {
        let mut t = ServerTable::new(&[1, 0, 1]);
        let d = t.add_distributor();
        t.assign(d, 0, 5);
        t.assign(d, 2, 3);
        assert_eq!(t.least_loaded(), Some(2));
        t.set_alive(2, false);
        assert_eq!(t.least_loaded(), Some(0));
        assert!(t.load(1).is_infinite());
        t.set_alive(0, false);
        assert_eq!(t.least_loaded(), None);
    }

    #[test]
    fn feedback_lowers_weight_of_slow_server() {
        let mut t = ServerTable::new(&[10, 10]);
        let d = t.add_distributor();
        t.report(d, 0, 10);
        t.report(d, 1, 10);
        t.apply_feedback(&[Some(2.0), Some(0.2)], 5.0, 10.0);
        assert!(t.get(0).unwrap().weight < 1000.0);
        assert!(t.get(1).unwrap().weight > 1000.0);
        assert!(t.load(0) > t.load(1));
        // Clamped to SCALE * weight.
        for _ in 0..3000 {
            t.apply_feedback(&[Some(0.0), Some(0.0)], 5.0, 10.0);
        }
        assert_eq!(t.get(1).unwrap().weight, 10_000.0);
    }
}
