//! `cls-server` binary: flags and config only; everything else is the
//! library (`cls_server::spawn`).
//!
//! Usage: cls-server [--config FILE] | --check FILE

use std::path::PathBuf;

use anyhow::{bail, Context};
use cls_server::Config;

/// Errors are printed as one line per cause (`a: b: c`), without the
/// backtrace `anyhow` would add under RUST_BACKTRACE, and exit with 1.
fn main() {
    if let Err(e) = real_main() {
        eprintln!("cls-server: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = PathBuf::from("configs/cls-server.toml");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--check" => {
                let p = PathBuf::from(args.next().context("--check needs a FILE")?);
                let c = Config::load(&p).with_context(|| format!("{}", p.display()))?;
                println!(
                    "{}: OK ({} servers, mode {:?}, listen {})",
                    p.display(),
                    c.servers.len(),
                    c.mode,
                    c.listen
                );
                return Ok(());
            }
            "--config" | "-c" => config = args.next().context("--config needs a FILE")?.into(),
            "--help" | "-h" => {
                println!("usage: cls-server [--config FILE] | --check FILE");
                return Ok(());
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = Config::load(&config).with_context(|| format!("{}", config.display()))?;
    let handle = cls_server::spawn(cfg)?;
    tracing::info!(addr = %handle.local_addr(), "cls-server started");
    // Wait for SIGINT or SIGTERM on a tiny runtime, then stop cleanly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("signal received; stopping");
    handle.shutdown();
    Ok(())
}
