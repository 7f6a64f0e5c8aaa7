//! Scheduler decision cost (issue 3, item 6): every scheduler with 3, 30
//! and 300 servers; lblc and lblcr with 1 M live targets in their
//! locality table; the table's memory per entry; and a check that a
//! decision allocates nothing.
//!
//! ```text
//! cargo bench -p ktcpvs --bench schedulers -- --warm-up-time 1 --measurement-time 3
//! ```
//! The memory and allocation figures are printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ktcpvs::sched::lblc::LocalityTable;
use ktcpvs::sched::{Exclude, Request, Scheduler, SchedulerKind, Server};

/// Counts allocations, to show that a decision makes none.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TARGETS: usize = 1 << 20; // 1 M live targets
const SIZES: [usize; 3] = [3, 30, 300];

fn kinds() -> Vec<SchedulerKind> {
    [
        "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "chash", "maglev",
    ]
    .iter()
    .map(|n| SchedulerKind::parse(n).unwrap())
    .collect()
}

/// `n` servers with mixed weights and loads below their low threshold.
fn servers(n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| {
            let s = Server::new(
                SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)),
                1 + (i % 4) as u32,
                30,
                60,
            );
            s.conns.store((i * 7 % 20) as u32, Relaxed);
            s
        })
        .collect()
}

/// Well-spread target hashes (what `target_hash` gives real paths).
fn hashes() -> Vec<u64> {
    (0..TARGETS as u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 29;
            x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
        })
        .collect()
}

fn req(hash: u64, k: usize) -> Request<'static> {
    Request {
        target: b"/bench/object.html",
        target_hash: hash,
        peer: IpAddr::from((0x0a00_0000u32 + (k as u32 & 0xffff)).to_be_bytes()),
    }
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A scheduler for `kind` with the 1 M targets already in its table
/// (sized by the default `max_entries`, 1 M).
fn warmed(kind: SchedulerKind, s: &[Server], hs: &[u64]) -> Box<dyn Scheduler> {
    let table = Arc::new(LocalityTable::for_kind(kind, TARGETS));
    let mut sched = kind.build(&table);
    if kind.capped() {
        for (k, &h) in hs.iter().enumerate() {
            sched.pick(s, &req(h, k), Exclude::NONE);
        }
        // lblc's buckets may have evicted a few (full buckets).
        assert!(table.len() >= hs.len() * 98 / 100, "{}", table.len());
    } else {
        sched.pick(s, &req(hs[0], 0), Exclude::NONE);
    }
    sched
}

fn memory_and_allocations(hs: &[u64]) {
    let s = servers(30);
    let mut keep = Vec::new(); // freed memory would be reused by the next
    for name in ["lblc", "lblcr"] {
        let kind = SchedulerKind::parse(name).unwrap();
        let before = rss();
        let table = Arc::new(LocalityTable::for_kind(kind, TARGETS));
        let mut sched = kind.build(&table);
        for (k, &h) in hs.iter().enumerate() {
            sched.pick(&s, &req(h, k), Exclude::NONE);
        }
        let used = rss().saturating_sub(before);
        println!(
            "locality table ({name}): {} entries, {:.1} MiB resident, {:.0} bytes/entry (array: {} MiB, sized for max_entries = {})",
            table.len(),
            used as f64 / (1 << 20) as f64,
            used as f64 / table.len() as f64,
            table.slot_bytes() >> 20,
            TARGETS
        );
        keep.push(table);
    }
    drop(keep);
    for n in SIZES {
        let s = servers(n);
        for kind in kinds() {
            let mut sched = warmed(kind, &s, if kind.capped() { hs } else { &hs[..1] });
            let a0 = ALLOCS.load(Relaxed);
            for k in 0..100_000 {
                black_box(sched.pick(&s, &req(hs[k % hs.len()], k), Exclude::NONE));
            }
            let a = ALLOCS.load(Relaxed) - a0;
            println!(
                "allocations in 100000 decisions: {:>6} with {n:>3} servers: {a}",
                kind.name()
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let hs = hashes();
    memory_and_allocations(&hs);
    let mut g = c.benchmark_group("decision");
    for n in SIZES {
        let s = servers(n);
        for kind in kinds() {
            // lblc/lblcr: decisions over 1 M live targets; the others see
            // the same target stream.
            let mut sched = warmed(kind, &s, &hs);
            let mut k = 0usize;
            g.bench_function(BenchmarkId::new(kind.name(), n), |b| {
                b.iter(|| {
                    k = (k + 1) & (TARGETS - 1);
                    black_box(sched.pick(&s, &req(hs[k], k), Exclude::NONE))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
