//! The reference configuration, `configs/ktcpvs.toml`, as shipped (only its
//! addresses moved to free ports): with `ktcpvs origins` serving the three
//! real servers it names, it proxies, its content rules send images to the
//! "images" set, and its metrics endpoint answers.

use std::path::PathBuf;
use tests::*;

fn reference() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/ktcpvs.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Replaces the one occurrence of `from` in quotes.
fn moved(text: &str, from: &str, to: std::net::SocketAddr) -> String {
    let q = format!("\"{from}\"");
    assert_eq!(
        text.matches(&q).count(),
        1,
        "{q} should appear once in configs/ktcpvs.toml"
    );
    text.replace(&q, &format!("\"{to}\""))
}

#[test]
fn the_reference_configuration_serves_with_the_demo_origins() {
    let base = free_port_run(3);
    let port = |k: u16| std::net::SocketAddr::from(([127, 0, 0, 1], base.port() + k));
    let (listen, metrics) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("ktcpvs-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = reference();
    text = moved(&text, "127.0.0.1:8080", listen);
    text = moved(&text, "127.0.0.1:9100", metrics);
    for k in 0..3u16 {
        text = moved(&text, &format!("127.0.0.1:{}", 8081 + k), port(k));
    }
    let admin = dir.join("admin.sock");
    text = text.replacen(
        "[global]\n",
        &format!("[global]\nadmin_socket = \"{}\"\n", admin.display()),
        1,
    );
    let path = dir.join("ktcpvs.toml");
    std::fs::write(&path, &text).unwrap();

    let base_s = base.to_string();
    let _origins = Ktcpvs::run(&["origins", "--listen", &base_s], base)
        .unwrap_or_else(|e| panic!("ktcpvs origins: {e}"));
    let path_s = path.display().to_string();
    let k = Ktcpvs::run(&["--config", &path_s], listen)
        .unwrap_or_else(|e| panic!("ktcpvs --config (reference): {e}"));

    let mut c = k.client();
    for i in 0..8 {
        let r = c.roundtrip(&get(&format!("/page/{i}")));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            ["origin-1", "origin-2"].contains(&r.origin()),
            "/page/{i} went to {} (not in the default set)",
            r.origin()
        );
    }
    for p in ["/img/a", "/photos/b.png", "/c.JPG.jpeg"] {
        let r = c.roundtrip(&get(p));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.origin(), "origin-3", "{p} is for the images set");
    }
    let r = fetch(metrics, &get("/metrics")).expect("metrics endpoint");
    assert_eq!(r.status, 200);
    let body = r.body_str();
    let requests = body
        .lines()
        .find_map(|l| l.strip_prefix("ktcpvs_requests_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(requests, Some(11), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
