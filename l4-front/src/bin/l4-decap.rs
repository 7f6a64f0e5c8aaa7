//! `l4-decap`: the VS/TUN real-server decapsulator (see `l4_front::decap`).

use anyhow::Context;
use std::net::Ipv4Addr;

const USAGE: &str = "usage: l4-decap --vip ADDR [--vip ADDR…] [--tun NAME]
  Receives IP-in-IP (protocol 4) with a raw socket and writes the inner
  packets whose destination is a VIP to TUN device NAME (default l4decap0).";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut vips = Vec::new();
    let mut tun = String::from("l4decap0");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vip" => {
                let v: Ipv4Addr = args
                    .next()
                    .context("--vip needs an address")?
                    .parse()
                    .context("--vip")?;
                vips.push(u32::from(v));
            }
            "--tun" => tun = args.next().context("--tun needs a name")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    anyhow::ensure!(!vips.is_empty(), "at least one --vip\n{USAGE}");
    let raw = l4_front::decap::open_ipip().context("raw IPPROTO_IPIP socket")?;
    let dev = l4_front::decap::open_tun(&tun).with_context(|| format!("TUN device {tun}"))?;
    tracing::info!(tun = %tun, vips = vips.len(), "l4-decap running");
    l4_front::decap::run(&raw, &dev, &vips).context("decap loop")?;
    Ok(())
}
