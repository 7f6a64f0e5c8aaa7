//! The table operations off the per-packet fast path: persistence
//! templates (§5.2.6), the DoS defences' knobs (§5.2.9) and connection sync
//! for failover (§5.2.10).

use std::sync::atomic::Ordering;

use std::hash::BuildHasher;

use super::{lock, Conn, ConnKey, ConnState, ConnTable, DropReason, Target};

impl ConnTable {
    /// secure_tcp (§5.2.9): while on, half-open and closing entries live
    /// `syn` seconds and states change only on valid steps
    /// (`state::tcp_next_secure`).
    pub fn set_secure(&self, on: bool, syn: u32) {
        self.secure_syn.store(syn.max(1), Ordering::Relaxed);
        self.secure.store(on, Ordering::Relaxed);
    }
    /// drop_entry (§5.2.9): removes every half-open (SYN_RECV) entry of
    /// shard `hint % shards` and returns them (for the counters).
    pub fn drop_half_open(&self, hint: usize) -> Vec<Conn> {
        let mut guard = lock(&self.shards[hint & self.mask]);
        let sh = &mut *guard;
        let ids: Vec<(u32, ConnKey)> = sh
            .store
            .iter()
            .filter(|(_, e)| e.state == ConnState::SynRecv)
            .map(|(i, e)| (i, e.key()))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for (id, key) in ids {
            sh.wheel.cancel(&mut sh.store, id);
            out.push(sh.store.remove(id, self.hasher.hash_one(key)));
        }
        out
    }
    /// Turns queueing of records for the backup on or off.
    pub fn set_sync(&self, on: bool) {
        self.sync.store(on, Ordering::Relaxed);
    }
    /// Takes the records queued since the last call.
    pub fn drain_sync(&self) -> Vec<Conn> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.append(&mut lock(shard).sync_out);
        }
        out
    }
    /// Backup side: inserts or updates a connection received from the
    /// master, expiring `timeout` of its state after `now`. Returns the
    /// previous state (None if new) so the caller can keep counters, or
    /// `Err` when the table is full.
    pub fn insert_synced(&self, c: Conn, now: u32) -> Result<Option<ConnState>, DropReason> {
        let (hash, shard) = self.shard(&c.key);
        let mut guard = lock(shard);
        let sh = &mut *guard;
        let expires = now.saturating_add(self.timeout_of(c.state));
        if let Some(id) = sh.store.find(&c.key, hash) {
            let e = sh.store.get_mut(id);
            let (old, was) = (e.state, e.expires);
            e.state = c.state;
            e.expires = expires;
            // Lazy refresh, as in `track`.
            if expires < was {
                sh.wheel.schedule(&mut sh.store, id);
            }
            return Ok(Some(old));
        }
        if sh.store.len() >= self.per_shard_max {
            return Err(DropReason::TableFull);
        }
        let conn = Conn {
            expires,
            refs: 0,
            timeout: 0,
            seq_next: 0,
            ..c
        };
        let id = sh.store.insert(&conn, hash);
        sh.wheel.schedule(&mut sh.store, id);
        Ok(None)
    }
    /// Persistence (§5.2.6): the template for `tkey` (created through
    /// `schedule` when absent), with one more connection using it and its
    /// expiry pushed to at least `now + timeout`. A template whose real
    /// server `usable` refuses (down by its health check, or deleted) is
    /// pointed at a server `schedule` picks, as IPVS expires such a
    /// template: its clients move on instead of failing for a whole
    /// persistence period. (A server drained to weight 0 stays usable:
    /// its persistent clients finish there.)
    pub fn track_template(
        &self,
        tkey: ConnKey,
        now: u32,
        timeout: u32,
        usable: impl FnOnce(&Target) -> bool,
        schedule: impl FnOnce() -> Result<Target, DropReason>,
    ) -> Result<Target, DropReason> {
        let (hash, shard) = self.shard(&tkey);
        let mut guard = lock(shard);
        let sh = &mut *guard;
        let expires = now.saturating_add(timeout);
        if let Some(id) = sh.store.find(&tkey, hash) {
            let c = sh.store.get_mut(id);
            let mut target = c.target();
            if !usable(&target) {
                target = schedule()?;
                c.retarget(&target);
            }
            // refs: one more connection. The expiry only ever moves later:
            // the wheel picks it up when the old deadline fires.
            c.aux = c.aux.saturating_add(1);
            c.expires = c.expires.max(expires);
            return Ok(target);
        }
        if sh.store.len() >= self.per_shard_max {
            return Err(DropReason::TableFull);
        }
        let target = schedule()?;
        let conn = Conn {
            key: tkey,
            raddr: target.raddr,
            expires,
            rport: target.rport,
            svc: target.svc,
            rs: target.rs,
            state: ConnState::Template,
            nat: target.nat,
            tun: target.tun,
            persistent: false,
            refs: 1,
            timeout,
            cmac: [0; 6],
            seq_next: 0,
        };
        let id = sh.store.insert(&conn, hash);
        sh.wheel.schedule(&mut sh.store, id);
        Ok(target)
    }
    /// One connection fewer uses the template `tkey`.
    pub fn release_template(&self, tkey: &ConnKey) {
        let (hash, shard) = self.shard(tkey);
        let mut sh = lock(shard);
        if let Some(id) = sh.store.find(tkey, hash) {
            let c = sh.store.get_mut(id);
            c.aux = c.aux.saturating_sub(1); // refs: one connection fewer
        }
    }
}
