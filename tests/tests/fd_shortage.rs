//! A switch out of descriptors (hard limit 60, more keep-alive clients
//! than it can hold): every client still gets an answer — 200, or 503 when
//! no descriptor is left for the server side — and the servers, which are
//! not at fault, stay in rotation. Before, the failed connects took every
//! server out ("real server down"), and all later requests got 503 "no
//! server available". Its own test binary: it points `KTCPVS_BIN` at a
//! wrapper that runs the switch under `prlimit --nofile=60:60`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tests::*;

#[test]
fn out_of_descriptors_answers_503_and_keeps_the_servers() {
    let real = ktcpvs_bin();
    let wrapper = tests::switch::scratch_dir().join("ktcpvs-60-fds");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=60:60 {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("KTCPVS_BIN", &wrapper);

    let os = origins(2);
    let mut cfg = Config::new("rr", &addrs(&os));
    cfg.workers = 1;
    let k = Ktcpvs::start(&cfg);

    for round in 0..1 {
        let mut conns: Vec<TcpStream> = (0..80)
            .map(|_| TcpStream::connect(k.addr()).expect("connect"))
            .collect();
        for c in &mut conns {
            c.write_all(&get("/fd")).unwrap();
        }
        let (mut ok, mut busy) = (0, 0);
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}, connection {i}: {e}"));
            match &buf {
                b"HTTP/1.1 200" => ok += 1,
                b"HTTP/1.1 503" => busy += 1,
                other => panic!(
                    "round {round}, connection {i}: {:?}",
                    String::from_utf8_lossy(other)
                ),
            }
            if i % 4 == 3 {
                // Some clients leave, so queued connections get their turn.
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        assert!(
            ok > 0 && busy > 0,
            "round {round}: {ok} answered, {busy} refused"
        );
    }
    assert!(
        !k.stderr().contains("real server down"),
        "a local shortage took servers out:\n{}",
        k.stderr()
    );
    assert!(
        k.stderr().contains("local resources exhausted"),
        "{}",
        k.stderr()
    );
}
