//! The `l4-front` binary's answers to its operator, no namespaces needed:
//! the reference configuration checks clean, a bad field is named, a
//! missing interface is said once and plainly, each with exit status 1.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_l4-front"))
        .args(args)
        .output()
        .expect("l4-front");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn config(name: &str, director: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("l4cli-{}-{name}.toml", std::process::id()));
    std::fs::write(
        &p,
        format!(
            "[director]\n{director}\n[[service]]\nvip = \"10.1.1.1\"\nport = 80\n\
             [[service.real_server]]\naddress = \"10.1.1.2\"\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn the_reference_configuration_checks_clean() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/l4-front.toml");
    let (code, err) = run(&["--config", reference, "--check"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_bad_field_is_named_and_refused() {
    let p = config("workers", "interface = \"d0\"\nworkers = 1000");
    let (code, err) = run(&["--config", p.to_str().unwrap(), "--check"]);
    assert_eq!(code, 1);
    let _ = std::fs::remove_file(&p);
    assert!(err.contains("director.workers: at most 256"), "{err}");
    let p = config("xdp", "interface = \"d0\"\nxdp = \"yes\"");
    let (code, err) = run(&["--config", p.to_str().unwrap(), "--check"]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(code, 1);
    assert!(
        err.contains("xdp") && err.contains("expected a boolean"),
        "{err}"
    );
}

#[test]
fn a_missing_interface_is_said_once() {
    let p = config("iface", "interface = \"nonexist0\"\nxdp = true");
    let (code, err) = run(&["--config", p.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        "l4-front: interface nonexist0: no such network interface",
        "one line, the cause once"
    );
}

#[test]
fn a_missing_file_or_socket_is_one_line_without_a_backtrace() {
    let (code, err) = run(&["--config", "/nonexistent/l4.toml"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "l4-front: configuration /nonexistent/l4.toml: cannot read: No such file or directory (os error 2)"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_l4adm"))
        .args(["--socket", "/nonexistent/l4.sock", "-L", "-n"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("l4adm");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("l4adm: control socket /nonexistent/l4.sock (is l4-front running"),
        "{err}"
    );
}
