//! The node's configuration: one typed [`Config`] with its defaults, and the layers it is built
//! from — defaults < TOML file < environment (`ANT_QUIC_<SECTION>_<KEY>`) < command-line flags.
//!
//! [`Loader::load`] does the whole job and is what a reload (SIGHUP) calls again: it re-reads the
//! file, re-applies environment and flags, validates, and returns the new effective config or a
//! one-line error, leaving the running config untouched.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ant_quic_dataplane::BackendKind;

use crate::node::DEFAULT_LISTEN;
use crate::tls::{self, CertifiedKey, ClientAuth, ServerSecurity};

/// Files tried in order when no `--config` is given.
pub const SEARCH_PATHS: [&str; 2] = ["ant-quic.toml", "/etc/ant-quic/ant-quic.toml"];

/// Prefix of the environment variables that override config keys: `ANT_QUIC_<SECTION>_<KEY>`.
pub const ENV_PREFIX: &str = "ANT_QUIC_";

/// A key renamed since an older version: `[section] old` is now `[section] new`.
#[derive(Debug, Clone, Copy)]
pub struct RenamedKey {
    /// The section both names live in.
    pub section: &'static str,
    /// The name older versions used.
    pub old: &'static str,
    /// The current name.
    pub new: &'static str,
}

/// Keys renamed since older versions (see docs/configuration.md). Accepted with a warning when
/// `[compatibility] support_deprecated_keys = true`, rejected otherwise.
pub const RENAMED_KEYS: &[RenamedKey] = &[
    RenamedKey { section: "node", old: "listen_addr", new: "listen" },
    RenamedKey { section: "node", old: "bootstrap_nodes", new: "bootstrap" },
    RenamedKey { section: "metrics", old: "metrics_port", new: "port" },
    RenamedKey { section: "logging", old: "log_level", new: "level" },
    RenamedKey { section: "logging", old: "log_format", new: "format" },
];

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
    /// Seconds a process taken over (`--takeover`) keeps serving its live connections before it
    /// closes what is left; 0: close at once.
    pub drain_timeout: u64,
}

/// `[node] drain_timeout` when none is given.
pub const DEFAULT_DRAIN_TIMEOUT: u64 = 60;
/// The longest `[node] drain_timeout`: a day.
pub const MAX_DRAIN_TIMEOUT: u64 = 86_400;

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            cores: None,
            backend: None,
            data_dir: None,
            www: None,
            bootstrap: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
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
}

impl From<Backend> for BackendKind {
    fn from(backend: Backend) -> Self {
        match backend {
            Backend::IoUring => BackendKind::IoUring,
            Backend::Portable => BackendKind::Portable,
        }
    }
}

impl From<BackendKind> for Backend {
    fn from(kind: BackendKind) -> Self {
        match kind {
            BackendKind::IoUring => Backend::IoUring,
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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
}

/// `[compatibility]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatibilitySection {
    /// Accept the renamed keys of [`RENAMED_KEYS`].
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
        Ok(ServerSecurity { certificate, client_auth })
    }
}

/// A commented config file holding every default (`ant-quic config default`).
pub const DEFAULT_FILE: &str = r#"# ant-quic configuration. Every key is optional; each is shown with its default.
# Precedence: defaults < this file < environment (ANT_QUIC_<SECTION>_<KEY>) < command-line flags.
# Searched for at --config PATH, ./ant-quic.toml, /etc/ant-quic/ant-quic.toml, in that order.

[node]
# UDP address to listen on (--listen, ANT_QUIC_NODE_LISTEN).
listen = "0.0.0.0:9000"
# Data-plane cores (default: one per CPU this process may run on).
# cores = 4
# I/O backend: "io-uring" or "portable" (default: io-uring when the kernel allows it).
# backend = "io-uring"
# Directory holding the identity key (default: ~/.ant-quic).
# data_dir = "/var/lib/ant-quic"
# Serve the files of this directory over hq-interop.
# www = "/srv/ant-quic/www"
# Bootstrap peers, HOST:PORT.
bootstrap = []
# Seconds a node taken over by `ant-quic --takeover` keeps serving its live connections before it
# closes what is left with CONNECTION_CLOSE; 0 closes at once (--drain-timeout,
# ANT_QUIC_NODE_DRAIN_TIMEOUT).
drain_timeout = 60

[metrics]
# TCP port of /metrics, /health, /ready (default: the number of the UDP listen port).
# port = 9000
# Address the admin listener binds.
bind = "127.0.0.1"

[logging]
# Level (error, warn, info, debug, trace) or a RUST_LOG-style filter; RUST_LOG overrides it.
level = "info"
# "json" (one object per line, see docs/logging.md) or "text".
format = "text"
# Any of "stdout", "stderr", "file".
outputs = ["stderr"]
# Required when outputs has "file".
# file_path = "/var/log/ant-quic/ant-quic.log"
# "daily", "hourly", "minutely" or "never".
rotation = "daily"
# Rotated files older than this are deleted; 0 keeps them all.
retention_days = 7

[security]
# PEM certificate chain and key presented to clients instead of the self-signed identity
# certificate. Clients that authenticate the node by peer ID only accept it if the certificate
# carries the node's identity key.
# tls_cert = "/etc/ant-quic/cert.pem"
# tls_key = "/etc/ant-quic/key.pem"
# Refuse clients that present no certificate signed by client_ca.
require_client_certs = false
# PEM CA certificates client certificates must chain to; without require_client_certs a client
# certificate is optional, but verified when presented.
# client_ca = "/etc/ant-quic/client-ca.pem"

[compatibility]
# Accept keys renamed since older versions (e.g. [logging] log_level).
support_deprecated_keys = true
# Warn about each renamed key accepted.
migration_warnings = true
"#;

/// A configuration that cannot be used: where, and what is wrong, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// `FILE:LINE`, `FILE`, `environment VAR`, `--flag` or `default`.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line: Some(line) } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment {var}"),
            Origin::Flag(flag) => f.write_str(flag),
        }
    }
}

/// Values given on the command line; each overrides its key.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--cores`.
    pub cores: Option<usize>,
    /// `--backend`.
    pub backend: Option<BackendKind>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--www`.
    pub www: Option<PathBuf>,
    /// `--metrics-port`.
    pub metrics_port: Option<u16>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--bootstrap` (repeatable): replaces `[node] bootstrap` when given.
    pub bootstrap: Vec<String>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<u64>,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    /// Migration warnings (renamed keys), one line each, to log once logging runs.
    pub warnings: Vec<String>,
}

/// How to build the configuration; kept to build it again on reload.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    /// `--config PATH`; `None`: search [`SEARCH_PATHS`].
    pub path: Option<PathBuf>,
    /// Command-line flags.
    pub overrides: Overrides,
}

impl Loader {
    /// Build, validate and return the effective configuration from the file, the process's
    /// environment and the flags. Call again to reload; an error leaves nothing changed.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let file = match &self.path {
            Some(path) => Some(path.clone()),
            None => SEARCH_PATHS.iter().map(PathBuf::from).find(|p| p.exists()),
        };
        load(file.as_deref(), std::env::vars(), &self.overrides)
    }
}

/// Build the configuration from `file` (if any), the environment `env` and `overrides`, and
/// validate it.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let mut origins = HashMap::new();
    let (mut config, warnings, text) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                origin: path.display().to_string(),
                message: format!("cannot read the config file: {e}"),
            })?;
            let (config, warnings) = parse_file(path, &text)?;
            (config, warnings, text)
        }
        None => (Config::default(), Vec::new(), String::new()),
    };
    if let Some(path) = file {
        let mut section = String::new();
        for (index, line) in text.lines().enumerate() {
            if let Some(name) = section_header(line) {
                section = name;
            } else if let Some(key) = line_key(line) {
                let key = RENAMED_KEYS
                    .iter()
                    .find(|r| r.section == section && r.old == key)
                    .map_or(key, |r| r.new.to_owned());
                origins
                    .insert(format!("{section}.{key}"), Origin::File { path: path.to_owned(), line: Some(index + 1) });
            }
        }
    }
    apply_env(&mut config, env, &mut origins)?;
    apply_overrides(&mut config, overrides, &mut origins);
    validate(&config, &origins)?;
    Ok(Loaded { config, file: file.map(Path::to_owned), warnings })
}

/// The `[section]` a line opens, if it is a table header.
fn section_header(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or_default().trim();
    let name = line.strip_prefix('[')?.strip_suffix(']')?;
    if name.starts_with('[') {
        return None;
    }
    Some(name.trim().trim_matches('"').to_owned())
}

/// The key a `key = value` line sets.
fn line_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"').trim_matches('\'');
    if key.is_empty() || key.starts_with('#') || key.contains(char::is_whitespace) {
        return None;
    }
    Some(key.to_owned())
}

/// The 1-based line holding `[section] key`.
fn key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(name) = section_header(line) {
            current = name;
        } else if current == section && line_key(line).as_deref() == Some(key) {
            return Some(index + 1);
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// `[section] key` set on the 1-based `line`, if that line sets a key.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (index, content) in text.lines().enumerate().take(line) {
        if let Some(name) = section_header(content) {
            section = name;
        } else if index + 1 == line {
            let key = line_key(content)?;
            return Some(if section.is_empty() { key } else { format!("[{section}] {key}") });
        }
    }
    None
}

fn toml_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let line = error.span().map(|span| line_of(text, span.start));
    let mut message = error.message().trim().replace('\n', " ").replace("unknown field", "unknown key");
    if let Some(key) = line.and_then(|l| key_at(text, l)) {
        message = format!("{key}: {message}");
    }
    ConfigError { origin: Origin::File { path: path.to_owned(), line }.to_string(), message }
}

/// Parse a config file: syntax, renamed keys, then the typed config (unknown keys and bad
/// values are reported at their line).
fn parse_file(path: &Path, text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let compatibility = table.get("compatibility").and_then(toml::Value::as_table);
    let flag = |key: &str| compatibility.and_then(|c| c.get(key)).and_then(toml::Value::as_bool);
    let defaults = CompatibilitySection::default();
    let support = flag("support_deprecated_keys").unwrap_or(defaults.support_deprecated_keys);
    let warn = flag("migration_warnings").unwrap_or(defaults.migration_warnings);

    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut warnings = Vec::new();
    let mut renamed_in_place = true;
    let mut found: Vec<(Option<usize>, &RenamedKey)> = RENAMED_KEYS
        .iter()
        .filter(|r| table.get(r.section).and_then(toml::Value::as_table).is_some_and(|s| s.contains_key(r.old)))
        .map(|r| (key_line(text, r.section, r.old), r))
        .collect();
    found.sort_by_key(|(line, _)| *line);
    for (line, renamed) in found {
        let Some(section) = table.get(renamed.section).and_then(toml::Value::as_table) else { continue };
        let origin = Origin::File { path: path.to_owned(), line }.to_string();
        let (section_name, old, new) = (renamed.section, renamed.old, renamed.new);
        if !support {
            return Err(ConfigError {
                origin,
                message: format!(
                    "[{section_name}] {old} was renamed to {new}: rename it (or set [compatibility] \
                     support_deprecated_keys = true)"
                ),
            });
        }
        if section.contains_key(new) {
            return Err(ConfigError {
                origin,
                message: format!("[{section_name}] has both {old} (the old name) and {new}: keep only {new}"),
            });
        }
        if warn {
            warnings.push(format!("{origin}: [{section_name}] {old} is deprecated; rename it to {new}"));
        }
        match line.and_then(|l| lines.get_mut(l - 1)) {
            Some(text_line) => *text_line = text_line.replacen(old, new, 1),
            None => renamed_in_place = false,
        }
    }
    let config = if renamed_in_place {
        // Same lines as the file, so errors point at the user's line numbers.
        let migrated = lines.join("\n");
        toml::from_str::<Config>(&migrated).map_err(|e| toml_error(path, &migrated, &e))?
    } else {
        let mut table = table;
        for renamed in RENAMED_KEYS {
            if let Some(section) = table.get_mut(renamed.section).and_then(toml::Value::as_table_mut) {
                if let Some(value) = section.remove(renamed.old) {
                    section.insert(renamed.new.to_owned(), value);
                }
            }
        }
        toml::Value::Table(table).try_into::<Config>().map_err(|e| ConfigError {
            origin: path.display().to_string(),
            message: e.message().trim().replace('\n', " "),
        })?
    };
    Ok((config, warnings))
}

const SECTIONS: [&str; 5] = ["node", "metrics", "logging", "security", "compatibility"];

/// `ANT_QUIC_<SECTION>_<KEY>=value` overrides `[section] key`. Variables naming no section are
/// left alone (tests and scripts use other `ANT_QUIC_` variables).
fn apply_env(
    config: &mut Config,
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut HashMap<String, Origin>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var.get(ENV_PREFIX.len()..).unwrap_or_default().to_ascii_lowercase();
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(s).and_then(|k| k.strip_prefix('_')).map(|k| (*s, k.to_owned())))
        else {
            continue;
        };
        let error = |message: String| ConfigError { origin: Origin::Env(var.clone()).to_string(), message };
        let toml::Value::Table(mut table) =
            toml::Value::try_from(&*config).map_err(|e| error(format!("cannot apply: {e}")))?
        else {
            return Err(error("cannot apply".into()));
        };
        let Some(section_table) = table.get_mut(section).and_then(toml::Value::as_table_mut) else {
            return Err(error(format!("no section [{section}]")));
        };
        let value = env_value(section_table.get(&key), &raw);
        section_table.insert(key.clone(), value);
        *config = toml::Value::Table(table)
            .try_into::<Config>()
            .map_err(|e| error(format!("[{section}] {key}: {}", e.message().trim().replace('\n', " "))))?;
        origins.insert(format!("{section}.{key}"), Origin::Env(var.clone()));
    }
    Ok(())
}

/// An environment variable's text as a TOML value of the key's type: strings stay strings,
/// lists may be comma-separated, numbers and booleans are parsed.
fn env_value(current: Option<&toml::Value>, raw: &str) -> toml::Value {
    let parsed = || toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v"));
    match current {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        Some(toml::Value::Array(_)) if !raw.trim_start().starts_with('[') => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => parsed().unwrap_or_else(|| toml::Value::String(raw.to_owned())),
    }
}

fn apply_overrides(config: &mut Config, flags: &Overrides, origins: &mut HashMap<String, Origin>) {
    let mut set = |key: &str, flag: &'static str| {
        origins.insert(key.to_owned(), Origin::Flag(flag));
    };
    if let Some(listen) = flags.listen {
        config.node.listen = listen;
        set("node.listen", "--listen");
    }
    if let Some(cores) = flags.cores {
        config.node.cores = Some(cores);
        set("node.cores", "--cores");
    }
    if let Some(backend) = flags.backend {
        config.node.backend = Some(backend.into());
        set("node.backend", "--backend");
    }
    if let Some(dir) = &flags.data_dir {
        config.node.data_dir = Some(dir.clone());
        set("node.data_dir", "--data-dir");
    }
    if let Some(www) = &flags.www {
        config.node.www = Some(www.clone());
        set("node.www", "--www");
    }
    if let Some(port) = flags.metrics_port {
        config.metrics.port = Some(port);
        set("metrics.port", "--metrics-port");
    }
    if let Some(level) = &flags.log_level {
        config.logging.level = level.clone();
        set("logging.level", "--log-level");
    }
    if !flags.bootstrap.is_empty() {
        config.node.bootstrap = flags.bootstrap.clone();
        set("node.bootstrap", "--bootstrap");
    }
    if let Some(seconds) = flags.drain_timeout {
        config.node.drain_timeout = seconds;
        set("node.drain_timeout", "--drain-timeout");
    }
}

/// Checks that need more than a type: files exist and parse, keys that go together.
fn validate(config: &Config, origins: &HashMap<String, Origin>) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        origin: origins.get(key).cloned().unwrap_or(Origin::Default).to_string(),
        message,
    };
    if config.node.cores == Some(0) {
        return Err(fail("node.cores", "[node] cores must be at least 1".into()));
    }
    if config.node.drain_timeout > MAX_DRAIN_TIMEOUT {
        return Err(fail(
            "node.drain_timeout",
            format!("[node] drain_timeout must be at most {MAX_DRAIN_TIMEOUT} seconds (a day)"),
        ));
    }
    for peer in &config.node.bootstrap {
        let ok = peer.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(fail("node.bootstrap", format!("[node] bootstrap: '{peer}' is not HOST:PORT")));
        }
    }
    let level = config.logging.level.trim();
    let plain = !level.contains(['=', ',', '[', ':']);
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if plain && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
        return Err(fail(
            "logging.level",
            format!(
                "[logging] level '{level}' is not one of off, error, warn, info, debug, trace (or a RUST_LOG filter)"
            ),
        ));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
        return Err(fail(
            "logging.level",
            format!("[logging] level '{}' is not a level or filter: {e}", config.logging.level),
        ));
    }
    if config.logging.outputs.contains(&LogOutput::File) && config.logging.file_path.is_none() {
        return Err(fail("logging.outputs", "[logging] outputs has \"file\" but file_path is not set".into()));
    }
    if let Some(path) = &config.logging.file_path {
        if path.file_name().is_none() {
            return Err(fail("logging.file_path", format!("[logging] file_path {} names no file", path.display())));
        }
    }
    let s = &config.security;
    match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(_)) => {
            tls::load_certificates(cert).map_err(|e| fail("security.tls_cert", format!("[security] tls_cert: {e}")))?;
        }
        (Some(_), None) => {
            return Err(fail("security.tls_cert", "[security] tls_cert is set but tls_key is not".into()));
        }
        (None, Some(_)) => {
            return Err(fail("security.tls_key", "[security] tls_key is set but tls_cert is not".into()))
        }
        (None, None) => {}
    }
    if s.require_client_certs && s.client_ca.is_none() {
        return Err(fail(
            "security.require_client_certs",
            "[security] require_client_certs = true needs client_ca (the CA client certificates must chain to)".into(),
        ));
    }
    if let Some(ca) = &s.client_ca {
        tls::load_ca(ca).map_err(|e| fail("security.client_ca", format!("[security] client_ca: {e}")))?;
    }
    let security =
        config.server_security().map_err(|e| fail("security.tls_key", format!("[security] tls_key: {e}")))?;
    if security.certificate.is_some() {
        // Catches a key that does not belong to the certificate.
        let identity = crate::identity::Identity::ephemeral().map_err(|e| fail("security.tls_key", e.to_string()))?;
        tls::rustls_server_config_with(&identity, &[], &security)
            .map_err(|e| fail("security.tls_key", format!("[security] tls_key: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        let dir = std::env::temp_dir().join(format!("ant-quic-config-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, text).unwrap();
        let result = load(Some(&path), Vec::new(), &Overrides::default());
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn default_file_holds_the_defaults() {
        let (config, warnings) = parse_file(Path::new("default.toml"), DEFAULT_FILE).unwrap();
        assert_eq!(config, Config::default());
        assert!(warnings.is_empty());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("[node]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(e.origin.ends_with("t.toml:3"), "{e}");
        assert!(e.message.contains("lisen"), "{e}");
    }

    #[test]
    fn renamed_key_is_migrated_with_its_line() {
        let loaded = parse("[logging]\n\nlog_level = \"debug\"\n").unwrap();
        assert_eq!(loaded.config.logging.level, "debug");
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("t.toml:3"), "{:?}", loaded.warnings);
        let e = parse("[compatibility]\nsupport_deprecated_keys = false\n[node]\nlisten_addr = \"1.2.3.4:5\"\n")
            .unwrap_err();
        assert!(e.origin.ends_with(":4") && e.message.contains("renamed to listen"), "{e}");
    }

    #[test]
    fn environment_values_take_the_key_type() {
        let env = vec![
            ("ANT_QUIC_METRICS_PORT".to_owned(), "8080".to_owned()),
            ("ANT_QUIC_NODE_BOOTSTRAP".to_owned(), "a:1, b:2".to_owned()),
            ("ANT_QUIC_LOGGING_LEVEL".to_owned(), "debug".to_owned()),
            ("ANT_QUIC_TEST_BYTES".to_owned(), "9".to_owned()),
        ];
        let loaded = load(None, env, &Overrides::default()).unwrap();
        assert_eq!(loaded.config.metrics.port, Some(8080));
        assert_eq!(loaded.config.node.bootstrap, vec!["a:1".to_owned(), "b:2".to_owned()]);
        assert_eq!(loaded.config.logging.level, "debug");
        let e = load(None, vec![("ANT_QUIC_METRICS_PORT".into(), "70000".into())], &Overrides::default()).unwrap_err();
        assert!(e.origin.contains("ANT_QUIC_METRICS_PORT"), "{e}");
    }
}
