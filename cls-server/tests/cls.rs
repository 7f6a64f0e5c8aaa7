//! End-to-end tests: the real server (`cls_server::spawn`) on 127.0.0.1:0
//! driven by the real client, plus raw-socket fault injection.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cls_server::proto::{self, content_id, flags, Answer, Decoded, Frame};
use cls_server::{spawn, ClientConfig, ClsClient, ClsError, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(listen: SocketAddr, extra: &str, servers: &[SocketAddr], probe: &str) -> Config {
    let mut t =
        format!("[server]\nlisten = \"{listen}\"\n[scheduler]\nthreshold = 1000\n{extra}\n");
    for s in servers {
        t.push_str(&format!(
            "[[servers]]\naddr = \"{s}\"\nprobe = \"{probe}\"\n"
        ));
    }
    Config::parse(&t).unwrap()
}

fn four_servers() -> Vec<SocketAddr> {
    (1..=4)
        .map(|i| format!("127.0.0.{i}:8080").parse().unwrap())
        .collect()
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn client_config(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(addr);
    c.timeout = Duration::from_millis(500);
    c.backoff_min = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(50);
    c
}

/// Runs `f` on a current-thread runtime inside a LocalSet (as tokio-uring does).
fn local<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}

#[test]
fn concurrent_lookups_are_batched_and_answered() {
    let h = spawn(config(
        any(),
        "[monitor]\nenabled = false",
        &four_servers(),
        "none",
    ))
    .unwrap();
    let addr = h.local_addr();
    local(async move {
        let c = ClsClient::connect(client_config(addr));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        let addrs: Vec<SocketAddr> = c.servers().iter().map(|e| e.addr).collect();
        assert_eq!(addrs, four_servers());
        assert_eq!(c.server_addr(3), Some(four_servers()[3]));
        assert_eq!(c.server_addr(4), None);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..1000u32 {
            let c = Rc::clone(&c);
            set.spawn_local(async move {
                let id = content_id(format!("/file{}", i % 100).as_bytes());
                (i % 100, c.lookup(id, 0, None).await)
            });
        }
        let mut placed = std::collections::HashMap::new();
        while let Some(r) = set.join_next().await {
            let (t, a) = r.unwrap();
            let Ok(Answer::Server(s)) = a else {
                panic!("{a:?}")
            };
            assert!(s < 4);
            // Locality: one target, one server (loads stay below T).
            assert_eq!(*placed.entry(t).or_insert(s), s, "target {t}");
        }
        let m = h.metrics().snapshot();
        assert_eq!(m.lookups, 1000);
        assert!(m.batches < 50, "1000 lookups took {} batches", m.batches);
        let st = c.stats();
        assert_eq!(st.answered, 1000);
        assert_eq!(st.batches, m.batches);
        // Targets are spread over the servers (least loaded first).
        let mut per = [0; 4];
        for s in placed.values() {
            per[*s as usize] += 1;
        }
        assert!(per.iter().all(|&n| n > 0), "{per:?}");
        // A load report reaches the CLS.
        c.report_load(&[(0, 5), (1, 0)]);
        let t0 = Instant::now();
        while h.metrics().snapshot().load_reports == 0 {
            assert!(t0.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A single lookup on an idle connection is its own batch.
        let before = h.metrics().snapshot().batches;
        c.lookup([7; 16], flags::DYNAMIC, None).await.unwrap();
        assert_eq!(h.metrics().snapshot().batches, before + 1);
        assert_eq!(c.pending(), 0, "answered lookups left their cells behind");
        // Callers that stop waiting (their lookup future dropped after it
        // queued) free their cells too, and the others are still answered.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let c = Rc::clone(&c);
            set.spawn_local(async move {
                let l = c.lookup(content_id(format!("/gone{i}").as_bytes()), 0, None);
                if i % 2 == 0 {
                    // Polled once (queued), then dropped.
                    let _ = tokio::time::timeout(Duration::ZERO, l).await;
                    None
                } else {
                    Some(l.await)
                }
            });
        }
        while let Some(r) = set.join_next().await {
            if let Some(a) = r.unwrap() {
                assert!(matches!(a, Ok(Answer::Server(_))), "{a:?}");
            }
        }
        // Cells of dropped lookups are freed when the driver reaches them.
        c.lookup([8; 16], 0, None).await.unwrap();
        assert_eq!(c.pending(), 0, "abandoned lookups left their cells behind");
    });
}

#[test]
fn cache_mode_answers_origin_for_non_cacheable() {
    let h = spawn(config(
        any(),
        "mode = \"cache\"\n[monitor]\nenabled = false",
        &four_servers(),
        "none",
    ))
    .unwrap();
    let addr = h.local_addr();
    local(async move {
        let c = ClsClient::connect(client_config(addr));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        let id = content_id(b"/cgi-bin/x");
        assert_eq!(c.lookup(id, 0, None).await, Ok(Answer::Origin));
        assert!(matches!(
            c.lookup(id, flags::CACHEABLE, None).await,
            Ok(Answer::Server(_))
        ));
    });
}

/// Reads frames until EOF; returns the frame types seen.
async fn read_until_closed(s: &mut TcpStream) -> Vec<Frame<'static>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Duration::from_secs(2);
    loop {
        match tokio::time::timeout(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("connection not closed"),
        }
    }
    let mut out = Vec::new();
    let mut rest: &[u8] = &buf;
    while let Ok(Decoded::Frame(f, n)) = proto::decode(rest) {
        // Keep only the frame kinds we assert on (owned forms).
        out.push(match f {
            Frame::Error(c) => Frame::Error(c),
            Frame::Hello(h) => Frame::Hello(h),
            _ => Frame::Error(0xffff),
        });
        rest = &rest[n..];
    }
    out
}

#[test]
fn malformed_frame_closes_only_that_connection() {
    let h = spawn(config(
        any(),
        "[monitor]\nenabled = false",
        &four_servers(),
        "none",
    ))
    .unwrap();
    let addr = h.local_addr();
    local(async move {
        let c = ClsClient::connect(client_config(addr));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        assert!(c.lookup([1; 16], 0, None).await.is_ok());

        // 1. Hello, then garbage.
        let mut bad = TcpStream::connect(addr).await.unwrap();
        let mut b = Vec::new();
        proto::encode_hello(
            &mut b,
            &proto::Hello {
                version: proto::VERSION,
                distributor_id: 9,
                node_id: proto::NO_NODE,
            },
        );
        b.extend_from_slice(&[0, 0, 0, 3, 0x7f, 1, 2]);
        bad.write_all(&b).await.unwrap();
        let frames = read_until_closed(&mut bad).await;
        assert_eq!(
            frames.last(),
            Some(&Frame::Error(proto::error_code::MALFORMED))
        );

        // 2. An oversized length prefix alone is refused (nothing buffered).
        let mut big = TcpStream::connect(addr).await.unwrap();
        big.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        read_until_closed(&mut big).await;

        // 3. A batch before Hello.
        let mut early = TcpStream::connect(addr).await.unwrap();
        let mut b = Vec::new();
        let mut w = proto::BatchWriter::lookup(&mut b, 1);
        w.push_lookup(&proto::LookupItem {
            id: [0; 16],
            flags: 0,
            local_node: proto::NO_NODE,
        });
        w.finish();
        early.write_all(&b).await.unwrap();
        assert_eq!(
            read_until_closed(&mut early).await.last(),
            Some(&Frame::Error(proto::error_code::EXPECTED_HELLO))
        );

        // The well-behaved distributor is unaffected.
        for i in 0..100u8 {
            assert!(c.lookup([i; 16], 0, None).await.is_ok());
        }
        assert_eq!(c.stats().connects, 1);
        let m = h.metrics().snapshot();
        assert_eq!(m.malformed_frames, 3);
        assert_eq!(m.connections_open, 1);
    });
}

#[test]
fn cls_killed_then_restarted_client_fails_fast_and_reconnects() {
    let h = spawn(config(
        any(),
        "[monitor]\nenabled = false",
        &four_servers(),
        "none",
    ))
    .unwrap();
    let addr = h.local_addr();
    local(async move {
        let c = ClsClient::connect(client_config(addr));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        assert!(c.lookup([1; 16], 0, None).await.is_ok());

        h.shutdown();
        // Every lookup now fails quickly (no waiting for the timeout).
        let t0 = Instant::now();
        let mut errors = 0;
        while t0.elapsed() < Duration::from_millis(100) {
            let t = Instant::now();
            match c.lookup([2; 16], 0, None).await {
                Err(e) => {
                    assert!(
                        matches!(e, ClsError::Unavailable | ClsError::Disconnected),
                        "{e:?}"
                    );
                    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
                    errors += 1;
                }
                Ok(a) => panic!("answer from a dead CLS: {a:?}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(errors > 5);
        assert!(!c.is_connected());
        // (A reconnect attempt may still have been accepted by the
        // listener while it was shutting down, and counted.)
        let before = c.stats().connects;

        // Restart on the same port: the client comes back by itself.
        let h2 = spawn(config(
            addr,
            "[monitor]\nenabled = false",
            &four_servers(),
            "none",
        ))
        .unwrap();
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        assert!(c.lookup([3; 16], 0, None).await.is_ok());
        assert!(
            c.stats().connects > before,
            "{} vs {before}",
            c.stats().connects
        );
        drop(h2);
    });
}

#[test]
fn monitor_fails_and_readmits_a_server() {
    local(async move {
        // Two real backends on loopback; server 0 will go away and come back.
        let b0 = tokio::net::TcpListener::bind(any()).await.unwrap();
        let b1 = tokio::net::TcpListener::bind(any()).await.unwrap();
        let a0 = b0.local_addr().unwrap();
        let a1 = b1.local_addr().unwrap();
        let accept = |l: tokio::net::TcpListener| async move {
            loop {
                let _ = l.accept().await;
            }
        };
        let t0 = tokio::task::spawn_local(accept(b0));
        let _t1 = tokio::task::spawn_local(accept(b1));
        let h = spawn(config(
            any(),
            "[monitor]\ninterval_ms = 30\nprobe_timeout_ms = 20\nfail_after = 1\nreadmit_after = 1",
            &[a0, a1],
            "tcp",
        ))
        .unwrap();
        let wait_alive = |n: u64| {
            let m = h.metrics().clone();
            async move {
                let t = Instant::now();
                while m.snapshot().servers_alive != n {
                    assert!(t.elapsed() < Duration::from_secs(3), "never {n} alive");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_alive(2).await;
        t0.abort();
        let _ = t0.await;
        wait_alive(1).await;
        let c = ClsClient::connect(client_config(h.local_addr()));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        for i in 0..20u8 {
            assert_eq!(c.lookup([i; 16], 0, None).await, Ok(Answer::Server(1)));
        }
        let b0 = tokio::net::TcpListener::bind(a0).await.unwrap();
        let _t0 = tokio::task::spawn_local(accept(b0));
        wait_alive(2).await;
        let m = h.metrics();
        assert!(m.server_failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        assert!(
            m.server_readmissions
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    });
}

#[test]
fn colocated_distributors_get_their_own_node() {
    let h = spawn(config(
        any(),
        "mode = \"colocated\"\n[monitor]\nenabled = false",
        &four_servers(),
        "none",
    ))
    .unwrap();
    let addr = h.local_addr();
    local(async move {
        let mut c0 = client_config(addr);
        c0.node_id = Some(2);
        let c0 = ClsClient::connect(c0);
        let mut c1 = client_config(addr);
        c1.node_id = Some(3);
        let c1 = ClsClient::connect(c1);
        assert!(c0.wait_connected(Duration::from_secs(2)).await);
        assert!(c1.wait_connected(Duration::from_secs(2)).await);
        // New targets go to the asking distributor's own node (Hello.node_id).
        assert_eq!(c0.lookup([1; 16], 0, None).await, Ok(Answer::Server(2)));
        assert_eq!(c1.lookup([2; 16], 0, None).await, Ok(Answer::Server(3)));
        // A target already placed stays where it is while under T.
        assert_eq!(c1.lookup([1; 16], 0, None).await, Ok(Answer::Server(2)));
        // The per-lookup local node overrides the Hello's.
        assert_eq!(c0.lookup([3; 16], 0, Some(1)).await, Ok(Answer::Server(1)));
    });
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    // Find a free port for the metrics listener.
    let m = std::net::TcpListener::bind(any()).unwrap();
    let maddr = m.local_addr().unwrap();
    drop(m);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"{maddr}\"\n[monitor]\nenabled = false\n[[servers]]\naddr = \"127.0.0.1:1\"\nprobe = \"none\"\n"
    );
    let h = spawn(Config::parse(&text).unwrap()).unwrap();
    let addr = h.local_addr();
    local(async move {
        let c = ClsClient::connect(client_config(addr));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        c.lookup([1; 16], 0, None).await.unwrap();
        let mut s = TcpStream::connect(maddr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("\ncls_lookups_total 1\n"), "{body}");
        assert!(body.contains("\ncls_connections_open 1\n"), "{body}");
    });
}

#[test]
fn hung_cls_lookups_time_out_and_the_connection_is_dropped() {
    local(async move {
        // A fake CLS that completes the Hello exchange and then never answers.
        let l = tokio::net::TcpListener::bind(any()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let _fake = tokio::task::spawn_local(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await;
                let mut ack = Vec::new();
                proto::encode_hello_ack(&mut ack, 1024, &[]);
                let _ = s.write_all(&ack).await;
                held.push(s); // keep it open, silent
            }
        });
        let mut cfg = client_config(addr);
        cfg.timeout = Duration::from_millis(30);
        cfg.batch_timeout = Duration::from_millis(200);
        let c = ClsClient::connect(cfg);
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        // A is sent and never answered; B and C queue behind it. All three
        // fail with Timeout at their own deadline, not at batch_timeout.
        let timed = |c: Rc<ClsClient>, i: u8| async move {
            let t = Instant::now();
            let r = c.lookup([i; 16], 0, None).await;
            (r, t.elapsed())
        };
        let a = tokio::task::spawn_local(timed(c.clone(), 1));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = tokio::task::spawn_local(timed(c.clone(), 2));
        let cc = tokio::task::spawn_local(timed(c.clone(), 3));
        for h in [a, b, cc] {
            let (r, el) = h.await.unwrap();
            assert_eq!(r, Err(ClsError::Timeout));
            assert!(el >= Duration::from_millis(29), "{el:?}");
            assert!(el < Duration::from_millis(100), "{el:?}");
        }
        // After batch_timeout the client gives up on the connection; while it
        // is down lookups fail at once instead of waiting.
        let t = Instant::now();
        while c.is_connected() {
            assert!(t.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        let r = c.lookup([2; 16], 0, None).await;
        if r == Err(ClsError::Unavailable) {
            assert!(t.elapsed() < Duration::from_millis(50));
        }
        assert!(r.is_err());
        assert!(c.stats().failed >= 4);
    });
}

#[test]
fn http_probe_fails_a_5xx_server_and_keeps_a_2xx_one() {
    local(async move {
        // Two tiny HTTP backends: one healthy, one answering 503.
        let serve = |status: &'static str| async move {
            let l = tokio::net::TcpListener::bind(any()).await.unwrap();
            let a = l.local_addr().unwrap();
            tokio::task::spawn_local(async move {
                loop {
                    let Ok((mut s, _)) = l.accept().await else {
                        continue;
                    };
                    let mut b = [0u8; 512];
                    let _ = s.read(&mut b).await;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                }
            });
            a
        };
        let ok = serve("200 OK").await;
        let bad = serve("503 Service Unavailable").await;
        let h = spawn(config(
            any(),
            "[monitor]\ninterval_ms = 30\nprobe_timeout_ms = 20\nfail_after = 1",
            &[bad, ok],
            "http",
        ))
        .unwrap();
        let t = Instant::now();
        while h.metrics().snapshot().servers_alive != 1 {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "503 server never failed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c = ClsClient::connect(client_config(h.local_addr()));
        assert!(c.wait_connected(Duration::from_secs(2)).await);
        assert_eq!(c.lookup([1; 16], 0, None).await, Ok(Answer::Server(1)));
    });
}

/// The binary's answer to a configuration it cannot read: the file and the
/// cause, each once, exit status 1.
#[test]
fn a_missing_configuration_is_one_line() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cls-server"))
        .args(["--config", "/nonexistent/cls.toml"])
        .output()
        .expect("cls-server");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "cls-server: /nonexistent/cls.toml: cannot read: No such file or directory (os error 2)"
    );
}
