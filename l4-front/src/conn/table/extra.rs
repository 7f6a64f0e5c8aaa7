//! The table operations off the per-packet fast path: persistence
//! templates (§5.2.6), the DoS defences' knobs (§5.2.9) and connection sync
//! for failover (§5.2.10).

use std::sync::atomic::Ordering;

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
        let ids: Vec<usize> = sh
            .conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::SynRecv)
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let c = sh.conns.remove(id);
            sh.map.remove(&c.key);
            sh.wheel.cancel(id as u32);
            if c.nat {
                lock(self.rev_shard(&c.rev_key())).remove(&c.rev_key());
            }
            out.push(c);
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
        let mut guard = lock(self.shard(&c.key));
        let sh = &mut *guard;
        let expires = now.saturating_add(self.timeout_of(c.state));
        if let Some(&id) = sh.map.get(&c.key) {
            if let Some(e) = sh.conns.get_mut(id as usize) {
                let old = e.state;
                e.state = c.state;
                e.expires = expires;
                if !matches!(sh.wheel.when(id), Some(w) if (expires as u64) >= w) {
                    sh.wheel.schedule(id, expires as u64);
                }
                return Ok(Some(old));
            }
        }
        if sh.conns.len() >= self.per_shard_max {
            return Err(DropReason::TableFull);
        }
        let conn = Conn {
            expires,
            refs: 0,
            timeout: 0,
            seq_next: 0,
            ..c
        };
        let id = sh.conns.insert(conn) as u32;
        sh.map.insert(c.key, id);
        sh.wheel.schedule(id, expires as u64);
        if conn.nat {
            lock(self.rev_shard(&conn.rev_key())).insert(conn.rev_key(), conn.key);
        }
        Ok(None)
    }
    /// Persistence (§5.2.6): the template for `tkey` (created through
    /// `schedule` when absent), with one more connection using it and its
    /// expiry pushed to at least `now + timeout`.
    pub fn track_template(
        &self,
        tkey: ConnKey,
        now: u32,
        timeout: u32,
        schedule: impl FnOnce() -> Result<Target, DropReason>,
    ) -> Result<Target, DropReason> {
        let mut guard = lock(self.shard(&tkey));
        let sh = &mut *guard;
        let expires = now.saturating_add(timeout);
        if let Some(&id) = sh.map.get(&tkey) {
            if let Some(c) = sh.conns.get_mut(id as usize) {
                c.refs = c.refs.saturating_add(1);
                c.expires = c.expires.max(expires);
                return Ok(c.target());
            }
        }
        if sh.conns.len() >= self.per_shard_max {
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
        let id = sh.conns.insert(conn) as u32;
        sh.map.insert(tkey, id);
        sh.wheel.schedule(id, expires as u64);
        Ok(target)
    }
    /// One connection fewer uses the template `tkey`.
    pub fn release_template(&self, tkey: &ConnKey) {
        let mut sh = lock(self.shard(tkey));
        if let Some(&id) = sh.map.get(tkey) {
            if let Some(c) = sh.conns.get_mut(id as usize) {
                c.refs = c.refs.saturating_sub(1);
            }
        }
    }
}
