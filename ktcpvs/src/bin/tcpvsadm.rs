//! `tcpvsadm`: administers a running ktcpvs through its admin socket,
//! with ipvsadm's options. Each invocation sends one request line (see
//! ARCHITECTURE.md, "Runtime administration") and prints the reply.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
tcpvsadm — administer a running ktcpvs (ipvsadm-like)

USAGE:
    tcpvsadm -A -t host:port [-s scheduler] [--name NAME]   add a virtual service
    tcpvsadm -E -t service -s scheduler                     edit a virtual service
    tcpvsadm -D -t service                                  delete a virtual service
    tcpvsadm -a -t service -r host:port [-w weight] [-x high] [-y low]
                                                            add a real server
    tcpvsadm -e -t service -r host:port [-w weight] [-x high] [-y low]
                                                            edit a real server
    tcpvsadm -d -t service -r host:port                     delete a real server
    tcpvsadm -L|-l [-n] [--stats] [--json] [-t service]     list (with counters)
    tcpvsadm -Z [-t service]                                zero the listed counters
    tcpvsadm reload | -R                                    re-read the configuration file

A service is named by its listen address or its name. Options:
    -S, --socket PATH   the switch's admin socket (global.admin_socket);
                        default $KTCPVS_ADMIN_SOCKET, else /run/ktcpvs.sock
    -s  rr | wrr | lc | wlc | lblc          -w  weight (0 drains)
    -x  upper threshold (high)              -y  lower threshold (low)
Exit status: 0 done, 1 refused by the switch, 2 usage error, 3 switch unreachable.";

enum Fail {
    Usage(String),
    Refused(String),
    Unreachable(String),
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(Fail::Usage(m)) => {
            eprintln!("tcpvsadm: {m}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Fail::Refused(m)) => {
            eprintln!("tcpvsadm: {m}");
            ExitCode::from(1)
        }
        Err(Fail::Unreachable(m)) => {
            eprintln!("tcpvsadm: {m}");
            ExitCode::from(3)
        }
    }
}

#[derive(Default)]
struct Opts {
    cmd: Option<&'static str>,
    service: Option<String>,
    server: Option<String>,
    scheduler: Option<String>,
    name: Option<String>,
    weight: Option<String>,
    high: Option<String>,
    low: Option<String>,
    stats: bool,
    json: bool,
    socket: Option<String>,
}

fn run(args: Vec<String>) -> Result<String, Fail> {
    let mut o = Opts::default();
    let mut it = args.into_iter();
    let usage = |m: String| Fail::Usage(m);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        let cmd = match a.as_str() {
            "-A" | "--add-service" => Some("add-service"),
            "-E" | "--edit-service" => Some("edit-service"),
            "-D" | "--delete-service" => Some("del-service"),
            "-a" | "--add-server" => Some("add-server"),
            "-e" | "--edit-server" => Some("edit-server"),
            "-d" | "--delete-server" => Some("del-server"),
            "-L" | "-l" | "--list" => Some("list"),
            "-Z" | "--zero" => Some("zero"),
            "-R" | "reload" | "--reload" => Some("reload"),
            "-h" | "--help" | "help" => return Ok(format!("{USAGE}\n")),
            _ => None,
        };
        if let Some(c) = cmd {
            if let Some(prev) = o.cmd {
                return Err(usage(format!("two commands given ({prev}, {a})")));
            }
            o.cmd = Some(c);
            continue;
        }
        match a.as_str() {
            "-t" | "--tcp-service" => o.service = Some(value("-t")?),
            "-r" | "--real-server" => o.server = Some(value("-r")?),
            "-s" | "--scheduler" => o.scheduler = Some(value("-s")?),
            "-w" | "--weight" => o.weight = Some(value("-w")?),
            "-x" | "--u-threshold" => o.high = Some(value("-x")?),
            "-y" | "--l-threshold" => o.low = Some(value("-y")?),
            "--name" => o.name = Some(value("--name")?),
            "-S" | "--socket" => o.socket = Some(value("-S")?),
            "-n" | "--numeric" => {}
            "--stats" => o.stats = true,
            "--json" => o.json = true,
            other => return Err(usage(format!("unknown argument {other:?}"))),
        }
    }
    let Some(cmd) = o.cmd else {
        return Err(usage("no command given".into()));
    };
    for (v, what) in [
        (&o.service, "-t"),
        (&o.server, "-r"),
        (&o.name, "--name"),
        (&o.scheduler, "-s"),
    ] {
        if v.as_deref()
            .is_some_and(|v| v.contains(char::is_whitespace) || v.contains('='))
        {
            return Err(usage(format!("{what}: no spaces or '=' allowed")));
        }
    }
    let need_service = !matches!(cmd, "list" | "zero" | "reload");
    let need_server = matches!(cmd, "add-server" | "edit-server" | "del-server");
    if need_service && o.service.is_none() {
        return Err(usage(format!("{cmd} needs -t service")));
    }
    if need_server && o.server.is_none() {
        return Err(usage(format!("{cmd} needs -r host:port")));
    }
    if cmd == "edit-service" && o.scheduler.is_none() {
        return Err(usage("-E needs -s scheduler".into()));
    }
    let mut line = String::from(cmd);
    let mut kv = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            line.push_str(&format!(" {k}={v}"));
        }
    };
    kv(
        if cmd == "add-service" {
            "listen"
        } else {
            "service"
        },
        &o.service,
    );
    kv("server", &o.server);
    kv("scheduler", &o.scheduler);
    kv("name", &o.name);
    kv("weight", &o.weight);
    kv("high", &o.high);
    kv("low", &o.low);
    if o.stats {
        line.push_str(" stats");
    }
    if o.json {
        line.push_str(" json");
    }
    line.push('\n');

    let path = o
        .socket
        .or_else(|| std::env::var("KTCPVS_ADMIN_SOCKET").ok())
        .unwrap_or_else(|| "/run/ktcpvs.sock".to_string());
    let unreachable = |e: std::io::Error| Fail::Unreachable(format!("{path}: {e}"));
    let mut s = UnixStream::connect(&path).map_err(unreachable)?;
    // A reload binds sockets and reads a file: allow it some time.
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    s.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(unreachable)?;
    if let Some(body) = reply.strip_prefix("ok\n") {
        Ok(body.to_string())
    } else if let Some(e) = reply.strip_prefix("error: ") {
        Err(Fail::Refused(e.trim_end().to_string()))
    } else {
        Err(Fail::Unreachable(format!(
            "{path}: unexpected reply {:?}",
            reply.trim_end()
        )))
    }
}
