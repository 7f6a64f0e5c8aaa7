//! `cls-bench`: CLS throughput and latency, after thesis §7.4 / figure 7.5.
//!
//! `--clients` raw-protocol clients (default 3, like the thesis' three
//! programs) each send a batch of B lookups, wait for the answer, send the
//! next; for B = 1, 2, 4 … 256 it prints the summed lookups/s and the batch
//! round-trip percentiles. Then one task measures the single-lookup round
//! trip through the real `ClsClient`, and 16 / 256 concurrent tasks show
//! its self-clocking batching (lookups/s and mean batch size).
//!
//! Without `--addr` the CLS runs in-process on its own thread (one core:
//! the server is single-threaded); the clients share one other thread.
//!
//! Usage: cls-bench [--addr HOST:PORT] [--clients N] [--ms MS_PER_STEP]
//!                  [--batches 1,2,4,...] [--targets N] [--servers N]
//!                  [--no-report] [--micro]
//!
//! `--micro` instead measures the CLS's per-batch work without sockets on
//! this thread: parse a `BatchLookup`, run LBLL for each item, encode the
//! `BatchAnswer` — the compute cost per lookup on one core (an upper bound:
//! building the request batch is inside the timed loop too).
//!
//! By default each batch is preceded by a `LoadReport` (every server at 0
//! in-flight units, as if the previous batch's requests had completed), so
//! the CLS works in its steady state; `--no-report` lets the assigned load
//! pile up until the housekeeping tick (the overload path of LBLL).
//!
//! With the in-process CLS it also prints the CPU time of the server thread
//! and lookups per CPU-second of it: on a shared machine this is the
//! "one core" figure, independent of what else runs.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cls_server::proto::{self, content_id, BatchWriter, Decoded, Frame, LookupItem};
use cls_server::{ClientConfig, ClsClient, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: Option<SocketAddr>,
    clients: usize,
    ms: u64,
    batches: Vec<usize>,
    targets: usize,
    servers: usize,
    report: bool,
    micro: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        addr: None,
        clients: 3,
        ms: 1000,
        batches: (0..=8).map(|i| 1usize << i).collect(),
        targets: 100_000,
        servers: 16,
        report: true,
        micro: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = Some(v()?.parse()?),
            "--clients" => a.clients = v()?.parse()?,
            "--ms" => a.ms = v()?.parse()?,
            "--batches" => {
                a.batches = v()?
                    .split(',')
                    .map(|x| x.parse())
                    .collect::<Result<_, _>>()?
            }
            "--targets" => a.targets = v()?.parse()?,
            "--servers" => a.servers = v()?.parse()?,
            "--no-report" => a.report = false,
            "--micro" => a.micro = true,
            "-h" | "--help" => {
                println!(
                    "usage: cls-bench [--addr HOST:PORT] [--clients N] [--ms MS] \
                     [--batches 1,2,4] [--targets N] [--servers N] [--no-report] [--micro]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {k}"),
        }
    }
    if a.batches.iter().any(|&b| b == 0 || b > proto::MAX_BATCH) {
        bail!("batch sizes must be in 1..={}", proto::MAX_BATCH);
    }
    Ok(a)
}

/// One raw client: Hello, then `batch`-sized lookups until `until`.
/// Returns (lookups, batch round-trip times in ns).
async fn raw_client(
    addr: SocketAddr,
    ids: Rc<Vec<[u8; 16]>>,
    offset: usize,
    batch: usize,
    until: Instant,
    servers: usize,
    report: bool,
) -> anyhow::Result<(u64, Vec<u32>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut w = Vec::with_capacity(64 + batch * 20);
    proto::encode_hello(
        &mut w,
        &proto::Hello {
            version: proto::VERSION,
            distributor_id: offset as u32,
            node_id: proto::NO_NODE,
        },
    );
    s.write_all(&w).await?;
    let mut r = vec![0u8; proto::LEN_BYTES + proto::MAX_FRAME_LEN];
    let mut have = 0;
    // HelloAck.
    let n = read_frame(&mut s, &mut r, &mut have).await?;
    r.copy_within(n..have, 0);
    have -= n;
    let mut lat = Vec::with_capacity(1 << 20);
    let mut done = 0u64;
    let mut k = offset;
    let mut req = 0u32;
    while Instant::now() < until {
        w.clear();
        if report {
            let mut r = BatchWriter::load_report(&mut w);
            for s in 0..servers.min(proto::MAX_BATCH) {
                r.push_load(&proto::LoadItem {
                    server: s as u16,
                    inflight: 0,
                });
            }
            r.finish();
        }
        req = req.wrapping_add(1);
        let mut b = BatchWriter::lookup(&mut w, req);
        for _ in 0..batch {
            k = (k + 1) % ids.len();
            b.push_lookup(&LookupItem {
                id: ids[k],
                flags: 0,
                local_node: proto::NO_NODE,
            });
        }
        b.finish();
        let t = Instant::now();
        s.write_all(&w).await?;
        let n = read_frame(&mut s, &mut r, &mut have).await?;
        match proto::parse(&r[..n])? {
            Frame::BatchAnswer(a) if a.request_id == req && a.len() == batch => {}
            f => bail!("unexpected reply {f:?}"),
        }
        lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        r.copy_within(n..have, 0);
        have -= n;
        done += batch as u64;
    }
    Ok((done, lat))
}

async fn read_frame(s: &mut TcpStream, r: &mut [u8], have: &mut usize) -> anyhow::Result<usize> {
    loop {
        if let Decoded::Frame(_, n) = proto::decode(&r[..*have])? {
            return Ok(n);
        }
        let k = s.read(&mut r[*have..]).await?;
        if k == 0 {
            bail!("CLS closed the connection");
        }
        *have += k;
    }
}

/// CPU seconds (user + system) used so far by the in-process server thread
/// (named "cls-server"), from /proc; None if not found.
fn server_cpu_secs() -> Option<f64> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "cls-server" {
            return stat_cpu_secs(&t.path().join("stat"));
        }
    }
    None
}

/// utime + stime of a /proc stat file, in seconds (assumes the usual 100
/// clock ticks per second).
fn stat_cpu_secs(path: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" that ends the command name: utime is the 12th,
    // stime the 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Decode → LBLL → encode, in memory, for each batch size.
fn micro(a: &Args, ids: &[[u8; 16]]) -> anyhow::Result<()> {
    use cls_server::sched::{Lbll, Mode, Params, ServerTable, TargetTable};
    println!(
        "cls-bench --micro: {} servers, {} targets, {} ms per step (no sockets)",
        a.servers, a.targets, a.ms
    );
    println!(
        "{:>6} {:>14} {:>12} {:>9} {:>16}",
        "batch", "lookups/s", "ns/lookup", "CPU", "lookups/CPU-s"
    );
    let me = std::path::Path::new("/proc/thread-self/stat");
    for &b in &a.batches {
        let mut servers = ServerTable::new(&vec![1; a.servers]);
        let dist = servers.add_distributor();
        let mut lbll = Lbll::new(
            Params {
                mode: Mode::Independent,
                t: 60.0,
                k: Duration::from_secs(60),
            },
            TargetTable::new(1_000_000, Duration::from_secs(3600)),
        );
        let (mut inb, mut out) = (Vec::new(), Vec::new());
        let mut k = 0usize;
        let mut done = 0u64;
        let t0 = Instant::now();
        let cpu0 = stat_cpu_secs(me);
        let until = t0 + Duration::from_millis(a.ms);
        while Instant::now() < until {
            for _ in 0..64 {
                inb.clear();
                let mut w = BatchWriter::lookup(&mut inb, 1);
                for _ in 0..b {
                    k = (k + 1) % ids.len();
                    w.push_lookup(&LookupItem {
                        id: ids[k],
                        flags: 0,
                        local_node: proto::NO_NODE,
                    });
                }
                w.finish();
                // The server's work starts here.
                let now = Instant::now();
                let Ok(Decoded::Frame(Frame::BatchLookup(req), _)) = proto::decode(&inb) else {
                    bail!("bad frame");
                };
                out.clear();
                let mut ans = BatchWriter::answer(&mut out, req.request_id);
                for it in req.items() {
                    let d = lbll.lookup(now, &it.id, it.flags, None, &servers);
                    if let proto::Answer::Server(n) = d.answer {
                        servers.assign(dist, n, 1);
                    }
                    ans.push_answer(d.answer);
                }
                ans.finish();
                // Completed requests: the distributor's report resets load.
                for s in 0..a.servers as u16 {
                    servers.report(dist, s, 0);
                }
                done += b as u64;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = match (cpu0, stat_cpu_secs(me)) {
            (Some(x), Some(y)) if y > x => Some(y - x),
            _ => None,
        };
        println!(
            "{:>6} {:>14.0} {:>12.1} {:>9} {:>16}",
            b,
            done as f64 / secs,
            secs * 1e9 / done as f64,
            cpu.map(|c| format!("{:.0}%", 100.0 * c / secs))
                .unwrap_or_else(|| "-".into()),
            cpu.map(|c| format!("{:.0}", done as f64 / c))
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    if a.micro {
        let ids: Vec<[u8; 16]> = (0..a.targets)
            .map(|i| content_id(format!("/dir{}/file{i}.html", i % 97).as_bytes()))
            .collect();
        return micro(&a, &ids);
    }
    let mut _server = None;
    let addr = match a.addr {
        Some(x) => x,
        None => {
            let mut t =
                String::from("[server]\nlisten = \"127.0.0.1:0\"\n[monitor]\nenabled = false\n");
            for i in 0..a.servers {
                t.push_str(&format!(
                    "[[servers]]\naddr = \"10.0.{}.{}:80\"\nprobe = \"none\"\n",
                    i / 250,
                    i % 250 + 1
                ));
            }
            let h = cls_server::spawn(Config::parse(&t)?)?;
            let addr = h.local_addr();
            _server = Some(h);
            addr
        }
    };
    let ids: Rc<Vec<[u8; 16]>> = Rc::new(
        (0..a.targets)
            .map(|i| content_id(format!("/dir{}/file{i}.html", i % 97).as_bytes()))
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        println!(
            "cls-bench: CLS {addr}, {} clients, {} ms per step, {} targets",
            a.clients, a.ms, a.targets
        );
        println!(
            "{:>6} {:>12} {:>10} {:>10} {:>10} {:>9} {:>16}",
            "batch", "lookups/s", "p50 µs", "p99 µs", "p99.9 µs", "srv CPU", "lookups/CPU-s"
        );
        for &b in &a.batches {
            let until = Instant::now() + Duration::from_millis(a.ms);
            let t0 = Instant::now();
            let cpu0 = server_cpu_secs();
            let mut set = tokio::task::JoinSet::new();
            for c in 0..a.clients {
                let ids = ids.clone();
                let off = c * ids.len() / a.clients.max(1);
                set.spawn_local(raw_client(addr, ids, off, b, until, a.servers, a.report));
            }
            let (mut total, mut lat) = (0u64, Vec::new());
            while let Some(r) = set.join_next().await {
                let (n, l) = r??;
                total += n;
                lat.extend(l);
            }
            let secs = t0.elapsed().as_secs_f64();
            let cpu = match (cpu0, server_cpu_secs()) {
                (Some(a), Some(b)) if b > a => Some(b - a),
                _ => None,
            };
            lat.sort_unstable();
            println!(
                "{:>6} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9} {:>16}",
                b,
                total as f64 / secs,
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                pct(&lat, 0.999),
                cpu.map(|c| format!("{:.0}%", 100.0 * c / secs))
                    .unwrap_or_else(|| "-".into()),
                cpu.map(|c| format!("{:.0}", total as f64 / c))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        // Single-lookup round trip through the real client.
        // A generous timeout: this measures latency, it does not fall back.
        let mut cc = ClientConfig::new(addr);
        cc.timeout = Duration::from_secs(1);
        let c = ClsClient::connect(cc);
        if !c.wait_connected(Duration::from_secs(2)).await {
            bail!("client could not connect");
        }
        let until = Instant::now() + Duration::from_millis(a.ms);
        let mut lat = Vec::new();
        let mut k = 0;
        let mut errors = 0u64;
        while Instant::now() < until {
            k = (k + 1) % ids.len();
            let t = Instant::now();
            if c.lookup(ids[k], 0, None).await.is_err() {
                errors += 1;
                continue;
            }
            lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        }
        lat.sort_unstable();
        println!(
            "ClsClient single lookup round trip: n={} errors={errors} p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999)
        );
        // Self-clocking batching: many concurrent callers on one client.
        for conc in [16usize, 256] {
            let before = c.stats();
            let until = Instant::now() + Duration::from_millis(a.ms);
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for t in 0..conc {
                let (c, ids) = (Rc::clone(&c), ids.clone());
                set.spawn_local(async move {
                    let (mut ok, mut err) = (0u64, 0u64);
                    let mut k = t * 7919;
                    while Instant::now() < until {
                        k = (k + 1) % ids.len();
                        match c.lookup(ids[k], 0, None).await {
                            Ok(_) => ok += 1,
                            Err(_) => err += 1,
                        }
                    }
                    (ok, err)
                });
            }
            let (mut ok, mut err) = (0u64, 0u64);
            while let Some(r) = set.join_next().await {
                let (o, e) = r?;
                ok += o;
                err += e;
            }
            let secs = t0.elapsed().as_secs_f64();
            let st = c.stats();
            let batches = (st.batches - before.batches).max(1);
            println!(
                "ClsClient, {conc} concurrent callers: {:.0} lookups/s, errors={err}, mean batch {:.1}",
                ok as f64 / secs,
                (st.answered - before.answered) as f64 / batches as f64
            );
        }
        anyhow::Ok(())
    })?;
    Ok(())
}
