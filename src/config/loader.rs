//! Building the configuration from its layers: the file (with renamed keys migrated), the
//! environment and the command-line flags, each key remembering where its value came from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ant_quic_dataplane::BackendKind;

use super::origin::{ConfigError, Origin};
use super::sections::{CompatibilitySection, Config};
use super::validate::validate;

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
    /// `--relay-lifetime`.
    pub relay_lifetime: Option<u64>,
    /// `--registry-backend`.
    pub registry_backend: Option<super::RegistryBackend>,
    /// `--registry-endpoint` (repeatable): replaces `[registry] endpoints` when given.
    pub registry_endpoints: Vec<String>,
    /// `--registry-bootstrap` (repeatable): replaces `[registry] bootstraps` when given.
    pub registry_bootstraps: Vec<String>,
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
    let text = match file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?),
        None => None,
    };
    load_text(file.zip(text.as_deref()), env, overrides)
}

/// [`load`] with the file already read: `file` is its path (named in errors) and its text.
pub fn load_text(
    file: Option<(&Path, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let mut origins = HashMap::new();
    let (mut config, warnings) = match file {
        Some((path, text)) => parse_file(path, text)?,
        None => (Config::default(), Vec::new()),
    };
    if let Some((path, text)) = file {
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
    Ok(Loaded { config, file: file.map(|(path, _)| path.to_owned()), warnings })
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

const SECTIONS: [&str; 7] = ["node", "metrics", "logging", "security", "nat", "registry", "compatibility"];

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
    if let Some(seconds) = flags.relay_lifetime {
        config.nat.relay_lifetime = seconds;
        set("nat.relay_lifetime", "--relay-lifetime");
    }
    if let Some(backend) = flags.registry_backend {
        config.registry.backend = backend;
        set("registry.backend", "--registry-backend");
    }
    if !flags.registry_endpoints.is_empty() {
        config.registry.endpoints = flags.registry_endpoints.clone();
        set("registry.endpoints", "--registry-endpoint");
    }
    if !flags.registry_bootstraps.is_empty() {
        config.registry.bootstraps = flags.registry_bootstraps.clone();
        set("registry.bootstraps", "--registry-bootstrap");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_FILE;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        // One directory per call: tests run in parallel, and two texts may have the same length.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ant-quic-config-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, text).unwrap();
        let result = load(Some(&path), Vec::new(), &Overrides::default());
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn a_value_with_a_newline_is_quoted_on_one_line() {
        let error = parse("[logging]\nlevel = \"bad\\nlevel\"\n").unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error}");
        assert!(error.contains("level 'bad\\nlevel' is not one of"), "{error}");
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
