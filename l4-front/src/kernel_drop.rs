//! Keeps the director's own kernel out of the VIP traffic.
//!
//! The workers' packet sockets (ETH_P_ALL) receive every frame before the
//! kernel's ingress hooks run. Left alone, the kernel then also takes the
//! frame through its IP input path: for a VIP that is not a local address
//! and forwarding off, that is an early-demux socket lookup, a route lookup
//! and a freshly allocated, never cached error route per packet, only to
//! drop it; for a VIP that is local, worse, it answers the client itself.
//! One nftables rule in the netdev ingress hook of the interface (`ip daddr
//! @vips drop`) ends the frame right after the packet taps, which both
//! removes that cost (measured in `tests/bench_synflood.rs`) and keeps a
//! local VIP from being answered twice.
//!
//! The table is `netdev l4front_<interface>`; it is replaced at start (a
//! crashed run's leftover included), its set follows run-time changes of
//! the services, and it is deleted at exit. `nft` runs on the control
//! thread only.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One virtual service as the rule sees it: <VIP, protocol, port>, port
/// 0 for an all-ports service.
pub type Key = (u32, u8, u16);

pub struct IngressDrop {
    table: String,
    keys: Vec<Key>,
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The commands that make the two sets hold exactly `keys`.
fn fill(table: &str, keys: &[Key]) -> String {
    let mut s = format!("flush set netdev {table} svc\nflush set netdev {table} allp\n");
    let ports: Vec<String> = keys
        .iter()
        .filter(|k| k.2 != 0)
        .map(|&(v, p, port)| format!("{} . {p} . {port}", Ipv4Addr::from(v)))
        .collect();
    let all: Vec<String> = keys
        .iter()
        .filter(|k| k.2 == 0)
        .map(|&(v, p, _)| format!("{} . {p}", Ipv4Addr::from(v)))
        .collect();
    if !ports.is_empty() {
        s += &format!(
            "add element netdev {table} svc {{ {} }}\n",
            ports.join(", ")
        );
    }
    if !all.is_empty() {
        s += &format!("add element netdev {table} allp {{ {} }}\n", all.join(", "));
    }
    s
}

fn normalise(keys: &[Key]) -> Vec<Key> {
    let mut k = keys.to_vec();
    k.sort_unstable();
    k.dedup();
    k
}

impl IngressDrop {
    /// Installs the table for `iface`, dropping the traffic of `keys`.
    pub fn install(iface: &str, keys: &[Key]) -> Result<IngressDrop, String> {
        let table = format!(
            "l4front_{}",
            iface.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let keys = normalise(keys);
        // Only the services' own traffic: other ports of an address that
        // is also the host's (ssh to it, say) and ICMP stay with the kernel.
        let mut script = format!(
            "add table netdev {table}\ndelete table netdev {table}\n\
             table netdev {table} {{\n\
             \tset svc {{ type ipv4_addr . inet_proto . inet_service; }}\n\
             \tset allp {{ type ipv4_addr . inet_proto; }}\n\
             \tchain ingress {{\n\
             \t\ttype filter hook ingress device \"{iface}\" priority -500; policy accept;\n\
             \t\tip daddr . meta l4proto . th dport @svc drop\n\
             \t\tip daddr . meta l4proto @allp drop\n\
             \t}}\n}}\n"
        );
        script += &fill(&table, &keys);
        nft(&script)?;
        Ok(IngressDrop { table, keys })
    }

    /// Makes the sets hold exactly `keys` (after a run-time change).
    pub fn update(&mut self, keys: &[Key]) -> Result<(), String> {
        let keys = normalise(keys);
        if keys == self.keys {
            return Ok(());
        }
        nft(&fill(&self.table, &keys))?;
        self.keys = keys;
        Ok(())
    }
}

impl Drop for IngressDrop {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table netdev {}\n", self.table)) {
            tracing::warn!(table = %self.table, error = %e, "removing the ingress drop table");
        }
    }
}
