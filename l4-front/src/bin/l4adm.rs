//! `l4adm`: the ipvsadm-style administration tool (see `l4_front::control`).

use anyhow::Context;
use std::path::PathBuf;

const USAGE: &str = "usage: l4adm [--socket PATH] COMMAND
  -L -n [--stats | --rate]            list services, real servers, connections;
                                      counters; or rates per second
  -e -t VIP:PORT -r RIP:PORT -w W     edit a real server's weight (0 drains)
  --socket PATH                       control socket (default /run/l4-front.sock)
Services and real servers are added or deleted in the TOML configuration
(l4-front --config FILE --check, then restart).";

fn main() -> anyhow::Result<()> {
    let mut socket = PathBuf::from("/run/l4-front.sock");
    let (mut list, mut stats, mut edit, mut rate) = (false, false, false, false);
    let (mut vs, mut rs, mut weight) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().context("--socket PATH")?.into(),
            "-L" | "-l" | "--list" => list = true,
            "-n" | "--numeric" => {}
            "--stats" => stats = true,
            "--rate" => rate = true,
            "-e" | "--edit-server" => edit = true,
            "-t" | "--tcp-service" | "-u" | "--udp-service" => vs = args.next(),
            "-r" | "--real-server" => rs = args.next(),
            "-w" | "--weight" => weight = args.next(),
            "-a" | "-A" | "-d" | "-D" | "-E" => {
                anyhow::bail!("{a}: not supported at run time yet; edit the configuration\n{USAGE}")
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let req = if edit {
        let (Some(vs), Some(rs), Some(w)) = (vs, rs, weight) else {
            anyhow::bail!("-e needs -t VIP:PORT -r RIP:PORT -w WEIGHT\n{USAGE}");
        };
        format!("weight {vs} {rs} {w}")
    } else if stats || rate {
        "stats".to_string()
    } else if list {
        "list".to_string()
    } else {
        anyhow::bail!("{USAGE}");
    };
    let answer = l4_front::control::request(&socket, &req)
        .with_context(|| format!("control socket {}", socket.display()))?;
    match answer.strip_prefix("ok\n") {
        Some(body) if rate => {
            for l in body.lines().filter(|l| l.starts_with("rate.")) {
                println!("{l}");
            }
        }
        Some(body) => print!("{body}"),
        None if answer == "ok\n" || answer == "ok" => {}
        None => anyhow::bail!("{}", answer.trim()),
    }
    Ok(())
}
