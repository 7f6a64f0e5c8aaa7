//! `l4adm`: the ipvsadm-style administration tool (see `l4_front::control`).
//! Listing options are handled here; changes are sent as they are written
//! (`ipvsadm ARGS…`) and parsed by the director, which applies them to the
//! running service table.

use anyhow::Context;
use std::path::PathBuf;

const USAGE: &str = "usage: l4adm [--socket PATH] COMMAND
  -L -n [--stats | --rate | --timeout]    list services, real servers, connections;
                                          counters; rates per second; timeouts
  -A -t|-u VIP:PORT [-s SCHED] [-p [SECS]] [-M MASK]
                                          add a virtual service (port 0: all
                                          ports, needs -p)
  -E -t|-u VIP:PORT [-s SCHED] [-p SECS] [-M MASK]
                                          edit a virtual service
  -D -t|-u VIP:PORT                       delete a virtual service
  -a -t|-u VIP:PORT -r RIP[:PORT] [-g|-i|-m] [-w W]
                                          add a real server (DR by default)
  -e -t|-u VIP:PORT -r RIP[:PORT] [-g|-i|-m] [-w W]
                                          edit a real server (-w 0 drains)
  -d -t|-u VIP:PORT -r RIP[:PORT]         delete a real server
  --set TCP TCPFIN UDP                    timeouts in seconds (0: unchanged)
  --socket PATH                           control socket (default /run/l4-front.sock)
Changes apply to the running director; existing connections keep their
real server and forwarding method. Schedulers: rr wrr lc wlc sh maglev.";

/// Errors as one line on stderr and exit status 1 (no backtrace, even
/// under RUST_BACKTRACE).
fn main() {
    if let Err(e) = real_main() {
        eprintln!("l4adm: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let mut socket = PathBuf::from("/run/l4-front.sock");
    let (mut list, mut stats, mut rate, mut timeout) = (false, false, false, false);
    let mut change = false;
    let mut passed: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().context("--socket PATH")?.into(),
            "-L" | "-l" | "--list" => list = true,
            "--stats" => stats = true,
            "--rate" => rate = true,
            "--timeout" => timeout = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => {
                if matches!(
                    a.as_str(),
                    "-A" | "-E"
                        | "-D"
                        | "-a"
                        | "-e"
                        | "-d"
                        | "--set"
                        | "--add-service"
                        | "--edit-service"
                        | "--delete-service"
                        | "--add-server"
                        | "--edit-server"
                        | "--delete-server"
                ) {
                    change = true;
                }
                if a.chars().any(char::is_whitespace) {
                    anyhow::bail!("argument {a:?} contains white space\n{USAGE}");
                }
                passed.push(a);
            }
        }
    }
    let req = if change {
        if list || stats || rate || timeout {
            anyhow::bail!("a change and a listing at once\n{USAGE}");
        }
        format!("ipvsadm {}", passed.join(" "))
    } else if let Some(a) = passed
        .iter()
        .find(|a| !matches!(a.as_str(), "-n" | "--numeric"))
    {
        anyhow::bail!("unknown argument {a:?}\n{USAGE}");
    } else if timeout {
        "timeout".to_string()
    } else if stats || rate {
        "stats".to_string()
    } else if list {
        "list".to_string()
    } else {
        anyhow::bail!("{USAGE}");
    };
    let answer = l4_front::control::request(&socket, &req).with_context(|| {
        format!(
            "control socket {} (is l4-front running, with director.control_socket \
                 set to it?)",
            socket.display()
        )
    })?;
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
