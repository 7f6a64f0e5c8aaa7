//! The configuration file as written: serde mirrors of the TOML tables,
//! every field optional so the checked layer ([`super::Config::from_raw`])
//! can fill defaults and name the field of any problem.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub director: Option<Director>,
    pub timeouts: Option<Timeouts>,
    pub defense: Option<Defense>,
    pub sync: Option<Sync>,
    #[serde(default)]
    pub service: Vec<Service>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    pub role: Option<String>,
    pub listen: Option<String>,
    pub peer: Option<String>,
    pub interval_ms: Option<u64>,
    pub dead_ms: Option<u64>,
    pub failback: Option<bool>,
    pub failback_delay_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Defense {
    pub drop_entry: Option<u8>,
    pub drop_packet: Option<u8>,
    pub secure_tcp: Option<u8>,
    pub threshold_percent: Option<u8>,
    pub drop_rate: Option<u32>,
    pub secure_syn_timeout: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Director {
    pub interface: Option<String>,
    pub workers: Option<usize>,
    pub local_ip: Option<String>,
    pub answer_arp: Option<bool>,
    pub mtu: Option<u32>,
    pub max_connections: Option<usize>,
    pub shards: Option<usize>,
    pub stats_file: Option<String>,
    pub stats_interval_ms: Option<u64>,
    pub control_socket: Option<String>,
    pub rx_ring: Option<bool>,
    pub tx_ring: Option<bool>,
    pub kernel_drop: Option<bool>,
    pub xdp: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub tcp_syn: Option<u32>,
    pub tcp_established: Option<u32>,
    pub tcp_fin: Option<u32>,
    pub tcp_close: Option<u32>,
    pub udp: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub vip: String,
    pub port: i64,
    pub protocol: Option<String>,
    pub scheduler: Option<String>,
    pub persistence: Option<u32>,
    pub persistence_netmask: Option<u8>,
    pub health_check: Option<String>,
    pub health_path: Option<String>,
    pub health_port: Option<u16>,
    pub health_interval_ms: Option<u64>,
    pub health_timeout_ms: Option<u64>,
    pub health_fall: Option<u32>,
    pub health_rise: Option<u32>,
    pub feedback: Option<bool>,
    pub feedback_gain: Option<u32>,
    pub feedback_scale: Option<u32>,
    pub feedback_response_ms: Option<u64>,
    pub feedback_input_percent: Option<u8>,
    #[serde(default)]
    pub real_server: Vec<RealServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    pub address: String,
    pub port: Option<i64>,
    pub weight: Option<i64>,
    pub method: Option<String>,
    pub mac: Option<String>,
}
