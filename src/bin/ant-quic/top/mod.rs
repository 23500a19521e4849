//! `ant-quic top`: a live view of a running node, refreshed from its admin endpoint's `/metrics`
//! (no protocol of its own). The figures are computed sans-IO in `snapshot.rs` from two scrapes;
//! this file is the driver: the clock, the scrapes, the terminal and the keys.

mod scrape;
mod snapshot;
mod view;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ant_quic::config::{Loader, Overrides};
use ant_quic::dataplane::sys::signal::BlockedSignals;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use self::scrape::Scrape;
use self::snapshot::Snapshot;
use self::view::{Column, Screen};
use crate::config_error;

/// Longest wait for one scrape (connect, and then the whole answer).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time between two looks for a key or a signal in the full-screen view.
const INPUT_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Admin HTTP address of the node (default: the one its configuration gives it, `[metrics]
    /// bind` and port, which is 127.0.0.1:9000 with no configuration).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// The node's configuration file, to find its admin address in (default: ./ant-quic.toml, then
    /// /etc/ant-quic/ant-quic.toml, if present).
    #[arg(long, value_name = "PATH", conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// Seconds between refreshes; rates are per second over this interval.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Print one snapshot as JSON (rates over one interval: two scrapes) and exit; exit 1 when
    /// the node cannot be reached.
    #[arg(long, conflicts_with = "count")]
    once: bool,
    /// Stop after this many refreshes (default: until `q`, or until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.1..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!("'{text}' is not a number of seconds from 0.1 to 3600")),
    }
}

/// Run `top` as asked: one JSON snapshot, the full-screen view on a terminal, or one plain line
/// per refresh when stdout is a pipe or a file.
pub fn top(args: &TopArgs) -> ExitCode {
    let admin = match admin_address(args) {
        Ok(admin) => admin,
        Err(error) => return config_error(&error),
    };
    let interval = Duration::from_secs_f64(args.interval);
    let result = if args.once {
        once(admin, interval)
    } else if std::io::stdout().is_terminal() {
        full_screen(admin, interval, args)
    } else {
        plain(admin, interval, args.count)
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--admin`, else the admin address of the node's configuration: an unspecified bind address
/// (`0.0.0.0`) is reached on loopback.
fn admin_address(args: &TopArgs) -> Result<SocketAddr, String> {
    if let Some(text) = &args.admin {
        return text
            .to_socket_addrs()
            .map_err(|e| format!("--admin {text}: {e} (expected HOST:PORT)"))?
            .next()
            .ok_or_else(|| format!("--admin {text}: no address"));
    }
    let loaded =
        Loader { path: args.config.clone(), overrides: Overrides::default() }.load().map_err(|e| e.to_string())?;
    let config = loaded.config;
    let port = config.metrics_port();
    if port == 0 {
        return Err("the node's configuration leaves the admin port to chance (listen port 0): give --admin".into());
    }
    let ip = match config.metrics.bind {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, port))
}

/// What one refresh brought.
enum Refresh {
    /// Rates over the interval since the scrape before.
    Snapshot(Box<Snapshot>),
    /// The first scrape after a start or an outage: rates come with the next one.
    First,
    /// The scrape failed: why.
    Unreachable(String),
}

/// Scrapes the node and keeps the previous scrape to compute rates against.
struct Poller {
    admin: SocketAddr,
    previous: Option<(Scrape, Instant)>,
}

impl Poller {
    fn poll(&mut self) -> Refresh {
        match scrape::fetch(self.admin, SCRAPE_TIMEOUT) {
            Err(error) => {
                // After an outage the node may have restarted: start the rates afresh.
                self.previous = None;
                Refresh::Unreachable(error)
            }
            Ok(scrape) => {
                let now = Instant::now();
                let refresh = match &self.previous {
                    Some((before, at)) => Refresh::Snapshot(Box::new(Snapshot::between(
                        before,
                        &scrape,
                        now.duration_since(*at).as_secs_f64(),
                    ))),
                    None => Refresh::First,
                };
                self.previous = Some((scrape, now));
                refresh
            }
        }
    }
}

/// `--once`: two scrapes an interval apart, one JSON line.
fn once(admin: SocketAddr, interval: Duration) -> Result<ExitCode, String> {
    let mut poller = Poller { admin, previous: None };
    for _ in 0..2 {
        match poller.poll() {
            Refresh::Unreachable(error) => return Err(error),
            Refresh::First => std::thread::sleep(interval),
            Refresh::Snapshot(snapshot) => {
                let json = serde_json::to_string(&snapshot).map_err(|e| format!("encoding the snapshot: {e}"))?;
                return Ok(write_line(&json));
            }
        }
    }
    Err(format!("{admin}/metrics: no second scrape"))
}

/// One plain line per refresh (stdout is not a terminal), `count` of them or until interrupted.
fn plain(admin: SocketAddr, interval: Duration, count: Option<u64>) -> Result<ExitCode, String> {
    let mut poller = Poller { admin, previous: None };
    let mut ticks = Ticks::new(interval);
    let mut written = 0;
    while count.is_none_or(|count| written < count) {
        let line = match poller.poll() {
            Refresh::First => None,
            Refresh::Snapshot(snapshot) => Some(view::plain_line(&clock(), &snapshot)),
            Refresh::Unreachable(error) => Some(format!("{} node unreachable: {error}", clock())),
        };
        if let Some(line) = line {
            if write_line(&line) != ExitCode::SUCCESS {
                // The reader went away (`| head`): nothing more to do.
                return Ok(ExitCode::SUCCESS);
            }
            written += 1;
        }
        std::thread::sleep(ticks.until_next());
    }
    Ok(ExitCode::SUCCESS)
}

/// Print `line` to stdout; not SUCCESS when stdout is closed or broken.
fn write_line(line: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Leaves raw mode and the alternate screen however the view ends: `q`, an error, a signal.
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        let _ = ratatui::try_restore();
    }
}

/// The full-screen view, until `q`, Esc, Ctrl-C, SIGTERM, SIGHUP or `--count` refreshes.
fn full_screen(admin: SocketAddr, interval: Duration, args: &TopArgs) -> Result<ExitCode, String> {
    // Taken here rather than by their default action, which would leave the terminal raw.
    let signals = BlockedSignals::block(&[libc::SIGTERM, libc::SIGHUP, libc::SIGINT])
        .map_err(|e| format!("blocking signals: {e}"))?;
    let terminal_error = |e: std::io::Error| format!("terminal: {e}");
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init().map_err(terminal_error)?;
    let mut poller = Poller { admin, previous: None };
    let mut screen = Screen {
        admin: admin.to_string(),
        interval_seconds: interval.as_secs_f64(),
        clock: clock(),
        snapshot: None,
        status: None,
        sort: Column::Core,
    };
    let mut ticks = Ticks::new(interval);
    let mut refreshes = 0;
    let mut next_refresh = Instant::now();
    loop {
        if Instant::now() >= next_refresh {
            if args.count.is_some_and(|count| refreshes >= count) {
                return Ok(ExitCode::SUCCESS);
            }
            screen.clock = clock();
            match poller.poll() {
                Refresh::First => screen.status = Some(format!("first scrape of {admin} done; rates follow")),
                Refresh::Unreachable(error) => screen.status = Some(format!("node unreachable, retrying: {error}")),
                Refresh::Snapshot(snapshot) => {
                    screen.status = None;
                    screen.snapshot = Some(*snapshot);
                    refreshes += 1;
                }
            }
            next_refresh = Instant::now() + ticks.until_next();
        }
        terminal.draw(|frame| view::draw(frame, &screen)).map_err(terminal_error)?;
        if signals.wait(Some(Duration::ZERO)).is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        let wait = next_refresh.saturating_duration_since(Instant::now()).min(INPUT_TICK);
        if !event::poll(wait).map_err(terminal_error)? {
            continue;
        }
        let Event::Key(key) = event::read().map_err(terminal_error)? else { continue };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(ExitCode::SUCCESS),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(ExitCode::SUCCESS),
            KeyCode::Left => screen.sort = screen.sort.moved(-1),
            KeyCode::Right => screen.sort = screen.sort.moved(1),
            KeyCode::Char(c) => screen.sort = Column::for_key(c).unwrap_or(screen.sort),
            _ => {}
        }
    }
}

/// Refresh times on a fixed grid from the start, so that slow scrapes do not make the view drift.
struct Ticks {
    start: Instant,
    interval: Duration,
    done: u32,
}

impl Ticks {
    fn new(interval: Duration) -> Self {
        Self { start: Instant::now(), interval, done: 0 }
    }

    /// How long to wait for the next tick still ahead (skipping any that have passed).
    fn until_next(&mut self) -> Duration {
        let now = Instant::now();
        loop {
            self.done = self.done.saturating_add(1);
            let at = self.start + self.interval * self.done;
            if at > now {
                return at - now;
            }
        }
    }
}

/// The time of day, `HH:MM:SS` UTC.
fn clock() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}
