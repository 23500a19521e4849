//! The typed configuration: [`Config`], its sections and their defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use ant_quic_dataplane::{AdmissionConfig, BackendKind, RetryPolicy};

use crate::node::NodeOptions;
use crate::tls::{self, CertifiedKey, ClientAuth, ServerSecurity};

/// The whole configuration. Every key is optional; `Default` holds every default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: the data plane.
    pub node: NodeSection,
    /// `[metrics]`: the admin HTTP listener.
    pub metrics: MetricsSection,
    /// `[logging]`.
    pub logging: LoggingSection,
    /// `[security]`: TLS certificate and client certificates.
    pub security: SecuritySection,
    /// `[nat]`: NAT traversal (mapping discovery and relays, as a bootstrap).
    pub nat: NatSection,
    /// `[registry]`: where a bootstrap keeps its peers (memory, or etcd shared with others).
    pub registry: super::RegistrySection,
    /// `[compatibility]`: keys from older versions.
    pub compatibility: CompatibilitySection,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Data-plane cores; `None`: one per CPU the process may run on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    /// I/O backend; `None`: io_uring when the kernel allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Directory of the identity key; `None`: `~/.ant-quic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Serve this directory over hq-interop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub www: Option<PathBuf>,
    /// Bootstrap peers, `HOST:PORT`.
    pub bootstrap: Vec<String>,
    /// The address clients are offered to move to once the handshake is confirmed (the
    /// `preferred_address` transport parameter, RFC 9000 §9.6): another address of this host,
    /// on the listen port, which the wildcard listen socket receives on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_address: Option<SocketAddr>,
    /// Seconds a process taken over (`--takeover`) keeps serving its live connections before it
    /// closes what is left; 0: close at once.
    pub drain_timeout: u64,
    /// With `backend = "af-xdp"`: the interface to attach the XDP program to; `None`: the one
    /// holding the listen address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_interface: Option<String>,
    /// With `backend = "af-xdp"`: established relay channels are forwarded by the XDP program
    /// itself (`false`: every relay frame goes through a core).
    pub xdp_relay: bool,
}

/// `[node] drain_timeout` when none is given.
pub const DEFAULT_DRAIN_TIMEOUT: u64 = 60;
/// The longest `[node] drain_timeout`: a day.
pub const MAX_DRAIN_TIMEOUT: u64 = 86_400;

impl Default for NodeSection {
    /// Listen address, cores and backend as a node runs without a config ([`NodeOptions`]).
    fn default() -> Self {
        let node = NodeOptions::default();
        Self {
            listen: node.listen,
            cores: node.cores,
            backend: node.backend.map(Backend::from),
            data_dir: None,
            www: None,
            bootstrap: Vec::new(),
            preferred_address: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            xdp_interface: None,
            xdp_relay: true,
        }
    }
}

/// The I/O backend, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// io_uring.
    IoUring,
    /// Portable (poll + sendmmsg).
    Portable,
    /// AF_XDP sockets fed by an XDP program on the listen interface.
    AfXdp,
}

impl From<Backend> for BackendKind {
    fn from(backend: Backend) -> Self {
        match backend {
            Backend::IoUring => BackendKind::IoUring,
            Backend::Portable => BackendKind::Portable,
            Backend::AfXdp => BackendKind::AfXdp,
        }
    }
}

impl From<BackendKind> for Backend {
    fn from(kind: BackendKind) -> Self {
        match kind {
            BackendKind::IoUring => Backend::IoUring,
            BackendKind::AfXdp => Backend::AfXdp,
            // The portable backend runs everywhere; a backend added later maps here until named.
            _ => Backend::Portable,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// TCP port of the admin HTTP listener; `None`: the UDP listen port's number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Address the admin HTTP listener binds.
    pub bind: IpAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { port: None, bind: IpAddr::V4(Ipv4Addr::LOCALHOST) }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    /// A level (`info`) or any `RUST_LOG`-style filter; `RUST_LOG` overrides it.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
    /// Where lines go.
    pub outputs: Vec<LogOutput>,
    /// The log file, required when `outputs` has `file`. Rotated files are named
    /// `STEM.DATE[-HOUR].EXT` next to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_path: Option<PathBuf>,
    /// When the file rotates.
    pub rotation: LogRotation,
    /// Delete rotated files older than this many days; 0 keeps them all.
    pub retention_days: u32,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            outputs: vec![LogOutput::Stderr],
            file_path: None,
            rotation: LogRotation::Daily,
            retention_days: 7,
        }
    }
}

/// `[logging] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (fields in docs/logging.md).
    Json,
    /// Human-readable lines.
    Text,
}

/// One of `[logging] outputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    /// Standard output.
    Stdout,
    /// Standard error (the default: stdout carries the node's announcements).
    Stderr,
    /// `file_path`, rotated.
    File,
}

/// `[logging] rotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    /// A new file every day (UTC).
    Daily,
    /// A new file every hour.
    Hourly,
    /// A new file every minute (for short debugging sessions and tests).
    Minutely,
    /// One file, never rotated.
    Never,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// PEM certificate chain presented instead of the identity's self-signed certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `client_ca`.
    pub require_client_certs: bool,
    /// PEM CA certificates that client certificates must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// When to make new clients prove their address with a Retry before keeping state for them.
    pub retry: Retry,
    /// Handshakes in flight on one core from which `retry = "auto"` sends Retry.
    pub retry_threshold: usize,
    /// Half-open connections (handshake not complete) one core holds at most; attempts beyond
    /// are refused.
    pub max_half_open: usize,
    /// Seconds an accepted connection has to complete its handshake before it is dropped.
    pub handshake_timeout: u64,
    /// Accept 0-RTT data from clients that resume a session (replayable: off by default).
    pub zero_rtt: bool,
}

impl Default for SecuritySection {
    fn default() -> Self {
        let admission = AdmissionConfig::DEFAULT;
        Self {
            tls_cert: None,
            tls_key: None,
            require_client_certs: false,
            client_ca: None,
            retry: Retry::Auto,
            retry_threshold: admission.retry_threshold,
            max_half_open: admission.max_half_open,
            handshake_timeout: admission.handshake_timeout.as_secs(),
            zero_rtt: false,
        }
    }
}

/// The longest `[security] handshake_timeout`, in seconds: the default idle timeout (a half-open
/// connection never outlives it anyway).
pub const MAX_HANDSHAKE_TIMEOUT: u64 = 30;

/// `[security] retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retry {
    /// Once `retry_threshold` handshakes are in flight on a core.
    Auto,
    /// For every new client.
    Always,
    /// Never.
    Never,
}

impl SecuritySection {
    /// The data plane's admission settings.
    pub fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            retry: match self.retry {
                Retry::Auto => RetryPolicy::Auto,
                Retry::Always => RetryPolicy::Always,
                Retry::Never => RetryPolicy::Never,
            },
            retry_threshold: self.retry_threshold,
            max_half_open: self.max_half_open,
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout),
        }
    }
}

/// `[nat]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatSection {
    /// Seconds a relay allocation granted here lives; its peers renew it while they use it.
    pub relay_lifetime: u64,
    /// Guesses per second this node sends in a two-sided many-probe round (both peers behind
    /// symmetric NATs), for at most 5 s; 0 turns such rounds off.
    pub two_sided_rate: u32,
    /// UDP port that answers peers' mapping discovery (RFC 5780's alternate port), so that a peer
    /// with this one bootstrap can tell its NAT mapping. `None`: the listen port + 1 (any free port
    /// with listen port 0); 0: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternate_port: Option<u16>,
    /// Another IP of this host that answers on the alternate port too (RFC 5780's alternate
    /// address: it also tells address-dependent mapping apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternate_ip: Option<IpAddr>,
}

/// The shortest `[nat] relay_lifetime`: peers renew at 80 % of it, so it must outlast a few
/// round trips on a slow path.
pub const MIN_RELAY_LIFETIME: u64 = 10;
/// The longest `[nat] relay_lifetime`: a day.
pub const MAX_RELAY_LIFETIME: u64 = 86_400;

impl Default for NatSection {
    fn default() -> Self {
        Self {
            relay_lifetime: ant_quic_control::nat::coordinator::CoordinatorConfig::default().relay_lifetime.as_secs(),
            alternate_port: None,
            alternate_ip: None,
            two_sided_rate: DEFAULT_TWO_SIDED_RATE,
        }
    }
}

/// `[nat] two_sided_rate` when none is given: 640 guesses per 50 ms probe interval.
pub const DEFAULT_TWO_SIDED_RATE: u32 = 12_800;
/// The highest `[nat] two_sided_rate`.
pub const MAX_TWO_SIDED_RATE: u32 = 100_000;

impl NatSection {
    /// The traversal settings these keys change (the rest are defaults).
    pub fn traversal(&self) -> ant_quic_control::nat::traversal::TraversalConfig {
        let defaults = ant_quic_control::nat::traversal::TraversalConfig::default();
        // Guesses go out once per probe interval.
        let per_interval = u128::from(self.two_sided_rate) * defaults.probe_interval.as_millis();
        let birthday_guesses = u16::try_from(per_interval.div_ceil(1000)).unwrap_or(u16::MAX);
        ant_quic_control::nat::traversal::TraversalConfig { birthday_guesses, ..defaults }
    }
}

impl Config {
    /// The alternate address's settings, `None` when off: `[nat] alternate_port = 0`, or no
    /// port above the listen port to default to.
    pub fn alternate(&self) -> Option<crate::nat::alternate::AlternateOptions> {
        let listen = self.node.listen.port();
        let port = match self.nat.alternate_port {
            Some(0) => return None,
            Some(port) => port,
            None if listen == 0 => 0,
            None => listen.checked_add(1)?,
        };
        Some(crate::nat::alternate::AlternateOptions {
            port,
            ip: self.nat.alternate_ip,
            required: self.nat.alternate_port.is_some() || self.nat.alternate_ip.is_some(),
        })
    }
}

/// `[compatibility]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatibilitySection {
    /// Accept the renamed keys of [`RENAMED_KEYS`](super::RENAMED_KEYS).
    pub support_deprecated_keys: bool,
    /// Warn about each renamed key accepted.
    pub migration_warnings: bool,
}

impl Default for CompatibilitySection {
    fn default() -> Self {
        Self { support_deprecated_keys: true, migration_warnings: true }
    }
}

impl Config {
    /// The admin HTTP port: `[metrics] port`, else the UDP listen port's number.
    pub fn metrics_port(&self) -> u16 {
        self.metrics.port.unwrap_or(self.node.listen.port())
    }

    /// The data directory: `[node] data_dir`, else `~/.ant-quic`.
    pub fn data_dir(&self) -> PathBuf {
        match (&self.node.data_dir, std::env::var_os("HOME")) {
            (Some(dir), _) => dir.clone(),
            (None, Some(home)) => PathBuf::from(home).join(".ant-quic"),
            (None, None) => PathBuf::from(".ant-quic"),
        }
    }

    /// The config with the defaults that depend on other keys filled in, as `config check` prints it.
    pub fn effective(&self) -> Config {
        let mut config = self.clone();
        config.metrics.port = Some(self.metrics_port());
        if self.node.listen.port() != 0 {
            config.nat.alternate_port = Some(self.alternate().map_or(0, |a| a.port));
        }
        config.node.data_dir = Some(self.data_dir());
        config
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }

    /// The TLS settings of `[security]`, with the files loaded.
    pub fn server_security(&self) -> Result<ServerSecurity, tls::TlsError> {
        let s = &self.security;
        let certificate = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Some(CertifiedKey::from_pem_files(cert, key)?),
            _ => None,
        };
        let client_auth = match (&s.client_ca, s.require_client_certs) {
            (Some(ca), true) => ClientAuth::Required(tls::load_ca(ca)?),
            (Some(ca), false) => ClientAuth::Optional(tls::load_ca(ca)?),
            (None, _) => ClientAuth::None,
        };
        Ok(ServerSecurity {
            certificate,
            client_auth,
            zero_rtt: s.zero_rtt,
            preferred_address: self.node.preferred_address,
        })
    }
}
