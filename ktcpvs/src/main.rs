//! The `ktcpvs` binary: flags and configuration in, [`ktcpvs::start`] out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "\
ktcpvs — a Layer-7 content switch on io_uring

USAGE:
    ktcpvs --config FILE        run the switch with this configuration
    ktcpvs --check FILE         check a configuration; exit 0 and print \"ok\" if valid
    ktcpvs quickstart [--listen ADDR] [--workers N]
                                run on ADDR (default 127.0.0.1:8080) in front of three
                                built-in demo origins on the next three ports
    ktcpvs origins [--listen ADDR] [--count N]
                                only the demo origins: N (default 3) on ADDR (default
                                127.0.0.1:8081) and the next ports — the real servers
                                configs/ktcpvs.toml names, for trying that file
    ktcpvs --help | --version

The reference configuration, every field commented, is configs/ktcpvs.toml.
RUST_LOG overrides the configured log filter. SIGTERM/SIGINT stop gracefully
(a second signal stops at once); SIGHUP re-reads the configuration file
(refused, with the reason logged, if it is invalid). `tcpvsadm` changes
services and servers at runtime through the admin socket.";

enum Cmd {
    Run(PathBuf),
    Check(PathBuf),
    Quickstart { listen: SocketAddr, workers: usize },
    Origins { listen: SocketAddr, count: usize },
}

fn parse_args() -> anyhow::Result<Option<Cmd>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let value = |it: &mut std::slice::Iter<String>, flag: &str| -> anyhow::Result<String> {
        it.next()
            .cloned()
            .with_context(|| format!("{flag} needs a value"))
    };
    let address = |v: String| -> anyhow::Result<SocketAddr> {
        v.parse()
            .with_context(|| format!("--listen: not an address ip:port: {v:?}"))
    };
    match it.next().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => Ok(None),
        Some("-V" | "--version") => {
            println!("ktcpvs {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        Some("-c" | "--config") => Ok(Some(Cmd::Run(value(&mut it, "--config")?.into()))),
        Some("--check") => Ok(Some(Cmd::Check(value(&mut it, "--check")?.into()))),
        Some("quickstart") => {
            let mut listen: SocketAddr = "127.0.0.1:8080".parse().expect("static address");
            let mut workers = 0;
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--listen" => listen = address(value(&mut it, "--listen")?)?,
                    "--workers" => {
                        let v = value(&mut it, "--workers")?;
                        workers = v
                            .parse()
                            .with_context(|| format!("--workers: not a number: {v:?}"))?;
                    }
                    other => bail!("unknown quickstart option {other:?}\n\n{USAGE}"),
                }
            }
            Ok(Some(Cmd::Quickstart { listen, workers }))
        }
        Some("origins") => {
            let mut listen: SocketAddr = "127.0.0.1:8081".parse().expect("static address");
            let mut count = 3;
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--listen" => listen = address(value(&mut it, "--listen")?)?,
                    "--count" => {
                        let v = value(&mut it, "--count")?;
                        count = match v.parse() {
                            Ok(n @ 1..=64) => n,
                            _ => bail!("--count: a number from 1 to 64, not {v:?}"),
                        };
                    }
                    other => bail!("unknown origins option {other:?}\n\n{USAGE}"),
                }
            }
            if listen.port() != 0 && usize::from(listen.port()) + count > 65536 {
                bail!("--listen port too high for {count} origins");
            }
            Ok(Some(Cmd::Origins { listen, count }))
        }
        Some(other) => bail!("unknown argument {other:?}\n\n{USAGE}"),
    }
}

fn init_logs(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread
/// started after (threads inherit the mask); [`wait_signals`] takes them.
fn block_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: plain POSIX signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block signals");
        }
        Ok(set)
    }
}

/// Waits for the blocked signals on a thread of its own: SIGHUP reloads
/// the configuration file, SIGINT/SIGTERM stop (a second one at once).
fn wait_signals(
    set: libc::sigset_t,
    tx: watch::Sender<bool>,
    rt: std::sync::Arc<ktcpvs::runtime::Runtime>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("ktcpvs-signals".into())
        .spawn(move || {
            let mut count = 0;
            loop {
                let mut sig = 0;
                // SAFETY: waits on the set built by block_signals.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if sig == libc::SIGHUP {
                    // Logged by reload either way (a refusal with its reason).
                    if let Ok(msg) = rt.reload() {
                        tracing::info!("SIGHUP: {msg}");
                    }
                    continue;
                }
                count += 1;
                if count == 1 {
                    tracing::info!(
                        signal = sig,
                        "shutting down: no new connections, finishing requests in flight"
                    );
                    let _ = tx.send(true);
                } else {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ktcpvs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let Some(cmd) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let cfg = match cmd {
        Cmd::Check(path) => {
            ktcpvs::Config::from_file(&path).with_context(|| format!("{}", path.display()))?;
            println!("ok");
            return Ok(());
        }
        Cmd::Run(path) => {
            let cfg =
                ktcpvs::Config::from_file(&path).with_context(|| format!("{}", path.display()))?;
            init_logs(&cfg.log);
            cfg
        }
        Cmd::Quickstart { listen, workers } => {
            init_logs("info");
            ktcpvs::check_io_uring()?;
            let first = if listen.port() == 0 {
                0
            } else {
                listen
                    .port()
                    .checked_add(1)
                    .context("--listen port too high")?
            };
            let origins = ktcpvs::quickstart::spawn_origins(listen.ip(), first, 3)
                .context("starting the demo origins")?;
            for (k, o) in origins.iter().enumerate() {
                tracing::info!(origin = %o, "demo origin-{} up", k + 1);
            }
            ktcpvs::quickstart::config(listen, workers, &origins)?
        }
        Cmd::Origins { listen, count } => {
            init_logs("info");
            let set = block_signals()?;
            let origins = ktcpvs::quickstart::spawn_origins(listen.ip(), listen.port(), count)
                .context("starting the demo origins")?;
            for (k, o) in origins.iter().enumerate() {
                tracing::info!("demo origin-{} on http://{o}/", k + 1);
            }
            // Until SIGINT/SIGTERM; SIGHUP has nothing to reload here.
            loop {
                let mut sig = 0;
                // SAFETY: waits on the set built by block_signals.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 && sig != libc::SIGHUP {
                    break;
                }
            }
            tracing::info!("stopped");
            return Ok(());
        }
    };
    let (tx, rx) = watch::channel(false);
    let set = block_signals()?;
    let running = ktcpvs::start(cfg, rx)?;
    wait_signals(set, tx, running.runtime.clone())?;
    for a in &running.addrs {
        tracing::info!("try: curl -i http://{a}/");
    }
    running.wait();
    tracing::info!("stopped");
    Ok(())
}
