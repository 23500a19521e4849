//! Logging: tracing to stdout/stderr and/or a rotated file, as JSON lines or text, through a
//! lossy non-blocking writer so that a data-plane core never waits for a log line.
//!
//! `RUST_LOG`, when set, overrides `[logging] level`. [`Logging::set_level`] changes the filter at
//! run time (reload). Lines dropped because a writer fell behind, or because its output refused
//! them (a full disk, a closed pipe), are counted: [`dropped_lines`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogOutput, LogRotation, LoggingSection};

/// Lines a writer may hold before new lines are dropped.
const BUFFERED_LINES: usize = 64 * 1024;

/// How often the retention pruner looks for old files.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// The level or filter does not parse.
    #[error("log level '{level}': {reason}")]
    Filter {
        /// What was given.
        level: String,
        /// Why it is not a filter.
        reason: String,
    },
    /// The log file cannot be opened.
    #[error("log file {path}: {reason}")]
    File {
        /// The configured file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A global subscriber is already installed.
    #[error("logging already started: {0}")]
    AlreadyStarted(String),
}

static DROP_COUNTERS: Mutex<Vec<ErrorCounter>> = Mutex::new(Vec::new());

/// Lines an output refused (write errors), over all outputs.
static LINES_NOT_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far, over all writers: a writer could not keep up, or its output refused
/// the line (a full disk, a closed pipe).
pub fn dropped_lines() -> u64 {
    let behind = DROP_COUNTERS.lock().map(|c| c.iter().map(|e| e.dropped_lines() as u64).sum()).unwrap_or(0);
    behind + LINES_NOT_WRITTEN.load(Ordering::Relaxed)
}

/// An output that takes every line: one it cannot write is dropped and counted, and the first
/// such failure is said once on stderr. (The writer thread would otherwise drop it silently.)
struct CountingLoss<W> {
    output: W,
    /// What the output is, for the one line (`stdout`, a file's path).
    name: String,
    failed_before: bool,
}

impl<W: Write> Write for CountingLoss<W> {
    // The writer thread hands over one whole line per call.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if let Err(error) = self.output.write_all(line).and_then(|()| self.output.flush()) {
            LINES_NOT_WRITTEN.fetch_add(1, Ordering::Relaxed);
            if !std::mem::replace(&mut self.failed_before, true) {
                // Not `eprintln!`, which panics when stderr itself is the output that fails.
                let _ = writeln!(
                    std::io::stderr(),
                    "ant-quic: cannot write the log to {}: {error}; lines that cannot be written are \
                     dropped and counted in ant_quic_log_lines_dropped_total",
                    self.name
                );
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Running logging: keep it alive until exit (dropping it flushes and stops the writers).
#[derive(Debug)]
pub struct Logging {
    filter: FilterHandle,
    _guards: Vec<WorkerGuard>,
}

impl Logging {
    /// Replace the level or filter (e.g. `debug`, `info,ant_quic=trace`), as a reload does. This
    /// applies even when `RUST_LOG` chose the level at start.
    pub fn set_level(&self, level: &str) -> Result<(), LoggingError> {
        let filter = parse_filter(level)?;
        self.filter.reload(filter).map_err(|e| LoggingError::AlreadyStarted(e.to_string()))
    }

    /// Lines dropped so far (the same as [`dropped_lines`]).
    pub fn dropped_lines(&self) -> u64 {
        dropped_lines()
    }
}

/// The filter a level or `RUST_LOG`-style string names. Spaces around each comma-separated
/// directive are dropped first: tracing-subscriber 0.3 keeps them (`info, ant_quic=debug` would
/// not filter ant_quic, tokio-rs/tracing#2452), and panics on a directive that starts with a
/// space before a non-ASCII character (it slices the string at offsets of the trimmed one).
pub fn parse_filter(level: &str) -> Result<EnvFilter, LoggingError> {
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    EnvFilter::builder()
        .parse(directives.join(","))
        .map_err(|e| LoggingError::Filter { level: level.to_owned(), reason: e.to_string() })
}

/// The filter to start with: `RUST_LOG` if set, else the configured level.
pub fn initial_filter(configured: &str) -> String {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => value,
        _ => configured.to_owned(),
    }
}

fn non_blocking(output: impl Write + Send + 'static, thread: &str, name: String) -> (NonBlocking, WorkerGuard) {
    let output = CountingLoss { output, name, failed_before: false };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name(thread)
        .finish(output);
    if let Ok(mut counters) = DROP_COUNTERS.lock() {
        counters.push(writer.error_counter());
    }
    (writer, guard)
}

type BoxedLayer =
    Box<dyn Layer<tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>> + Send + Sync>;

fn fmt_layer(format: LogFormat, writer: NonBlocking, ansi: bool) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_target(true);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_thread_names(true)
            .boxed(),
        LogFormat::Text => layer.with_ansi(ansi).boxed(),
    }
}

/// The directory, file name prefix and suffix of the rotated files for `file_path`
/// (`/var/log/ant-quic.log` → `/var/log`, `ant-quic`, `log`).
pub fn file_parts(file_path: &Path) -> (PathBuf, String, Option<String>) {
    let dir =
        file_path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_owned);
    let stem = file_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "ant-quic".into());
    let ext = file_path.extension().map(|s| s.to_string_lossy().into_owned());
    (dir, stem, ext)
}

/// Start logging as `[logging]` says and install it as the global subscriber.
pub fn init(config: &LoggingSection) -> Result<Logging, LoggingError> {
    let (filter, filter_handle) = reload::Layer::new(parse_filter(&initial_filter(&config.level))?);
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut guards = Vec::new();
    for output in &config.outputs {
        let (writer, guard) = match output {
            LogOutput::Stdout => non_blocking(std::io::stdout(), "log-stdout", "stdout".into()),
            LogOutput::Stderr => non_blocking(std::io::stderr(), "log-stderr", "stderr".into()),
            LogOutput::File => {
                let Some(path) = &config.file_path else {
                    return Err(LoggingError::File { path: PathBuf::new(), reason: "file_path is not set".into() });
                };
                let (dir, prefix, suffix) = file_parts(path);
                let file_error = |reason: String| LoggingError::File { path: path.clone(), reason };
                std::fs::create_dir_all(&dir).map_err(|e| file_error(e.to_string()))?;
                let rotation = match config.rotation {
                    LogRotation::Daily => Rotation::DAILY,
                    LogRotation::Hourly => Rotation::HOURLY,
                    LogRotation::Minutely => Rotation::MINUTELY,
                    LogRotation::Never => Rotation::NEVER,
                };
                let mut builder = RollingFileAppender::builder().rotation(rotation).filename_prefix(prefix.clone());
                if let Some(suffix) = &suffix {
                    builder = builder.filename_suffix(suffix.clone());
                }
                let appender = builder.build(&dir).map_err(|e| file_error(e.to_string()))?;
                if config.retention_days > 0 {
                    spawn_pruner(dir, prefix, suffix, config.retention_days);
                }
                non_blocking(appender, "log-file", path.display().to_string())
            }
        };
        // Colours only for a person at a terminal, never into files or pipes.
        let ansi = match output {
            LogOutput::Stdout => std::io::stdout().is_terminal(),
            LogOutput::Stderr => std::io::stderr().is_terminal(),
            LogOutput::File => false,
        };
        layers.push(fmt_layer(config.format, writer, ansi));
        guards.push(guard);
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|e| LoggingError::AlreadyStarted(e.to_string()))?;
    Ok(Logging { filter: filter_handle, _guards: guards })
}

fn spawn_pruner(dir: PathBuf, prefix: String, suffix: Option<String>, retention_days: u32) {
    let _ = std::thread::Builder::new().name("log-retention".into()).spawn(move || loop {
        match prune_old_logs(&dir, &prefix, suffix.as_deref(), retention_days, SystemTime::now()) {
            Ok(removed) => {
                for file in removed {
                    tracing::info!(file = %file.display(), retention_days, "removed old log file");
                }
            }
            Err(error) => tracing::warn!(%error, dir = %dir.display(), "cannot prune old log files"),
        }
        std::thread::sleep(PRUNE_INTERVAL);
    });
}

/// Delete the log files of `prefix`/`suffix` in `dir` (`PREFIX.*.SUFFIX`, as rotation names
/// them) last written more than `retention_days` days before `now`; return the files removed.
/// `retention_days == 0` keeps every file.
pub fn prune_old_logs(
    dir: &Path,
    prefix: &str,
    suffix: Option<&str>,
    retention_days: u32,
    now: SystemTime,
) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if retention_days == 0 {
        return Ok(removed);
    }
    let max_age = Duration::from_secs(u64::from(retention_days) * 86_400);
    let stem = format!("{prefix}.");
    let tail = suffix.map(|s| format!(".{s}"));
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&stem)
            && tail.as_deref().is_none_or(|t| name.ends_with(t) && name.len() > stem.len() + t.len());
        if !ours {
            continue;
        }
        let metadata = entry.metadata()?;
        if !metadata.is_file() {
            continue;
        }
        let age = now.duration_since(metadata.modified()?).unwrap_or_default();
        if age > max_age {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_around_directives_are_dropped() {
        let filter = parse_filter("warn, ant_quic=debug ").unwrap().to_string();
        assert!(filter.contains("ant_quic=debug"), "{filter}");
        // Once a panic inside tracing-subscriber (found by fuzz/fuzz_targets/config_toml.rs).
        let filter = parse_filter("info, é=debug").unwrap().to_string();
        assert!(filter.contains("é=debug"), "{filter}");
    }
}
