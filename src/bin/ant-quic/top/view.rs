//! How `top` shows a [`Snapshot`]: the full-screen view (ratatui) and the one plain line per
//! refresh written when stdout is not a terminal. Pure: the driver brings the clock and the keys.

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;

use super::snapshot::{CoreRow, Quantiles, Snapshot};

/// A column of the per-core table, which it can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Core,
    State,
    Connections,
    RxPackets,
    TxPackets,
    RxBits,
    TxBits,
    Busy,
    Handoffs,
    Drops,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::Core,
        Column::State,
        Column::Connections,
        Column::RxPackets,
        Column::TxPackets,
        Column::RxBits,
        Column::TxBits,
        Column::Busy,
        Column::Handoffs,
        Column::Drops,
    ];

    fn title(self) -> &'static str {
        match self {
            Column::Core => "core",
            Column::State => "state",
            Column::Connections => "conns",
            Column::RxPackets => "rx pkt/s",
            Column::TxPackets => "tx pkt/s",
            Column::RxBits => "rx bit/s",
            Column::TxBits => "tx bit/s",
            Column::Busy => "busy %",
            Column::Handoffs => "hand-offs/s",
            Column::Drops => "drops/s",
        }
    }

    /// The column a key selects: `n` core, `s` state, `c` connections, `p` packets, `b` bytes,
    /// `l` loop busy, `h` hand-offs, `d` drops.
    pub fn for_key(key: char) -> Option<Column> {
        Some(match key {
            'n' => Column::Core,
            's' => Column::State,
            'c' => Column::Connections,
            'p' => Column::RxPackets,
            'b' => Column::RxBits,
            'l' => Column::Busy,
            'h' => Column::Handoffs,
            'd' => Column::Drops,
            _ => return None,
        })
    }

    /// The column `step` places to the right (negative: left), wrapping around.
    pub fn moved(self, step: isize) -> Column {
        let len = Self::ALL.len() as isize;
        let here = Self::ALL.iter().position(|&c| c == self).unwrap_or(0) as isize;
        let index = (here + step).rem_euclid(len) as usize;
        Self::ALL.get(index).copied().unwrap_or(Column::Core)
    }

    fn cell(self, row: &CoreRow) -> String {
        match self {
            Column::Core => row.core.to_string(),
            Column::State => row.state.to_owned(),
            Column::Connections => count(row.connections),
            Column::RxPackets => count(row.rx_packets_per_second),
            Column::TxPackets => count(row.tx_packets_per_second),
            Column::RxBits => bits(row.rx_bytes_per_second),
            Column::TxBits => bits(row.tx_bytes_per_second),
            Column::Busy => row.busy_percent.map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
            Column::Handoffs => count(row.handoffs_per_second),
            Column::Drops => count(row.drops_per_second),
        }
    }

    /// The figure the column sorts by: the biggest first; cores by number, problems first.
    fn key(self, row: &CoreRow) -> f64 {
        match self {
            Column::Core => -f64::from(row.core),
            Column::State => match row.state {
                "failed" => 2.0,
                "stalled" => 1.0,
                _ => 0.0,
            },
            Column::Connections => row.connections,
            Column::RxPackets => row.rx_packets_per_second,
            Column::TxPackets => row.tx_packets_per_second,
            Column::RxBits => row.rx_bytes_per_second,
            Column::TxBits => row.tx_bytes_per_second,
            Column::Busy => row.busy_percent.unwrap_or(0.0),
            Column::Handoffs => row.handoffs_per_second,
            Column::Drops => row.drops_per_second,
        }
    }
}

/// The cores in the order the view lists them: by `column`, ties by core number.
pub fn sorted(cores: &[CoreRow], column: Column) -> Vec<&CoreRow> {
    let mut rows: Vec<&CoreRow> = cores.iter().collect();
    rows.sort_by(|a, b| column.key(b).total_cmp(&column.key(a)).then(a.core.cmp(&b.core)));
    rows
}

/// Everything the full-screen view shows.
#[derive(Debug)]
pub struct Screen {
    /// The admin address scraped.
    pub admin: String,
    pub interval_seconds: f64,
    /// Time of the last refresh, `HH:MM:SS` UTC.
    pub clock: String,
    pub snapshot: Option<Snapshot>,
    /// Why the last scrape failed, or that the first rates are on their way.
    pub status: Option<String>,
    pub sort: Column,
}

/// Draw the whole screen: the node-wide lines, the per-core table, the keys.
pub fn draw(frame: &mut Frame, screen: &Screen) {
    let node_lines = node_lines(screen);
    let [top, table, keys] =
        Layout::vertical([Constraint::Length(node_lines.len() as u16), Constraint::Min(3), Constraint::Length(1)])
            .areas(frame.area());
    frame.render_widget(Paragraph::new(node_lines), top);

    let header = Row::new(Column::ALL.iter().map(|&c| {
        let title = if c == screen.sort { format!("{}▼", c.title()) } else { c.title().to_owned() };
        Cell::from(title)
    }))
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = screen.snapshot.iter().flat_map(|s| sorted(&s.cores, screen.sort)).map(|row| {
        let style = if row.state == "running" { Style::new() } else { Style::new().add_modifier(Modifier::BOLD) };
        Row::new(Column::ALL.iter().map(|c| Cell::from(c.cell(row)))).style(style)
    });
    let widths = [5, 8, 7, 10, 10, 12, 12, 7, 12, 8].map(Constraint::Length);
    let cores = Table::new(rows, widths).header(header).block(Block::bordered().title(" cores "));
    frame.render_widget(cores, table);
    frame.render_widget(
        Paragraph::new(
            "q quit  ←/→ sort column  n core  s state  c conns  p packets  b bytes  l busy  h hand-offs  d drops",
        ),
        keys,
    );
}

fn node_lines(screen: &Screen) -> Vec<Line<'static>> {
    let mut title = format!("ant-quic top  {}  every {}s  {}", screen.admin, screen.interval_seconds, screen.clock);
    let mut lines = Vec::new();
    if let Some(s) = &screen.snapshot {
        let backend = s.backend.as_deref().unwrap_or("?");
        let generation = s.generation.map_or_else(|| "?".to_owned(), count);
        title.push_str(&format!("  backend {backend}  generation {generation}  cores {}", s.cores.len()));
    }
    lines.push(Line::from(title).style(Style::new().add_modifier(Modifier::BOLD)));
    if let Some(status) = &screen.status {
        lines.push(Line::from(status.clone()).style(Style::new().add_modifier(Modifier::REVERSED)));
    }
    let Some(s) = &screen.snapshot else { return lines };
    lines.push(Line::from(format!(
        "connections {}  in handshake {}  handshakes/s {}  handshake p50 {} p99 {}",
        count(s.connections),
        count(s.handshakes_in_flight),
        count(s.handshakes_per_second),
        seconds(s.handshake_seconds.p50),
        seconds(s.handshake_seconds.p99),
    )));
    lines.push(Line::from(format!(
        "RTT p50 {} p99 {}{}  traffic rx {} tx {}",
        seconds(s.rtt_seconds.p50),
        seconds(s.rtt_seconds.p99),
        since_start(&s.rtt_seconds),
        bits(s.rx_bytes_per_second),
        bits(s.tx_bytes_per_second),
    )));
    lines.push(Line::from(format!(
        "NAT attempts {} ({}/s)  success {}  registered peers {}",
        count(s.nat.attempts),
        count(s.nat.attempts_per_second),
        percent(s.nat.success_rate),
        count(s.nat.registered_peers),
    )));
    lines.push(Line::from(format!(
        "relay allocations {}  forwarded {} ({} pkt/s)",
        count(s.relay.allocations),
        bits(s.relay.forwarded_bytes_per_second),
        count(s.relay.forwarded_packets_per_second),
    )));
    let errors = if s.errors.is_empty() {
        "none".to_owned()
    } else {
        s.errors
            .iter()
            .map(|e| format!("{} {} ({}/s)", e.kind, count(e.total), count(e.per_second)))
            .collect::<Vec<_>>()
            .join("  ")
    };
    lines.push(Line::from(format!("errors since start: {errors}")));
    lines
}

/// The line written per refresh when stdout is not a terminal.
pub fn plain_line(clock: &str, s: &Snapshot) -> String {
    format!(
        "{clock} conns {} hs/s {} hs p50 {} p99 {} rtt p50 {} p99 {} rx {} tx {} nat ok {} peers {} relays {} relay {} errors/s {}",
        count(s.connections),
        count(s.handshakes_per_second),
        seconds(s.handshake_seconds.p50),
        seconds(s.handshake_seconds.p99),
        seconds(s.rtt_seconds.p50),
        seconds(s.rtt_seconds.p99),
        bits(s.rx_bytes_per_second),
        bits(s.tx_bytes_per_second),
        percent(s.nat.success_rate),
        count(s.nat.registered_peers),
        count(s.relay.allocations),
        bits(s.relay.forwarded_bytes_per_second),
        count(s.errors_per_second()),
    )
}

fn since_start(q: &Quantiles) -> &'static str {
    if q.over == "since_start" && q.p50.is_some() {
        " (since start)"
    } else {
        ""
    }
}

/// A count or rate: whole below 100, then with k, M, G and three significant digits.
fn count(n: f64) -> String {
    // -0 (a sum of nothing) reads as 0.
    let n = n + 0.0;
    if !n.is_finite() {
        return "-".to_owned();
    }
    if n.abs() < 10.0 && n.fract() != 0.0 {
        return format!("{n:.1}");
    }
    if n.abs() < 1000.0 {
        return format!("{n:.0}");
    }
    let (value, unit) = scaled(n);
    format!("{value:.3}{unit}").replace(".000", "")
}

/// Bytes per second as bits per second (`12.3 Mbit/s`).
fn bits(bytes_per_second: f64) -> String {
    let n = bytes_per_second * 8.0;
    if n.abs() < 1000.0 {
        return format!("{n:.0} bit/s");
    }
    let (value, unit) = scaled(n);
    format!("{value:.1} {unit}bit/s")
}

fn scaled(n: f64) -> (f64, &'static str) {
    [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| n.abs() >= *scale)
        .map_or((n, ""), |(s, u)| (n / s, u))
}

/// A latency: `850 µs`, `3.1 ms`, `1.20 s`; `-` without observations.
fn seconds(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(s) if s < 1e-3 => format!("{:.0} µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

fn percent(share: Option<f64>) -> String {
    share.filter(|s| s.is_finite()).map_or_else(|| "-".to_owned(), |s| format!("{:.0}%", s * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::snapshot::{Nat, Relay};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn row(core: u32, state: &'static str, connections: f64, rx_packets: f64) -> CoreRow {
        CoreRow {
            core,
            state,
            connections,
            rx_packets_per_second: rx_packets,
            tx_packets_per_second: 0.0,
            rx_bytes_per_second: rx_packets * 1200.0,
            tx_bytes_per_second: 0.0,
            busy_percent: Some(12.5),
            handoffs_per_second: 0.0,
            drops_per_second: 0.0,
        }
    }

    fn snapshot() -> Snapshot {
        let quantiles = |p50, over| Quantiles { p50, p99: p50.map(|p| p * 3.0), observations: 10.0, over };
        Snapshot {
            interval_seconds: 1.0,
            backend: Some("portable".into()),
            generation: Some(1.0),
            cores: vec![row(0, "running", 3.0, 50.0), row(1, "running", 9.0, 10.0), row(2, "stalled", 1.0, 0.0)],
            connections: 13.0,
            handshakes_in_flight: 0.0,
            handshakes_per_second: 4.0,
            handshake_seconds: quantiles(Some(0.0031), "interval"),
            rtt_seconds: quantiles(Some(0.00045), "since_start"),
            rx_bytes_per_second: 15_000_000.0,
            tx_bytes_per_second: 125.0,
            nat: Nat { attempts: 4.0, attempts_per_second: 0.0, success_rate: Some(0.75), registered_peers: 2.0 },
            relay: Relay { allocations: 1.0, forwarded_bytes_per_second: 0.0, forwarded_packets_per_second: 0.0 },
            errors: Vec::new(),
        }
    }

    #[test]
    fn sorting_by_a_column_puts_the_biggest_first_and_cores_in_order() {
        let s = snapshot();
        let order = |column| sorted(&s.cores, column).iter().map(|r| r.core).collect::<Vec<_>>();
        assert_eq!(order(Column::Core), [0, 1, 2]);
        assert_eq!(order(Column::Connections), [1, 0, 2]);
        assert_eq!(order(Column::RxPackets), [0, 1, 2]);
        assert_eq!(order(Column::State), [2, 0, 1]);
        assert_eq!(Column::Core.moved(-1), Column::Drops);
        assert_eq!(Column::Drops.moved(1), Column::Core);
        assert_eq!(Column::for_key('c'), Some(Column::Connections));
    }

    #[test]
    fn the_plain_line_carries_the_node_wide_figures() {
        let line = plain_line("12:00:01", &snapshot());
        assert_eq!(
            line,
            "12:00:01 conns 13 hs/s 4 hs p50 3.1 ms p99 9.3 ms rtt p50 450 µs p99 1.4 ms rx 120.0 Mbit/s \
             tx 1.0 kbit/s nat ok 75% peers 2 relays 1 relay 0 bit/s errors/s 0"
        );
    }

    #[test]
    fn the_screen_shows_the_figures_and_the_cores_in_sort_order() {
        let mut terminal = Terminal::new(TestBackend::new(110, 16)).unwrap();
        let screen = Screen {
            admin: "127.0.0.1:9000".into(),
            interval_seconds: 1.0,
            clock: "12:00:01".into(),
            snapshot: Some(snapshot()),
            status: None,
            sort: Column::Connections,
        };
        terminal.draw(|frame| draw(frame, &screen)).unwrap();
        let text: Vec<String> = terminal
            .backend()
            .buffer()
            .content()
            .chunks(110)
            .map(|line| line.iter().map(|cell| cell.symbol()).collect())
            .collect();
        let all = text.join("\n");
        assert!(
            all.contains("connections 13  in handshake 0  handshakes/s 4  handshake p50 3.1 ms p99 9.3 ms"),
            "{all}"
        );
        assert!(all.contains("RTT p50 450 µs p99 1.4 ms (since start)"), "{all}");
        assert!(all.contains("conns▼"), "{all}");
        let cores: Vec<&String> = text.iter().filter(|l| l.contains("running") || l.contains("stalled")).collect();
        assert_eq!(cores.len(), 3, "{all}");
        assert!(cores[0].trim_start_matches('│').trim_start().starts_with("1 "), "{all}");
    }
}
