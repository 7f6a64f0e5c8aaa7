//! `l4-front`: flags and configuration, then [`l4_front::run`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

const USAGE: &str = "usage: l4-front --config FILE [--check]
  --config FILE  TOML configuration (reference: configs/l4-front.toml)
  --check        validate the configuration and exit";

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SHUTDOWN.store(true, Ordering::Relaxed);
}

/// Errors are printed as one line per cause (`a: b: c`), without the
/// backtrace `anyhow` would add under RUST_BACKTRACE, and exit with 1.
fn main() {
    if let Err(e) = real_main() {
        eprintln!("l4-front: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let path = config.with_context(|| format!("--config is required\n{USAGE}"))?;
    let cfg = l4_front::config::Config::load(&path)
        .with_context(|| format!("configuration {}", path.display()))?;
    if check {
        println!("{}: ok ({} services)", path.display(), cfg.services.len());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || loop {
        if SHUTDOWN.load(Ordering::Relaxed) {
            s2.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
    l4_front::run(cfg, stop)?;
    Ok(())
}
