//! The switch raises its soft limit on open descriptors towards what its
//! configuration needs (a fresh login's soft limit is often 1,024; here
//! 256), so it serves more concurrent connections than the limit it was
//! started with. Its own test binary: the limit is per process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::*;

fn set_soft_nofile(n: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        let old = rl.rlim_cur;
        rl.rlim_cur = n.min(rl.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
        old
    }
}

#[test]
fn a_low_descriptor_limit_is_raised_and_600_connections_are_served() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.workers = 1;
    cfg.limits_keys = "max_connections = 2000\n".into();
    // The switch inherits a soft limit of 256 …
    let old = set_soft_nofile(256);
    let k = Ktcpvs::start(&cfg);
    set_soft_nofile(old);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", k.pid().unwrap())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files");
    assert!(soft > 256, "the limit stayed at {soft}:\n{limits}");
    assert!(
        k.stderr().contains("raised the open-descriptor limit"),
        "{}",
        k.stderr()
    );

    // … and serves 600 connections open at once.
    let mut conns: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(k.addr()).expect("connect"))
        .collect();
    for c in &mut conns {
        c.write_all(&get("/many")).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", k.stderr()));
        assert_eq!(&buf, b"HTTP/1.1 200", "connection {i}");
    }
}
