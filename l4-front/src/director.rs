//! `run(config, shutdown)`: starts the workers and runs the control loop
//! (clock, slow timer, neighbour resolution, statistics) until `shutdown`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::datapath::afpacket::{self, PacketSocket};
use crate::datapath::{neigh, worker, Processor};
use crate::hash::SeededState;
use crate::packet::rewrite;
use crate::service::Shared;
use crate::stats::{Snapshot, WorkerStats};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("interface {iface}")]
    Interface {
        iface: String,
        source: std::io::Error,
    },
    #[error("opening packet socket on {iface}")]
    Socket {
        iface: String,
        source: std::io::Error,
    },
    #[error("spawning worker: {0}")]
    Spawn(std::io::Error),
}

/// A worker's optional packet ring: opened when `enabled`; a kernel that
/// refuses it is warned about and the worker uses `fallback` instead.
fn optional_ring<T>(
    enabled: bool,
    what: &str,
    fallback: &str,
    open: impl FnOnce() -> std::io::Result<T>,
) -> Option<T> {
    if !enabled {
        return None;
    }
    open()
        .map_err(|e| tracing::warn!(error = %e, "{what} refused; using {fallback}"))
        .ok()
}

/// Runs the director until `shutdown` becomes true.
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>) -> Result<(), RunError> {
    let iface = cfg.director.interface.clone();
    let ierr = |source| RunError::Interface {
        iface: iface.clone(),
        source,
    };
    let ifindex = afpacket::ifindex(&iface).map_err(ierr)?;
    let mac = afpacket::if_mac(&iface).map_err(ierr)?;
    let local_ip = match cfg.director.local_ip {
        Some(ip) => u32::from(ip),
        None => afpacket::if_ipv4(&iface).map_err(ierr)?,
    };
    for svc in &cfg.services {
        // A VIP that is a local address makes this kernel answer the
        // clients itself (RSTs); the deployment keeps it off the director.
        if !cfg.director.kernel_drop && std::net::UdpSocket::bind((svc.vip, 0)).is_ok() {
            tracing::warn!(
                vip = %svc.vip,
                "the VIP is configured on this host: its kernel will answer VIP traffic \
                 (remove the address, or set director.kernel_drop = true)"
            );
        }
    }
    let seed = SeededState::random().seed;
    let shared = Arc::new(Shared::new(&cfg, mac, local_ip, seed));
    resolve_macs(&shared, Duration::from_secs(2));
    let mut kernel_drop = if cfg.director.kernel_drop {
        match crate::kernel_drop::IngressDrop::install(&iface, &drop_keys(&shared)) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "could not install the nftables ingress rule that keeps this host's kernel \
                     out of the VIP traffic; it will still route (and drop) every packet, which \
                     costs forwarding rate (set director.kernel_drop = false to silence this)"
                );
                None
            }
        }
    } else {
        None
    };

    let workers = match cfg.director.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let group = (std::process::id() & 0xffff) as u16;
    let clock = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut stats = Vec::new();
    let mut handles = Vec::new();
    let mut first: Option<PacketSocket> = None;
    let spawner = Spawner {
        shared: &shared,
        clock: &clock,
        stop: &stop,
    };
    // AF_XDP (director.xdp): one socket per receive queue takes the VIP
    // traffic; a packet-socket worker takes what the program passes on
    // (ARP, NAT replies). Anything refused: the packet-socket workers.
    let xdp = if cfg.director.xdp {
        start_xdp(&iface, ifindex, workers, &shared)
            .map_err(
                |e| tracing::warn!(error = %e, "AF_XDP data path refused; using packet sockets"),
            )
            .ok()
    } else {
        None
    };
    let steering = if let Some((steer, socks)) = xdp {
        let n = socks.len();
        for (i, sock) in socks.into_iter().enumerate() {
            handles.push(
                spawner.spawn(format!("l4-xdp-{i}"), &mut stats, move |p, c, s| {
                    crate::datapath::xdp::run(sock, p, c, s)
                })?,
            );
        }
        first = PacketSocket::open_tx(&iface).ok();
        // The slow path (ARP, VS/NAT replies, whatever the program passes
        // on): `workers` packet sockets in one fanout group, so a VS/NAT
        // service's replies — its heavy direction — spread over cores too.
        for i in 0..workers {
            let sock =
                PacketSocket::open(&iface, Some(group)).map_err(|source| RunError::Socket {
                    iface: iface.clone(),
                    source,
                })?;
            handles.push(
                spawner.spawn(format!("l4-slow-{i}"), &mut stats, move |p, c, s| {
                    worker::run(sock, None, p, c, s)
                })?,
            );
        }
        tracing::info!(
            mode = steer.mode,
            sockets = n,
            slow = workers,
            "AF_XDP data path"
        );
        Some(steer)
    } else {
        for i in 0..workers {
            let sock_err = |source| RunError::Socket {
                iface: iface.clone(),
                source,
            };
            // TPACKET_V3 ring unless disabled or refused: 8 blocks of 1 MiB.
            // A block is handed over when full or after 1 ms, so the number of
            // blocks, not their size, bounds how long the worker may fall
            // behind before the kernel drops.
            let ring = optional_ring(cfg.director.rx_ring, "TPACKET_V3 ring", "recvmmsg", || {
                PacketSocket::open_ring(&iface, Some(group), 1 << 20, 8)
            });
            if first.is_none() {
                // A send-only socket for the control plane (ARP): it receives
                // nothing, so frames are not cloned into it.
                first = PacketSocket::open_tx(&iface).ok();
            }
            // TPACKET_V2 transmit ring unless disabled or refused: 1,024 slots
            // of 2 KiB (a standard frame plus the slot header).
            let txr = optional_ring(
                cfg.director.tx_ring,
                "TPACKET_V2 transmit ring",
                "sendmmsg",
                || crate::datapath::txring::TxRing::open(ifindex, 1024, 2048),
            );
            let name = format!("l4-worker-{i}");
            handles.push(match ring {
                Some((sock, ring)) => spawner.spawn(name, &mut stats, move |p, c, s| {
                    worker::run_ring(sock, ring, txr, p, c, s)
                })?,
                None => {
                    let sock = PacketSocket::open(&iface, Some(group)).map_err(sock_err)?;
                    spawner.spawn(name, &mut stats, move |p, c, s| {
                        worker::run(sock, txr, p, c, s)
                    })?
                }
            });
        }
        None
    };
    let health = {
        let (sh, st) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("l4-health".into())
            .spawn(move || crate::health::run(sh, st))
            .map_err(RunError::Spawn)?
    };
    let rates: Arc<std::sync::Mutex<String>> = Arc::default();
    let control = match cfg.director.control_socket.clone() {
        Some(path) => {
            let (sh, st) = (shared.clone(), stop.clone());
            let (rates2, stats2, sh2) = (rates.clone(), stats.clone(), shared.clone());
            let render: Box<dyn Fn() -> String + Send> =
                Box::new(move || render_stats(&rates2, &sh2, &stats2));
            Some(
                std::thread::Builder::new()
                    .name("l4-control".into())
                    .spawn(move || {
                        if let Err(e) = crate::control::serve(&path, sh, render, st) {
                            tracing::error!(error = %e, path = %path.display(), "control socket");
                        }
                    })
                    .map_err(RunError::Spawn)?,
            )
        }
        None => None,
    };
    tracing::info!(
        interface = %iface,
        mac = %crate::packet::fmt_mac(&mac),
        local_ip = %Ipv4Addr::from(local_ip),
        workers,
        rx_ring = cfg.director.rx_ring,
        tx_ring = cfg.director.tx_ring,
        xdp = steering.as_ref().map_or("off", |s| s.mode),
        services = shared.services().list.len(),
        "l4-front running"
    );
    if let (Some(s), true) = (&first, shared.answer_arp) {
        if shared.active.load(Ordering::Relaxed) {
            announce(s, &shared);
        }
    }
    // Failover (§5.2.10, `sync::Failover`): records go to `peer` while this
    // director owns the VIPs; `listen` receives the peer's records and
    // heartbeats and drives takeover, step-down and fail-back.
    let mut sync_sender = None;
    let mut sync_thread = None;
    let dump_wanted = Arc::new(AtomicBool::new(false));
    if let Some(sc) = cfg.sync {
        if let Some(peer) = sc.peer {
            match crate::sync::Sender::new(peer) {
                Ok(s) => sync_sender = Some((s, sc.interval_ms)),
                Err(e) => tracing::error!(error = %e, "sync sender"),
            }
        }
        let has_sender = sync_sender.is_some();
        shared
            .table
            .set_sync(has_sender && shared.active.load(Ordering::Relaxed));
        if let Some(listen) = sc.listen {
            let fo = std::sync::Mutex::new(crate::sync::Failover::new(&sc, Instant::now()));
            let (sh, st, ck, dw) = (
                shared.clone(),
                stop.clone(),
                clock.clone(),
                dump_wanted.clone(),
            );
            let iface2 = iface.clone();
            tracing::info!(%listen, role = ?sc.role, failback = sc.failback, "failover: listening to the peer");
            sync_thread = Some(
                std::thread::Builder::new()
                    .name("l4-sync".into())
                    .spawn(move || {
                        let act = |a: crate::sync::Action| match a {
                            crate::sync::Action::TakeOver => {
                                tracing::warn!(synced = sh.table.len(), "taking over the VIPs");
                                sh.active.store(true, Ordering::Relaxed);
                                sh.table.set_sync(has_sender);
                                if let Ok(s) = PacketSocket::open_tx(&iface2) {
                                    for _ in 0..3 {
                                        announce(&s, &sh);
                                        std::thread::sleep(Duration::from_millis(100));
                                    }
                                }
                            }
                            crate::sync::Action::StepDown => {
                                tracing::warn!("the master is back and active: stepping down");
                                sh.active.store(false, Ordering::Relaxed);
                                sh.table.set_sync(false);
                            }
                            crate::sync::Action::None => {}
                        };
                        let lock = || fo.lock().unwrap_or_else(|e| e.into_inner());
                        let r = crate::sync::receive(
                            listen,
                            sc.peer.map(|p| p.ip()),
                            st,
                            |peer_active, conns| {
                                let now = ck.load(Ordering::Relaxed);
                                for c in conns {
                                    sh.apply_sync(c, now);
                                }
                                let (a, dump) = lock().on_datagram(Instant::now(), peer_active);
                                if dump {
                                    tracing::info!("peer appeared: sending it the table");
                                    dw.store(true, Ordering::Relaxed);
                                }
                                act(a);
                            },
                            || {
                                let a = lock().tick(Instant::now());
                                if a == crate::sync::Action::TakeOver {
                                    tracing::warn!("peer silent");
                                }
                                act(a);
                            },
                        );
                        if let Err(e) = r {
                            tracing::error!(error = %e, "sync receiver");
                        }
                    })
                    .map_err(RunError::Spawn)?,
            );
        }
    }
    // The whole table, paced out to a peer that has just appeared.
    let mut dump: Vec<crate::conn::Conn> = Vec::new();
    let mut last_sync = Instant::now();

    let start = Instant::now();
    let mut prev = (Instant::now(), Snapshot::collect(&stats));
    let interval = Duration::from_millis(cfg.director.stats_interval_ms);
    let mut last_stats = Instant::now();
    let mut last_tick = 0u32;
    let mut last_neigh = Instant::now();
    let mut last_gen = shared.generation();
    while !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let now = start.elapsed().as_secs() as u32;
        clock.store(now, Ordering::Relaxed);
        if now != last_tick {
            last_tick = now;
            let view = shared.services();
            let n = shared.table.expire(now, |c| shared.on_expire_in(&view, c));
            let dropped = shared.defend(now);
            if dropped > 0 {
                tracing::debug!(dropped, "drop_entry");
            }
            if n > 0 {
                tracing::debug!(expired = n, left = shared.table.len(), "slow timer");
            }
        }
        if let Some((sender, every)) = &mut sync_sender {
            let active = shared.active.load(Ordering::Relaxed);
            if last_sync.elapsed() >= Duration::from_millis(*every) {
                last_sync = Instant::now();
                // Records while owning the VIPs; a bare heartbeat otherwise.
                let recs = if active {
                    shared.table.drain_sync()
                } else {
                    Vec::new()
                };
                sender.send(&recs, active);
            }
            if dump_wanted.swap(false, Ordering::Relaxed) {
                dump.clear();
                shared.table.for_each(|c| {
                    if c.state != crate::conn::ConnState::Template {
                        dump.push(*c)
                    }
                });
            }
            if !dump.is_empty() {
                // 2,000 records (50 datagrams) per 50 ms turn.
                let n = dump.len().min(2000);
                sender.send(&dump[dump.len() - n..], active);
                dump.truncate(dump.len() - n);
            }
        }
        let g = shared.generation();
        if g != last_gen {
            // A run-time change: resolve new real servers now and announce
            // new VIPs.
            last_gen = g;
            resolve_macs(&shared, Duration::from_secs(1));
            if let Some(d) = &mut kernel_drop {
                if let Err(e) = d.update(&drop_keys(&shared)) {
                    tracing::warn!(error = %e, "updating the nftables ingress rule");
                }
            }
            if let Some(st) = &steering {
                if let Err(e) = st.set_services(&drop_keys(&shared)) {
                    tracing::warn!(error = %e, "updating the XDP program's service map");
                }
            }
            if let (Some(s), true) = (&first, shared.answer_arp) {
                if shared.active.load(Ordering::Relaxed) {
                    announce(s, &shared);
                }
            }
        }
        if last_neigh.elapsed() >= Duration::from_secs(5) {
            last_neigh = Instant::now();
            resolve_macs(&shared, Duration::ZERO);
        }
        if last_stats.elapsed() >= interval {
            last_stats = Instant::now();
            let cur = Snapshot::collect(&stats);
            let secs = prev.0.elapsed().as_secs_f64();
            let labels: Vec<String> = shared.services().list.iter().map(|s| s.label()).collect();
            let text = crate::stats::render_rates(&prev.1, &cur, secs, &labels);
            *rates.lock().unwrap_or_else(|e| e.into_inner()) = text;
            prev = (Instant::now(), cur);
            write_stats(&cfg, &rates, &shared, &stats);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let _ = health.join();
    if let Some(t) = sync_thread {
        let _ = t.join();
    }
    if let Some(c) = control {
        let _ = c.join();
    }
    write_stats(&cfg, &rates, &shared, &stats);
    tracing::info!("l4-front stopped");
    Ok(())
}

/// Starts data-path threads: each with its own statistics block and
/// processor, and the shared clock and stop flag.
struct Spawner<'a> {
    shared: &'a Arc<Shared>,
    clock: &'a Arc<AtomicU32>,
    stop: &'a Arc<AtomicBool>,
}

impl Spawner<'_> {
    /// Runs `body` on a thread named `name`; its statistics go to `stats`.
    fn spawn<F>(
        &self,
        name: String,
        stats: &mut Vec<Arc<WorkerStats>>,
        body: F,
    ) -> Result<std::thread::JoinHandle<()>, RunError>
    where
        F: FnOnce(Processor, Arc<AtomicU32>, Arc<AtomicBool>) + Send + 'static,
    {
        let st = Arc::new(WorkerStats::new(&self.shared.shape()));
        stats.push(st.clone());
        let proc = Processor::new(self.shared.clone(), st);
        let (c, s) = (self.clock.clone(), self.stop.clone());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || body(proc, c, s))
            .map_err(RunError::Spawn)
    }
}

/// Attaches the XDP program to `iface` and opens one AF_XDP socket per
/// receive queue, at most `workers`, each registered in the program's map.
fn start_xdp(
    iface: &str,
    ifindex: u32,
    workers: usize,
    shared: &Shared,
) -> std::io::Result<(
    crate::datapath::xdp::Steering,
    Vec<crate::datapath::xdp::XdpSocket>,
)> {
    use crate::datapath::xdp;
    let queues = xdp::rx_queues(iface);
    if (queues as usize) < workers {
        tracing::warn!(
            queues,
            workers,
            "fewer receive queues than workers: one AF_XDP worker per queue"
        );
    }
    let steer = xdp::Steering::attach(ifindex, queues)?;
    let mut socks = Vec::new();
    for q in 0..queues.min(workers as u32) {
        let s = xdp::XdpSocket::open(ifindex, q)?;
        steer.register(q, &s)?;
        socks.push(s);
    }
    steer.set_services(&drop_keys(shared))?;
    Ok((steer, socks))
}

/// <VIP, protocol, port> of every live service: the kernel's share of
/// their traffic is dropped at ingress ([`crate::kernel_drop`]).
/// Every service's (VIP, protocol, port; 0 = all ports), for the nftables
/// drop rule and the XDP program's map.
fn drop_keys(shared: &Shared) -> Vec<crate::kernel_drop::Key> {
    shared
        .services()
        .list
        .iter()
        .filter(|s| !s.deleted)
        .map(|s| (u32::from(s.cfg.vip), s.cfg.proto, s.cfg.port))
        .collect()
}

/// Gratuitous ARP for every VIP (start-up and, later, takeover).
fn announce(sock: &PacketSocket, shared: &Shared) {
    let mut buf = [0u8; 64];
    for &vip in shared.services().arp_vips.iter() {
        let n = rewrite::gratuitous_arp(&mut buf, shared.local_mac, vip);
        if let Err(e) = sock.send(&buf[..n]) {
            tracing::warn!(error = %e, "gratuitous ARP failed");
        }
    }
}

/// Resolves unknown real-server MACs, waiting up to `wait`. Returns whether
/// any MAC was newly learnt.
fn resolve_macs(shared: &Shared, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut learnt = false;
    loop {
        let mut missing = 0;
        for s in shared.services().list.iter() {
            for (j, rs) in s.servers.iter().enumerate() {
                if s.mac(j).is_some() || rs.is_removed() {
                    continue;
                }
                let ip = Ipv4Addr::from(rs.addr);
                match neigh::lookup(ip) {
                    Some(m) => {
                        s.set_mac(j, m);
                        learnt = true;
                        tracing::info!(real_server = %ip, mac = %crate::packet::fmt_mac(&m), "resolved");
                    }
                    None => {
                        neigh::provoke(ip);
                        missing += 1;
                    }
                }
            }
        }
        if missing == 0 || Instant::now() >= deadline {
            if missing > 0 && !wait.is_zero() {
                tracing::warn!(missing, "real servers without a MAC yet (retrying)");
            }
            return learnt;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn render_stats(
    rates: &std::sync::Mutex<String>,
    shared: &Shared,
    stats: &[Arc<WorkerStats>],
) -> String {
    let snap = Snapshot::collect(stats);
    let view = shared.services();
    let labels: Vec<String> = view.list.iter().map(|s| s.label()).collect();
    let rs_labels: Vec<Vec<String>> = view
        .list
        .iter()
        .map(|s| {
            s.servers
                .iter()
                .map(|r| format!("{}:{}", Ipv4Addr::from(r.addr), r.port))
                .collect()
        })
        .collect();
    let mut text = snap.render(
        &labels,
        &rs_labels,
        &[("connections", shared.table.len() as u64)],
    );
    for ((s, l), rls) in view.list.iter().zip(&labels).zip(&rs_labels) {
        for (r, rl) in s.servers.iter().zip(rls) {
            let _ = std::fmt::Write::write_fmt(
                &mut text,
                format_args!(
                    "rs.{l}.{rl}.active {}\nrs.{l}.{rl}.inactive {}\nrs.{l}.{rl}.up {}\n",
                    r.active.load(Ordering::Relaxed),
                    r.inactive.load(Ordering::Relaxed),
                    r.is_up() as u8
                ),
            );
        }
    }
    text.push_str(&rates.lock().unwrap_or_else(|e| e.into_inner()));
    text
}

fn write_stats(
    cfg: &Config,
    rates: &std::sync::Mutex<String>,
    shared: &Shared,
    stats: &[Arc<WorkerStats>],
) {
    let Some(path) = &cfg.director.stats_file else {
        return;
    };
    let text = render_stats(rates, shared, stats);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Convenience for `--check`: loads and checks a file.
pub fn check(path: &Path) -> Result<Config, crate::config::ConfigError> {
    Config::load(path)
}
