//! `ktcpvs --check FILE`: exit 0 and `ok` for valid configs (the reference
//! files in `configs/` included); non-zero with a message naming the
//! offending field otherwise (STYLE §11).

use std::path::PathBuf;
use tests::*;

/// A valid two-service config to mutate.
fn valid() -> String {
    r#"[global]
workers = 2

[limits]
max_header_bytes = 16384
client_header_timeout_ms = 10000
client_idle_timeout_ms = 60000

[[service]]
name = "web"
listen = "127.0.0.1:18080"
scheduler = "rr"

[service.forwarding]
x_forwarded_for = true
x_forwarded_proto = true
via = true

[service.pool]
max_idle_per_server = 64
idle_timeout_ms = 4000
connect_timeout_ms = 2000
response_timeout_ms = 30000

[[service.server]]
address = "127.0.0.1:19001"
weight = 1
low = 30
high = 60

[[service.server]]
address = "127.0.0.1:19002"
weight = 2
low = 30
high = 60

[[service]]
name = "img"
listen = "127.0.0.1:18081"
scheduler = "lblc"

[service.forwarding]
x_forwarded_for = false
x_forwarded_proto = false
via = false

[service.pool]
max_idle_per_server = 8
idle_timeout_ms = 1000
connect_timeout_ms = 500
response_timeout_ms = 5000

[[service.server]]
address = "127.0.0.1:19011"
weight = 1
low = 30
high = 60
"#
    .to_string()
}

fn refused_naming(toml: &str, field: &str) {
    let out = run_check(toml);
    assert!(
        !out.success(),
        "--check accepted a config with a bad {field}: {out:?}"
    );
    assert!(
        out.stderr.contains(field),
        "--check refused but did not name `{field}` on stderr: {out:?}"
    );
}

#[test]
fn check_accepts_a_valid_config_and_prints_ok() {
    let out = run_check(&valid());
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "ok", "{out:?}");
}

#[test]
fn check_accepts_the_harness_generated_config() {
    let cfg = Config::new("wlc", &[free_addr(), free_addr()]);
    let out = run_check(&cfg.to_toml(free_addr()));
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "ok", "{out:?}");
}

fn configs_dir() -> PathBuf {
    match std::env::var_os("KTCPVS_CONFIGS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs"),
    }
}

#[test]
fn check_accepts_every_reference_config() {
    let dir = configs_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reference configs directory {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("ktcpvs") && name.ends_with(".toml")
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no ktcpvs*.toml reference config in {}",
        dir.display()
    );
    for f in files {
        let out = run_check_file(&f);
        assert!(
            out.success(),
            "--check refused reference config {}: {out:?}",
            f.display()
        );
        assert_eq!(out.stdout.trim(), "ok", "{}: {out:?}", f.display());
    }
}

#[test]
fn check_refuses_a_negative_weight_naming_the_field() {
    let bad = valid().replacen("weight = 2", "weight = -1", 1);
    refused_naming(&bad, "service[0].server[1].weight");
}

#[test]
fn check_refuses_an_out_of_range_weight_naming_the_field() {
    let bad = valid().replacen("weight = 2", "weight = 70000", 1);
    refused_naming(&bad, "service[0].server[1].weight");
}

#[test]
fn check_refuses_an_unknown_scheduler_naming_the_field() {
    let bad = valid().replacen("scheduler = \"lblc\"", "scheduler = \"fastest\"", 1);
    refused_naming(&bad, "service[1].scheduler");
}

#[test]
fn check_refuses_a_bad_server_address_naming_the_field() {
    let bad = valid().replacen("127.0.0.1:19011", "not-an-address", 1);
    refused_naming(&bad, "service[1].server[0].address");
}

#[test]
fn check_refuses_a_bad_listen_address_naming_the_field() {
    let bad = valid().replacen("127.0.0.1:18080", "127.0.0.1:99999", 1);
    refused_naming(&bad, "service[0].listen");
}

#[test]
fn check_refuses_low_above_high_naming_the_server() {
    let bad = valid().replacen("low = 30\nhigh = 60", "low = 90\nhigh = 60", 1);
    let out = run_check(&bad);
    assert!(!out.success(), "--check accepted low > high: {out:?}");
    assert!(
        out.stderr.contains("service[0].server[0].low")
            || out.stderr.contains("service[0].server[0].high"),
        "the message should name service[0].server[0].low or .high: {out:?}"
    );
}

#[test]
fn check_refuses_a_missing_file_and_broken_toml() {
    let out = run_bin(
        &["--check".into(), "/nonexistent/ktcpvs-e2e.toml".into()],
        std::time::Duration::from_secs(10),
    );
    assert!(!out.success(), "{out:?}");
    // The file and the cause, each once.
    assert_eq!(
        out.stderr.trim(),
        "ktcpvs: /nonexistent/ktcpvs-e2e.toml: cannot read: No such file or directory (os error 2)",
        "{out:?}"
    );
    let out = run_check("[[service]\nname = ");
    assert!(!out.success(), "{out:?}");
    assert!(!out.stderr.trim().is_empty(), "no message: {out:?}");
}

#[test]
fn check_refuses_a_congestion_control_the_kernel_lacks_naming_the_field() {
    let bad = valid().replacen(
        "scheduler = \"rr\"",
        "scheduler = \"rr\"\nclient_congestion = \"no-such-cc\"",
        1,
    );
    refused_naming(&bad, "service[0].client_congestion");
    let bad = valid().replacen(
        "response_timeout_ms = 5000",
        "response_timeout_ms = 5000\ncongestion = \"not a name\"",
        1,
    );
    refused_naming(&bad, "service[1].pool.congestion");
}

#[test]
fn check_accepts_an_available_congestion_control() {
    // reno is always built in.
    let ok = valid().replacen(
        "scheduler = \"rr\"",
        "scheduler = \"rr\"\nclient_congestion = \"reno\"",
        1,
    );
    let ok = ok.replacen(
        "response_timeout_ms = 5000",
        "response_timeout_ms = 5000\ncongestion = \"reno\"",
        1,
    );
    let out = run_check(&ok);
    assert!(out.success(), "{out:?}");
}

#[test]
fn check_refuses_bad_upgrade_settings_naming_the_field() {
    let bad = valid().replacen("via = false", "via = false\nupgrade = \"yes\"", 1);
    refused_naming(&bad, "upgrade");
    let bad = valid().replacen(
        "client_idle_timeout_ms = 60000",
        "client_idle_timeout_ms = 60000\ntunnel_idle_timeout_ms = 0",
        1,
    );
    refused_naming(&bad, "limits.tunnel_idle_timeout_ms");
    let ok = valid().replacen("via = false", "via = false\nupgrade = false", 1);
    let out = run_check(&ok);
    assert!(out.success(), "{out:?}");
}
