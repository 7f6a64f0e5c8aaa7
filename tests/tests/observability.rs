//! Observability through the real binary: the Prometheus endpoint (every
//! scrape must parse; counters move by exactly what the requests did) and
//! the access log (one well-formed line per request, pipelined and error
//! replies included; logrotate-style rename + SIGHUP). Every wait is
//! bounded; counters are polled because a request's counters are added
//! just after its response is sent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use tests::*;

const WAIT: Duration = Duration::from_secs(10);

/// The metrics page, checked line by line against the text exposition
/// format and parsed into `series → value` (the series as written: name
/// plus label set). Panics on any malformed line.
fn scrape(m: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect_timeout(&m, Duration::from_secs(2)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read metrics");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse_exposition(body).unwrap_or_else(|e| panic!("bad exposition: {e}\n{body}"))
}

/// A small parser of the Prometheus text format (0.0.4): comments must be
/// `# HELP name text` / `# TYPE name counter|gauge`, a sample `name` or
/// `name{l="v",…}` then a number; names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label
/// values with only `\\`, `\"`, `\n` escapes; each TYPE once, before its
/// samples; no series twice.
fn parse_exposition(text: &str) -> Result<HashMap<String, f64>, String> {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    };
    let mut typed = HashMap::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let (kw, name, tail) = (p.next(), p.next(), p.next());
            let name = name.ok_or(format!("comment without a name: {line}"))?;
            if !name_ok(name) {
                return Err(format!("bad name in {line}"));
            }
            match kw {
                Some("HELP") => {}
                Some("TYPE") => {
                    if !matches!(tail, Some("counter" | "gauge")) {
                        return Err(format!("bad type: {line}"));
                    }
                    if typed.insert(name.to_string(), ()).is_some() {
                        return Err(format!("TYPE twice: {line}"));
                    }
                }
                _ => return Err(format!("bad comment: {line}")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
        let name = match series.find('{') {
            None => series,
            Some(i) => {
                let labels = series[i + 1..]
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line}"))?;
                let mut rest = labels;
                while !rest.is_empty() {
                    let (l, v) = rest.split_once("=\"").ok_or(format!("bad label: {line}"))?;
                    if !name_ok(l) {
                        return Err(format!("bad label name: {line}"));
                    }
                    let mut chars = v.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, '\\' | '"' | 'n')) => {}
                                _ => return Err(format!("bad escape: {line}")),
                            },
                            Some((j, '"')) => break j,
                            Some((_, '\n')) | None => {
                                return Err(format!("unterminated label value: {line}"))
                            }
                            Some(_) => {}
                        }
                    };
                    rest = &v[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                &series[..i]
            }
        };
        if !name_ok(name) {
            return Err(format!("bad metric name: {line}"));
        }
        if !typed.contains_key(name) {
            return Err(format!("sample before its TYPE: {line}"));
        }
        if out.insert(series.to_string(), value).is_some() {
            return Err(format!("series twice: {line}"));
        }
    }
    Ok(out)
}

#[test]
fn the_exposition_parser_rejects_what_it_should() {
    assert!(parse_exposition("# TYPE a counter\na 1\na{k=\"v\\\"\"} 2\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err(), "sample before TYPE");
    assert!(parse_exposition("# TYPE a counter\na{k=\"v\"w\"} 2\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na{k=\"v\\x\"} 2\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na x\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na 1\na 2\n").is_err());
}

fn v(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in the scrape"))
}

/// `after - before` for each series.
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    v(after, series) - v(before, series)
}

fn metrics_cfg(servers: &[SocketAddr]) -> (Config, SocketAddr) {
    let mut cfg = Config::new("rr", servers);
    let m = free_addr();
    cfg.metrics = Some(m);
    (cfg, m)
}

#[test]
fn counters_move_by_what_the_requests_did() {
    let origin = Origin::start("o1");
    let (cfg, m) = metrics_cfg(&[origin.addr()]);
    let k = Ktcpvs::start(&cfg);
    let before = scrape(m);

    let mut c = k.client();
    let (mut sent, mut received) = (0usize, 0usize);
    for path in ["/size/100", "/size/5000", "/chunked/3000", "/status/404"] {
        let req = get(path);
        let r = c.roundtrip(&req);
        sent += req.len();
        received += r.raw.len();
        if path == "/status/404" {
            assert_eq!(r.status, 404);
        } else {
            assert_eq!(r.status, 200);
        }
    }
    // A malformed request: 400 and an error of kind `parse`.
    let bad = b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n";
    let mut c2 = k.client();
    c2.send(bad);
    let r = c2.read_response().expect("a 400");
    assert_eq!(r.status, 400);
    sent += bad.len();
    received += r.raw.len();

    let series = [
        ("ktcpvs_requests_total", 4.0),
        ("ktcpvs_responses_by_class_total{class=\"2xx\"}", 3.0),
        ("ktcpvs_responses_by_class_total{class=\"4xx\"}", 2.0),
        ("ktcpvs_responses_by_class_total{class=\"5xx\"}", 0.0),
        ("ktcpvs_errors_total{kind=\"parse\"}", 1.0),
        ("ktcpvs_errors_total{kind=\"connect\"}", 0.0),
        ("ktcpvs_client_bytes_received_total", sent as f64),
        ("ktcpvs_client_bytes_sent_total", received as f64),
        (
            "ktcpvs_server_requests_total{service=\"web\",server=\"SRV\"}",
            4.0,
        ),
        ("ktcpvs_service_requests_total{service=\"web\"}", 4.0),
    ];
    let srv = origin.addr().to_string();
    let mut after = scrape(m);
    let ok = wait_until(WAIT, || {
        after = scrape(m);
        series
            .iter()
            .all(|(s, d)| delta(&before, &after, &s.replace("SRV", &srv)) == *d)
    });
    let report: Vec<String> = series
        .iter()
        .map(|(s, d)| {
            let s = s.replace("SRV", &srv);
            format!("{s}: moved {} (want {d})", delta(&before, &after, &s))
        })
        .collect();
    assert!(ok, "{}", report.join("\n"));
    // What went to the server: the rewritten heads (longer: forwarding
    // headers) and what came back (at least the bodies the client got).
    assert!(delta(&before, &after, "ktcpvs_server_bytes_sent_total") > 0.0);
    assert!(delta(&before, &after, "ktcpvs_server_bytes_received_total") >= 8100.0);
    assert_eq!(origin.requests(), 4);
}

#[test]
fn a_dead_backend_counts_a_connect_error_and_a_5xx() {
    let dead = dead_addr();
    let (cfg, m) = metrics_cfg(&[dead]);
    let k = Ktcpvs::start(&cfg);
    let before = scrape(m);
    let r = k.client().roundtrip(&get("/"));
    assert!(r.status == 502 || r.status == 503, "status {}", r.status);
    let mut after = scrape(m);
    let ok = wait_until(WAIT, || {
        after = scrape(m);
        delta(
            &before,
            &after,
            "ktcpvs_responses_by_class_total{class=\"5xx\"}",
        ) == 1.0
    });
    assert!(
        ok,
        "5xx moved {}",
        delta(
            &before,
            &after,
            "ktcpvs_responses_by_class_total{class=\"5xx\"}"
        )
    );
    assert!(delta(&before, &after, "ktcpvs_errors_total{kind=\"connect\"}") >= 1.0);
    assert_eq!(delta(&before, &after, "ktcpvs_requests_total"), 0.0);
    assert_eq!(
        v(
            &after,
            &format!("ktcpvs_server_up{{service=\"web\",server=\"{dead}\"}}")
        ),
        0.0
    );
}

#[test]
fn a_failed_connect_is_reassigned_and_counted() {
    let origin = Origin::start("live");
    let dead = dead_addr();
    let (mut cfg, m) = metrics_cfg(&[dead, origin.addr()]);
    // One worker, rr: of two requests exactly one is first given to the
    // dead server (which is then out of rotation).
    cfg.workers = 1;
    let k = Ktcpvs::start(&cfg);
    let before = scrape(m);
    for _ in 0..2 {
        assert_eq!(k.client().roundtrip(&get("/size/5")).status, 200);
    }
    let mut after = scrape(m);
    let ok = wait_until(WAIT, || {
        after = scrape(m);
        delta(
            &before,
            &after,
            "ktcpvs_responses_by_class_total{class=\"2xx\"}",
        ) == 2.0
    });
    assert!(ok);
    assert_eq!(delta(&before, &after, "ktcpvs_reassigned_total"), 1.0);
    assert_eq!(
        delta(&before, &after, "ktcpvs_errors_total{kind=\"connect\"}"),
        1.0
    );
    assert_eq!(origin.requests(), 2);
}

/// One parsed access-log line.
#[derive(Debug)]
struct Line {
    ip: String,
    time: String,
    request: String,
    status: String,
    bytes: u64,
    referer: String,
    agent: String,
    server: String,
    micros: u64,
    id: String,
}

/// Parses `ip - - [time] "req" status bytes "ref" "ua" server micros id`;
/// panics (naming the line) if it is not well formed.
fn parse_line(l: &str) -> Line {
    let fail = || -> ! { panic!("malformed access-log line: {l:?}") };
    let (ip, rest) = l.split_once(" - - [").unwrap_or_else(|| fail());
    let (time, rest) = rest.split_once("] \"").unwrap_or_else(|| fail());
    // time: dd/Mon/yyyy:hh:mm:ss +0000
    let tb = time.as_bytes();
    if tb.len() != 26
        || tb[2] != b'/'
        || tb[6] != b'/'
        || tb[11] != b':'
        || !time.ends_with(" +0000")
    {
        fail()
    }
    let (request, rest) = rest.split_once("\" ").unwrap_or_else(|| fail());
    let mut p = rest.splitn(3, ' ');
    let status = p.next().unwrap_or_else(|| fail()).to_string();
    let bytes = p
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| fail());
    let rest = p.next().unwrap_or_else(|| fail());
    let rest = rest.strip_prefix('"').unwrap_or_else(|| fail());
    let (referer, rest) = rest.split_once("\" \"").unwrap_or_else(|| fail());
    let (agent, rest) = rest.split_once("\" ").unwrap_or_else(|| fail());
    let f: Vec<&str> = rest.split(' ').collect();
    if f.len() != 3 {
        fail()
    }
    let id = f[2].to_string();
    let (w, n) = id.split_once('-').unwrap_or_else(|| fail());
    if w.parse::<u32>().is_err() || n.parse::<u64>().is_err() {
        fail()
    }
    if request.contains('"') || referer.contains('"') || agent.contains('"') {
        fail()
    }
    Line {
        ip: ip.into(),
        time: time.into(),
        request: request.into(),
        status,
        bytes,
        referer: referer.into(),
        agent: agent.into(),
        server: f[0].into(),
        micros: f[1].parse().unwrap_or_else(|_| fail()),
        id,
    }
}

fn read_lines(p: &Path, want: usize) -> Vec<String> {
    let mut text = String::new();
    wait_until(WAIT, || {
        text = std::fs::read_to_string(p).unwrap_or_default();
        text.lines().count() >= want
    });
    text.lines().map(String::from).collect()
}

#[test]
fn access_log_has_one_line_per_request_and_follows_logrotate() {
    let origin = Origin::start("o1");
    let dir = tests::switch::scratch_dir();
    let log = dir.join("access.log");
    let mut cfg = Config::new("rr", &[origin.addr()]);
    cfg.access_log = Some(log.display().to_string());
    cfg.svc().request_id = true;
    let k = Ktcpvs::start(&cfg);

    // 1. Two requests on one connection, with Referer and User-Agent.
    let mut c = k.client();
    let req = request(
        "GET",
        "/size/321",
        &[
            ("Referer", "http://ref.example/p"),
            ("User-Agent", "obs-test/1 \"q\""),
        ],
        b"",
    );
    assert_eq!(c.roundtrip(&req).status, 200);
    assert_eq!(c.roundtrip(&get("/status/404")).status, 404);
    // 2. Three pipelined requests in one write.
    let mut c2 = k.client();
    let mut pipe = get("/size/10");
    pipe.extend_from_slice(&get("/chunked/77"));
    pipe.extend_from_slice(&get("/size/0"));
    c2.send(&pipe);
    for _ in 0..3 {
        assert_eq!(c2.read_response().expect("pipelined response").status, 200);
    }
    // 3. An error reply of the switch itself.
    let mut c3 = k.client();
    c3.send(b"BROKEN\r\n\r\n");
    assert_eq!(c3.read_response().expect("a 400").status, 400);

    let lines = read_lines(&log, 6);
    assert_eq!(lines.len(), 6, "{lines:#?}\n{}", k.stderr());
    let parsed: Vec<Line> = lines.iter().map(|l| parse_line(l)).collect();
    let srv = origin.addr().to_string();
    // The lines of different connections may interleave; find each.
    let find = |req: &str| {
        parsed
            .iter()
            .find(|p| p.request == req)
            .unwrap_or_else(|| panic!("no line for {req:?}: {lines:#?}"))
    };
    let a = find("GET /size/321 HTTP/1.1");
    assert_eq!((a.status.as_str(), a.bytes), ("200", 321));
    assert_eq!(a.referer, "http://ref.example/p");
    assert_eq!(a.agent, "obs-test/1 \\x22q\\x22");
    assert_eq!(a.server, srv);
    assert_eq!(a.ip, "127.0.0.1");
    let b = find("GET /status/404 HTTP/1.1");
    assert_eq!(
        (b.status.as_str(), b.referer.as_str(), b.agent.as_str()),
        ("404", "-", "-")
    );
    assert_eq!(
        (
            find("GET /size/10 HTTP/1.1").bytes,
            find("GET /size/0 HTTP/1.1").bytes
        ),
        (10, 0)
    );
    let ch = find("GET /chunked/77 HTTP/1.1");
    assert_eq!(ch.status, "200");
    assert!(ch.bytes >= 77, "chunked body bytes {}", ch.bytes);
    let e = find("BROKEN");
    assert_eq!((e.status.as_str(), e.server.as_str()), ("400", "-"));
    assert_eq!(e.bytes, "bad request\n".len() as u64);
    let mut ids: Vec<&str> = parsed.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "request ids must be unique: {lines:#?}");
    assert!(parsed
        .iter()
        .all(|p| p.micros < 60_000_000 && !p.time.is_empty()));
    // X-Request-Id (`request_id = true`): the server saw each forwarded
    // request's id, the one of its access-log line.
    let seen = origin.seen();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        let line = find(&format!("GET {} HTTP/1.1", s.target));
        assert_eq!(
            s.header("x-request-id"),
            Some(line.id.as_str()),
            "{}",
            s.target
        );
    }
    // One the client sent is passed on, not replaced.
    let mut c4 = k.client();
    let r = c4.roundtrip(&request(
        "GET",
        "/size/2",
        &[("X-Request-Id", "client-42")],
        b"",
    ));
    assert_eq!(r.status, 200);
    let last = origin.seen().pop().expect("seen");
    assert_eq!(last.headers_named("x-request-id"), vec!["client-42"]);
    // Every line written before the rotation (no line may be in flight).
    assert_eq!(read_lines(&log, 7).len(), 7);

    // 4. logrotate: rename, SIGHUP, the next lines go to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    k.signal(libc::SIGHUP);
    let ok = wait_until(WAIT, || {
        // Requests until the new file appears (the re-open happens on the
        // writer thread, asynchronously to the signal).
        let _ = k.client().roundtrip(&get("/size/1"));
        log.exists()
    });
    assert!(
        ok,
        "no new access log after rename + SIGHUP\n{}",
        k.stderr()
    );
    let new = read_lines(&log, 1);
    assert!(!new.is_empty());
    for l in &new {
        assert_eq!(parse_line(l).request, "GET /size/1 HTTP/1.1");
    }
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 7);
    assert!(old.lines().all(|l| !parse_line(l).request.is_empty()));
}

#[test]
fn access_log_lines_are_written_at_shutdown() {
    let origin = Origin::start("o1");
    let dir = tests::switch::scratch_dir();
    let log = dir.join("access.log");
    let mut cfg = Config::new("rr", &[origin.addr()]);
    cfg.access_log = Some(log.display().to_string());
    let mut k = Ktcpvs::start(&cfg);
    for _ in 0..3 {
        assert_eq!(k.client().roundtrip(&get("/size/3")).status, 200);
    }
    // At once: the lines are still in the worker's buffer (flushed every
    // 100 ms); a graceful stop must write them.
    let st = k.terminate(WAIT).expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.lines().count(), 3, "{text}");
    for l in text.lines() {
        assert_eq!(parse_line(l).request, "GET /size/3 HTTP/1.1");
    }
}
