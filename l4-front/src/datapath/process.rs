//! The per-packet pipeline, free of any I/O so the golden fixtures can drive
//! it: parse → VIP lookup → connection table (scheduler for new
//! connections) → rewrite or encapsulate → verdict. A fixed, small amount of
//! work per packet; nothing here allocates after start-up.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Method;
use crate::conn::{ConnKey, ConnState, Event, Hit, Loc, RevKey, Segment, Stage, Target};
use crate::packet::parse::{self, icmp_is_error, parse_icmp_quote, ETH_HLEN};
use crate::packet::rewrite::{self, NatSide, TUN_OVERHEAD};
use crate::packet::{DropReason, Frame, Ipv4, L4};
use crate::service::{Services, Shared};
use crate::stats::{Counter, WorkerStats};

/// Largest frame the data path builds (TUN: jumbo MTU + outer header).
pub const OUT_BUF: usize = 9216 + 64;

/// What to do with a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) input frame, first `n` bytes.
    SendInput(usize),
    /// Send the first `n` bytes of the processor's output buffer.
    SendOutput(usize),
    /// Send two frames from the output buffer: its first `a` bytes, then
    /// the `b` bytes after them (the two fragments of a VS/TUN packet).
    SendOutputs(usize, usize),
    /// Not ours: the kernel deals with its own copy.
    Pass,
    Drop(DropReason),
}

/// One worker's packet processor: its own output buffer and statistics
/// block; the shared tables (services, connection table) behind an Arc.
pub struct Processor {
    shared: Arc<Shared>,
    /// The service snapshot this worker uses, and its generation: replaced
    /// when `Shared::generation` moves (a run-time `l4adm` change).
    view: Arc<Services>,
    generation: u64,
    stats: Arc<WorkerStats>,
    out: Vec<u8>,
    ip_id: u16,
    /// drop_packet: new connections left until the next refused one.
    drop_ctr: u32,
    /// No checksum metadata comes with the frames (AF_XDP): recognise
    /// partial checksums by their value ([`rewrite::looks_partial`]).
    infer_partial: bool,
    /// [`Processor::prefetch_batch`]'s keys (reused: no allocation per
    /// batch once it has grown to the largest one).
    locs: Vec<Loc>,
}

/// The connection key of an unfragmented TCP or UDP packet in an Ethernet
/// frame, read without checks (for [`Processor::prefetch`] only).
#[inline]
fn flow_key(f: &[u8]) -> Option<ConnKey> {
    let h = f.get(..ETH_HLEN + 20)?;
    if h[12..14] != [0x08, 0x00] || h[14] >> 4 != 4 || h[20] & 0x3f != 0 || h[21] != 0 {
        return None;
    }
    let proto = h[23];
    if proto != parse::PROTO_TCP && proto != parse::PROTO_UDP {
        return None;
    }
    let l4 = ETH_HLEN + (h[14] & 0x0f) as usize * 4;
    let p = f.get(l4..l4 + 4)?;
    Some(ConnKey {
        caddr: u32::from_be_bytes([h[26], h[27], h[28], h[29]]),
        vaddr: u32::from_be_bytes([h[30], h[31], h[32], h[33]]),
        cport: u16::from_be_bytes([p[0], p[1]]),
        vport: u16::from_be_bytes([p[2], p[3]]),
        proto,
    })
}

impl Processor {
    pub fn new(shared: Arc<Shared>, stats: Arc<WorkerStats>) -> Self {
        let drop_ctr = shared.defense.drop_rate;
        let generation = shared.generation();
        Processor {
            view: shared.services(),
            generation,
            shared,
            stats,
            out: vec![0u8; OUT_BUF],
            ip_id: 1,
            drop_ctr,
            infer_partial: false,
            locs: Vec::new(),
        }
    }

    /// For a receive path that cannot tell which frames carry a checksum
    /// the sender's offload left partial (AF_XDP): recognise them by
    /// value and complete them before forwarding.
    pub fn infer_partial_checksums(&mut self, on: bool) {
        self.infer_partial = on;
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// As [`Processor::process`], but a `SendOutput` frame is built in `out`
    /// (at least [`OUT_BUF`] bytes) instead of the processor's own buffer,
    /// so a batch of outputs can be sent with one system call.
    pub fn process_into(
        &mut self,
        frame: &mut [u8],
        csum_partial: bool,
        now: u32,
        out: &mut Vec<u8>,
    ) -> Verdict {
        if out.len() < OUT_BUF {
            out.resize(OUT_BUF, 0);
        }
        std::mem::swap(&mut self.out, out);
        let v = self.process(frame, csum_partial, now);
        std::mem::swap(&mut self.out, out);
        v
    }

    /// Batch hint for frames about to be processed: starts loading the
    /// connection-table lines their lookups will read — every bucket
    /// first, then every entry (by then the buckets have arrived; see
    /// [`crate::conn::ConnTable::prefetch`]). Reads only the few header
    /// bytes that make each key, with no validation: a frame that is not a
    /// TCP/UDP packet to a VIP only wastes a prefetch.
    pub fn prefetch_batch<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) {
        let table = &self.shared.table;
        self.locs.clear();
        self.locs
            .extend(frames.filter_map(flow_key).map(|k| table.locate(&k)));
        for stage in [Stage::Bucket, Stage::Entry] {
            for &loc in &self.locs {
                table.prefetch(loc, stage);
            }
        }
    }

    /// Processes one frame; `csum_partial` says the kernel left the L4
    /// checksum incomplete (veth offload, `TP_STATUS_CSUMNOTREADY`).
    /// `now` is seconds on the connection table's clock.
    pub fn process(&mut self, frame: &mut [u8], csum_partial: bool, now: u32) -> Verdict {
        let g = self.shared.generation();
        if g != self.generation {
            self.view = self.shared.services();
            self.generation = g;
        }
        self.stats.add(Counter::RxFrames, 1);
        self.stats.add(Counter::RxBytes, frame.len() as u64);
        let v = self.classify(frame, csum_partial, now);
        match v {
            Verdict::Drop(r) => self.stats.count_drop(r),
            Verdict::Pass => self.stats.add(Counter::Passed, 1),
            _ => {}
        }
        v
    }

    fn classify(&mut self, frame: &mut [u8], csum_partial: bool, now: u32) -> Verdict {
        let ip = match parse::parse(frame) {
            Ok(Frame::Ipv4(ip)) => ip,
            Ok(Frame::Arp(a)) => {
                if self.shared.answer_arp
                    && a.op == 1
                    && self.view.arp_vips.contains(&a.tpa)
                    && self.shared.active.load(Ordering::Relaxed)
                {
                    self.stats.add(Counter::ArpReplies, 1);
                    let n = rewrite::arp_reply(&mut self.out, &a, self.shared.local_mac);
                    return Verdict::SendOutput(n);
                }
                return Verdict::Pass;
            }
            Ok(Frame::Other(_)) => return Verdict::Pass,
            // A malformed frame may still be for the kernel (its own copy);
            // we only count it.
            Err(r) => return Verdict::Drop(r),
        };
        // Only frames sent to us: a bridge floods unknown unicast, and a
        // backup director must not forward what the master handles.
        if frame[0..6] != self.shared.local_mac {
            return Verdict::Pass;
        }
        if self.view.vips.contains(&ip.dst) {
            return self.for_vip(frame, &ip, csum_partial, now);
        }
        if let L4::Tcp { sport, .. } | L4::Udp { sport, .. } = ip.l4 {
            if self.view.is_nat_server(ip.proto, ip.src, sport) {
                return self.nat_reply(frame, &ip, csum_partial);
            }
        }
        Verdict::Pass
    }

    fn for_vip(&mut self, frame: &mut [u8], ip: &Ipv4, csum_partial: bool, now: u32) -> Verdict {
        let (ev, sport, dport) = match ip.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                // The sequence number and payload length, for secure_tcp
                // (the parser guaranteed a whole 20-byte TCP header).
                let o = ip.l4_off();
                let seq = frame
                    .get(o + 4..o + 8)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let doff = frame.get(o + 12).map_or(20, |b| (b >> 4) as usize * 4);
                let len = ip.total_len.saturating_sub(ip.ihl + doff) as u32;
                (Event::TcpSeq(Segment { flags, seq, len }), sport, dport)
            }
            L4::Udp { sport, dport } => (Event::Udp, sport, dport),
            L4::Icmp { ty, .. } if icmp_is_error(ty) => return self.icmp_error(frame, ip),
            L4::Fragment => return Verdict::Drop(DropReason::Fragment),
            _ => return Verdict::Drop(DropReason::NoService),
        };
        let Some(svc) = self.view.lookup(ip.proto, ip.dst, dport) else {
            return Verdict::Drop(DropReason::NoService);
        };
        if ip.frame_len() > self.shared.mtu as usize + ETH_HLEN {
            // A GRO/GSO super-frame: cannot be sent as one frame.
            return Verdict::Drop(DropReason::Oversize);
        }
        let key = ConnKey {
            caddr: ip.src,
            vaddr: ip.dst,
            cport: sport,
            vport: dport,
            proto: ip.proto,
        };
        let mut cmac = [0u8; 6];
        cmac.copy_from_slice(&frame[6..12]);
        let shared = &*self.shared;
        let Some(service) = self.view.list.get(svc as usize) else {
            return Verdict::Drop(DropReason::NoService);
        };
        let drop_ctr = &mut self.drop_ctr;
        let schedule = || {
            // drop_packet (§5.2.9): refuse one new connection in drop_rate.
            if shared.drop_packet_on.load(Ordering::Relaxed) {
                if *drop_ctr <= 1 {
                    *drop_ctr = shared.defense.drop_rate;
                    return Err(DropReason::RateLimited);
                }
                *drop_ctr -= 1;
            }
            let rs = service
                .pick(ip.src, sport)
                .ok_or(DropReason::NoRealServer)?;
            let r = &service.servers[rs];
            let method = service.methods[rs];
            Ok(Target {
                svc,
                rs: rs as u16,
                raddr: r.addr,
                // Port 0 (all-ports service): the client's port.
                rport: if r.port == 0 { dport } else { r.port },
                nat: method == Method::Nat,
                tun: method == Method::Tun,
                persistent: false,
            })
        };
        let hit = if service.cfg.persistence == 0 {
            shared.table.track(key, ev, now, cmac, schedule)
        } else {
            // §5.2.6: an existing connection goes on as before; a new one
            // follows (or creates) its client's template.
            let mut new_conn = false;
            match shared.table.track(key, ev, now, cmac, || {
                new_conn = true;
                Err(DropReason::NoRealServer)
            }) {
                Err(_) if new_conn => {
                    let tkey = service.template_key(ip.src);
                    let persist = service.cfg.persistence;
                    // A template's server that went down or was deleted
                    // is replaced (its clients move on).
                    let usable = |t: &Target| {
                        service
                            .servers
                            .get(t.rs as usize)
                            .is_some_and(|r| r.is_up() && !r.is_removed())
                    };
                    match shared
                        .table
                        .track_template(tkey, now, persist, usable, schedule)
                    {
                        Ok(t) => {
                            let r = shared.table.track(key, ev, now, cmac, || {
                                // All-ports template: each connection
                                // keeps its own destination port.
                                let all_ports = matches!(
                                    service.servers.get(t.rs as usize),
                                    Some(r) if r.port == 0
                                );
                                Ok(Target {
                                    persistent: true,
                                    rport: if all_ports { dport } else { t.rport },
                                    ..t
                                })
                            });
                            if !matches!(r, Ok(Hit { created: true, .. })) {
                                shared.table.release_template(&tkey);
                            }
                            r
                        }
                        Err(e) => Err(e),
                    }
                }
                other => other,
            }
        };
        let hit = match hit {
            Ok(h) => h,
            Err(r) => return Verdict::Drop(r),
        };
        self.account(&hit);
        let t = hit.target;
        if csum_partial || (self.infer_partial && rewrite::looks_partial(frame, ip)) {
            rewrite::complete_checksum(frame, ip);
            self.stats.add(Counter::ChecksumsCompleted, 1);
        }
        self.stats
            .rs_packet(t.svc as usize, t.rs as usize, ip.frame_len(), hit.created);
        self.forward(frame, ip, t)
    }

    /// Keeps the real servers' active/inactive counts (lc, wlc) in step.
    fn account(&self, hit: &Hit) {
        let Some(rs) = self
            .view
            .list
            .get(hit.target.svc as usize)
            .and_then(|s| s.servers.get(hit.target.rs as usize))
        else {
            return;
        };
        let ctr = |s: ConnState| {
            if s.is_active() {
                &rs.active
            } else {
                &rs.inactive
            }
        };
        match hit.old {
            None => {
                ctr(hit.new).fetch_add(1, Ordering::Relaxed);
                rs.created.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) if old.is_active() != hit.new.is_active() => {
                let _ = ctr(old)
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
                ctr(hit.new).fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Sends a packet of connection `t` to its real server.
    fn forward(&mut self, frame: &mut [u8], ip: &Ipv4, t: Target) -> Verdict {
        let Some(mac) = self
            .view
            .list
            .get(t.svc as usize)
            .and_then(|s| s.mac(t.rs as usize))
        else {
            return Verdict::Drop(DropReason::NoRealServer);
        };
        let local = self.shared.local_mac;
        match t.method() {
            Method::Dr => {
                rewrite::dr(frame, local, mac);
                Verdict::SendInput(ip.frame_len())
            }
            Method::Nat => {
                if let Err(r) = rewrite::nat(frame, ip, NatSide::Destination, t.raddr, t.rport) {
                    return Verdict::Drop(r);
                }
                rewrite::dr(frame, local, mac);
                Verdict::SendInput(ip.frame_len())
            }
            Method::Tun => {
                let mtu = self.shared.mtu as usize;
                let tunnel = |id| rewrite::Tunnel {
                    src_mac: local,
                    dst_mac: mac,
                    outer_src: self.shared.local_ip,
                    outer_dst: t.raddr,
                    id,
                };
                if ip.total_len + TUN_OVERHEAD <= mtu {
                    self.ip_id = self.ip_id.wrapping_add(1);
                    return match rewrite::tun(frame, ip, &mut self.out, &tunnel(self.ip_id)) {
                        Ok(n) => Verdict::SendOutput(n),
                        Err(r) => Verdict::Drop(r),
                    };
                }
                if !ip.df {
                    // May be fragmented: the outer packet is, in two.
                    self.ip_id = self.ip_id.wrapping_add(1);
                    let tun = tunnel(self.ip_id);
                    return match rewrite::tun_fragments(frame, ip, &mut self.out, &tun, mtu) {
                        Ok((a, b)) => {
                            self.stats.add(Counter::TunFragmented, 1);
                            Verdict::SendOutputs(a, b)
                        }
                        Err(r) => Verdict::Drop(r),
                    };
                }
                if matches!(ip.l4, L4::Icmp { .. }) {
                    // No ICMP error about an ICMP message.
                    return Verdict::Drop(DropReason::Oversize);
                }
                // As IPVS: tell the client the path MTU is 20 less.
                let m = (mtu - TUN_OVERHEAD) as u16;
                match rewrite::icmp_frag_needed(&mut self.out, frame, ip, local, ip.dst, m) {
                    Ok(n) => {
                        self.stats.add(Counter::FragNeededSent, 1);
                        Verdict::SendOutput(n)
                    }
                    Err(r) => Verdict::Drop(r),
                }
            }
        }
    }

    /// §5.2.3: an ICMP error about a virtual service (e.g. fragmentation
    /// needed from a router on the reply path, addressed to the VIP) is
    /// matched through its quoted header to the connection and relayed to
    /// that connection's real server.
    fn icmp_error(&mut self, frame: &mut [u8], ip: &Ipv4) -> Verdict {
        let Ok(q) = parse_icmp_quote(frame, ip) else {
            return Verdict::Drop(DropReason::IcmpNoMatch);
        };
        let (qs, qd) = q.ports();
        // The quoted packet is a reply: VIP:vport → client:cport.
        let key = ConnKey {
            caddr: q.dst,
            vaddr: q.src,
            cport: qd,
            vport: qs,
            proto: q.proto,
        };
        let Some(c) = self.shared.table.get(&key) else {
            return Verdict::Drop(DropReason::IcmpNoMatch);
        };
        self.stats.add(Counter::IcmpRelayed, 1);
        if c.nat {
            // The real server must recognise its own reply in the quote.
            let Some(mac) = self
                .view
                .list
                .get(c.svc as usize)
                .and_then(|s| s.mac(c.rs as usize))
            else {
                return Verdict::Drop(DropReason::NoRealServer);
            };
            if let Err(r) = rewrite::nat_icmp_to_real_server(frame, ip, &q, c.raddr, c.rport) {
                return Verdict::Drop(r);
            }
            rewrite::dr(frame, self.shared.local_mac, mac);
            return Verdict::SendInput(ip.frame_len());
        }
        self.forward(frame, ip, c.target())
    }

    /// VS/NAT: a reply from a real server goes back to the client from the
    /// VIP, through the router the request came from.
    fn nat_reply(&mut self, frame: &mut [u8], ip: &Ipv4, csum_partial: bool) -> Verdict {
        let (sport, dport) = ip.ports();
        let rk = RevKey {
            raddr: ip.src,
            caddr: ip.dst,
            rport: sport,
            cport: dport,
            proto: ip.proto,
        };
        let Some(c) = self.shared.table.lookup_reply(&rk) else {
            return Verdict::Drop(DropReason::NoConnection);
        };
        if ip.frame_len() > self.shared.mtu as usize + ETH_HLEN {
            return Verdict::Drop(DropReason::Oversize);
        }
        if csum_partial {
            rewrite::complete_checksum(frame, ip);
            self.stats.add(Counter::ChecksumsCompleted, 1);
        }
        if let Err(r) = rewrite::nat(frame, ip, NatSide::Source, c.key.vaddr, c.key.vport) {
            return Verdict::Drop(r);
        }
        rewrite::dr(frame, self.shared.local_mac, c.cmac);
        self.stats.add(Counter::NatReplies, 1);
        self.stats
            .rs_packet(c.svc as usize, c.rs as usize, ip.frame_len(), false);
        Verdict::SendInput(ip.frame_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{arp_request, tcp_frame, udp_frame, TcpSpec};

    #[test]
    fn prefetch_key_is_the_lookup_key() {
        let f = tcp_frame(TcpSpec::syn());
        assert_eq!(
            flow_key(&f),
            Some(ConnKey {
                caddr: 0x0ac9_0102,
                vaddr: 0x0ac9_0264,
                cport: 40000,
                vport: 80,
                proto: 6,
            })
        );
        let u = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 53, 5353, b"x");
        assert_eq!(
            flow_key(&u).map(|k| (k.cport, k.vport, k.proto)),
            Some((53, 5353, 17))
        );
        // A later fragment carries no ports; ARP, and a truncated frame,
        // nothing to look up.
        let mut frag = f.clone();
        frag[21] = 1;
        assert_eq!(flow_key(&frag), None);
        assert_eq!(
            flow_key(&arp_request([2; 6], [10, 0, 0, 1], [10, 0, 0, 2])),
            None
        );
        assert_eq!(flow_key(&f[..36]), None);
    }
}
