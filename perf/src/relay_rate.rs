//! `relay-rate`: how fast a relay node forwards relay frames over loopback, next to what the
//! kernel's UDP path moves at the same datagram size, measured in the same run.
//!
//! Three kinds of run, alternated (ceiling, forwarder, relay per backend, then again):
//!
//! - `udp-ceiling`: a sender socket straight to a receiver socket, as `udp-ceiling` measures it
//!   (a GSO sender thread, a GRO receiver thread, through quinn-udp), at the run's datagram size.
//! - `udp-forwarder`: the same sender and receiver with a minimal forwarder between them: one
//!   thread that receives with GRO and sends each batch on unchanged with GSO. No table, no
//!   counters: what a relay at its simplest costs on this machine.
//! - `relay`: the same sender and receiver with an ant-quic relay node between them: a `Node`
//!   with one allocation whose ends are the two sockets (limits out of the way), forwarding
//!   `0x22 channel payload` frames from the sender to the receiver.
//!
//! The sender sends as fast as the kernel takes it for a fixed time; the figure is what the
//! receiver got, from its first datagram to its last. Every datagram is a relay frame of the
//! run's size (UDP payload, relay header included), in every kind of run. Loopback only; every
//! loop is bounded in time and in count.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ant_quic_dataplane::{BackendKind, RELAY_HEADER_LEN, RELAY_MARKER};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use quinn_udp::UdpSocketState;
use serde::Serialize;

use crate::harness::{command_line, fmt_opt, loadavg, machine, median, print_report, sorted, write_header, Machine};
use crate::udp_flow::{gso_transmit, receive_until_quiet, send_for};

mod forwarder;
mod relay_node;
mod veth;
mod xdp_tx;

use forwarder::{Forwarder, ForwarderCounters};
use relay_node::{relay_counters, start_relay, RelayCounters};

/// Most UDP payload bytes one send may carry (the UDP length field, less the IPv4 and UDP headers).
const MAX_UDP_SEND: usize = 65_535 - 20 - 8;
/// IPv4 and UDP headers: what a datagram adds on the (loopback) wire.
const IP_UDP_HEADERS: usize = 20 + 8;
/// The channel of the allocation.
pub(crate) const CHANNEL: u32 = 0x0A17_0001;
/// Smallest and largest datagram accepted (a relay header and a minimal packet; an IPv4 path
/// MTU of 1500).
const SIZES: std::ops::RangeInclusive<usize> = 32..=1472;

#[derive(Debug, Args)]
pub struct RelayRateArgs {
    /// Seconds the sender runs in each run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Repetitions of each kind of run per datagram size.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Datagram sizes (UDP payload bytes, relay header included), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1200,1452")]
    sizes: Vec<usize>,
    /// Relay node backends, comma-separated (io-uring, portable). A backend that cannot run here
    /// is skipped with a note.
    #[arg(long, value_delimiter = ',', default_value = "io-uring,portable")]
    backends: Vec<String>,
    /// Pace the sender to this many million datagrams per second (default: as fast as the kernel
    /// takes them, which overloads every path but the ceiling).
    #[arg(long)]
    offered_mpps: Option<f64>,
    /// Pin the threads: the box in the middle (relay core, forwarder thread; the receiver in a
    /// ceiling run) to the first allowed CPU, the sender and the receiver to the last. Default:
    /// nothing pinned, the scheduler places all three.
    #[arg(long)]
    pin: bool,
    /// Leave out the minimal forwarder runs.
    #[arg(long)]
    no_forwarder: bool,
    /// Run on a veth pair between two network namespaces made for the session (root) instead
    /// of loopback: sender and receiver in one, the relay in the other; the kinds are then the
    /// relay node on io-uring and on af-xdp, the XDP relay program and a minimal XDP_TX
    /// forwarder (the ceiling); `--backends` and `--no-forwarder` do not apply.
    #[arg(long)]
    veth: bool,
    /// With --veth: how the peer's end is made to take XDP_TX frames: `xdp-pass` (an XDP program
    /// that passes everything, what works on Linux 6.18, attached for the XDP runs only),
    /// `xdp-pass-always` (for every run), `gro` (GRO on, which there is not enough) or `none`.
    #[arg(long, value_enum, default_value = "xdp-pass")]
    peer_napi: veth::PeerNapi,
    /// Print JSON (every run and the summaries) instead of the markdown table.
    #[arg(long)]
    json: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RateRun {
    /// Order in the session.
    pub seq: usize,
    /// "udp-ceiling", "udp-forwarder" or "relay".
    pub kind: String,
    /// The relay node's backend (relay runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// UDP payload bytes per datagram (relay header included).
    pub datagram: usize,
    /// Datagrams per second the sender offered; `None`: as many as the kernel took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_sec: Option<f64>,
    /// Datagrams the sender handed to the kernel.
    pub sent: u64,
    /// Datagrams the receiver got.
    pub received: u64,
    /// Datagrams the receiver got that were not the frames sent (wrong size or header).
    pub corrupt: u64,
    /// From the first to the last datagram the receiver got.
    pub seconds: f64,
    /// `received / seconds`.
    pub frames_per_sec: f64,
    /// Gbit/s of what the frames carry (datagram less the 5-byte relay header).
    pub payload_gbps: f64,
    /// Gbit/s of UDP payload (the whole frame).
    pub udp_gbps: f64,
    /// Gbit/s with the IPv4 and UDP headers (28 bytes a datagram).
    pub wire_gbps: f64,
    /// Datagrams per GSO send of the sender.
    pub gso_segments: usize,
    /// Datagrams the receiver's socket may coalesce (1: no GRO).
    pub gro_segments: usize,
    /// UDP receive-buffer overflows of the whole machine during the run (`RcvbufErrors` of
    /// /proc/net/snmp): datagrams the kernel dropped because a socket (the relay's, the
    /// forwarder's or the receiver's) was full. Other traffic on the machine counts too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_rcvbuf_drops: Option<u64>,
    /// The relay node's counters (relay runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayCounters>,
    /// The minimal forwarder's counters (forwarder runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<ForwarderCounters>,
    /// Why the run does not count (nothing arrived); its counters are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    kind: String,
    backend: Option<String>,
    datagram: usize,
    runs: usize,
    ok: usize,
    median_frames_per_sec: Option<f64>,
    min_frames_per_sec: Option<f64>,
    max_frames_per_sec: Option<f64>,
    median_payload_gbps: Option<f64>,
    median_wire_gbps: Option<f64>,
    /// This median over the ceiling's median (same datagram size).
    of_ceiling: Option<f64>,
    /// This median over the forwarder's median (same datagram size).
    of_forwarder: Option<f64>,
    /// Median share of the sent datagrams that did not arrive.
    median_loss: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    machine: Machine,
    seconds: f64,
    runs_per_kind: usize,
    /// Million datagrams per second offered; `None`: as fast as the kernel took them.
    offered_mpps: Option<f64>,
    /// (CPU of the middle box, CPU of the sender and receiver) when pinned.
    pinned: Option<(usize, usize)>,
    load_start: Option<f64>,
    load_end: Option<f64>,
    skipped: Vec<String>,
    summaries: Vec<Summary>,
    runs: Vec<RateRun>,
    errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ceiling,
    Forwarder,
    Relay(BackendKind),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Ceiling => "udp-ceiling",
            Self::Forwarder => "udp-forwarder",
            Self::Relay(_) => "relay",
        }
    }

    fn backend(self) -> Option<String> {
        match self {
            Self::Relay(backend) => Some(backend.to_string()),
            _ => None,
        }
    }
}

/// Runs the session and prints the table (or JSON) on stdout, progress on stderr.
pub fn run(args: &RelayRateArgs) -> Result<()> {
    if !(0.2..=30.0).contains(&args.seconds) {
        bail!("--seconds must be between 0.2 and 30");
    }
    if args.runs == 0 || args.runs > 50 {
        bail!("--runs must be between 1 and 50");
    }
    if args.offered_mpps.is_some_and(|m| !(0.001..=100.0).contains(&m)) {
        bail!("--offered-mpps must be between 0.001 and 100");
    }
    if args.sizes.is_empty() || args.sizes.iter().any(|s| !SIZES.contains(s)) {
        bail!("--sizes must be between {} and {} bytes", SIZES.start(), SIZES.end());
    }
    if args.veth {
        return veth::run(args);
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut skipped = Vec::new();
    let mut kinds = vec![Kind::Ceiling];
    if !args.no_forwarder {
        kinds.push(Kind::Forwarder);
    }
    for name in &args.backends {
        let backend = name.parse::<BackendKind>().map_err(|e| anyhow!(e))?;
        if backend == BackendKind::IoUring {
            if let Err(e) = ant_quic_dataplane::backend::uring::probe() {
                skipped.push(format!("relay on io-uring: unavailable here ({e})"));
                continue;
            }
        }
        kinds.push(Kind::Relay(backend));
    }

    let pins = if args.pin {
        let cpus = ant_quic_dataplane::sys::thread::allowed_cpus();
        match (cpus.first(), cpus.last()) {
            (Some(&middle), Some(&ends)) if middle != ends => Some(Pins { middle, ends }),
            _ => {
                skipped.push("pinning: fewer than two CPUs allowed".to_owned());
                None
            }
        }
    } else {
        None
    };

    let load_start = loadavg();
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    let mut seq = 0;
    for &size in &args.sizes {
        for repetition in 1..=args.runs {
            for &kind in &kinds {
                seq += 1;
                let what = format!("{} {} {size} B, run {repetition}/{}", kind.name(), backend_label(kind), args.runs);
                eprintln!("[relay-rate] {what} …");
                let load = Load { size, duration, offered: args.offered_mpps.map(|m| m * 1e6), pins };
                match run_once(kind, load) {
                    Ok(mut r) => {
                        r.seq = seq;
                        if let Some(why) = &r.failed {
                            eprintln!("[relay-rate]   failed: {why}");
                            errors.push(format!("{what}: {why}"));
                        }
                        eprintln!(
                            "[relay-rate]   {:.3} Mframes/s, {:.2} Gbit/s payload, {} of {} arrived",
                            r.frames_per_sec / 1e6,
                            r.payload_gbps,
                            r.received,
                            r.sent
                        );
                        runs.push(r);
                    }
                    Err(e) => {
                        eprintln!("[relay-rate]   failed: {e:#}");
                        errors.push(format!("{what}: {e:#}"));
                    }
                }
            }
        }
    }
    let load_end = loadavg();

    let mut summaries = Vec::new();
    for &size in &args.sizes {
        let mut of_size: Vec<Summary> = kinds.iter().map(|&kind| summarize(&runs, kind, size, args.runs)).collect();
        let ceiling = of_size.iter().find(|s| s.kind == "udp-ceiling").and_then(|s| s.median_frames_per_sec);
        let forwarder = of_size.iter().find(|s| s.kind == "udp-forwarder").and_then(|s| s.median_frames_per_sec);
        for s in &mut of_size {
            s.of_ceiling = ratio(s.median_frames_per_sec, ceiling);
            s.of_forwarder = ratio(s.median_frames_per_sec, forwarder);
        }
        summaries.extend(of_size);
    }

    let command = command_line();
    let report = Report {
        command,
        machine: machine(),
        seconds: args.seconds,
        runs_per_kind: args.runs,
        offered_mpps: args.offered_mpps,
        pinned: pins.map(|p| (p.middle, p.ends)),
        load_start,
        load_end,
        skipped,
        summaries,
        runs,
        errors,
    };
    print_report(&report, args.json, markdown)?;
    Ok(())
}

fn backend_label(kind: Kind) -> String {
    kind.backend().map_or_else(String::new, |b| format!("({b})"))
}

pub(crate) fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

/// What the sender offers in one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// UDP payload bytes per datagram (relay header included).
    pub(crate) size: usize,
    /// How long the sender sends.
    pub(crate) duration: Duration,
    /// Datagrams per second offered; `None`: as fast as the kernel takes them.
    pub(crate) offered: Option<f64>,
    /// CPUs to pin to, when pinning.
    pub(crate) pins: Option<Pins>,
}

/// Where the threads of a run go when pinned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pins {
    /// The relay core or the forwarder thread (the receiver in a ceiling run).
    pub(crate) middle: usize,
    /// The sender and the receiver.
    pub(crate) ends: usize,
}

/// Pins the calling thread to `cpu`, when given (a failure leaves it unpinned).
pub(crate) fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let _ = ant_quic_dataplane::sys::thread::pin_current_thread(cpu);
    }
}

fn run_once(kind: Kind, load: Load) -> Result<RateRun> {
    let size = load.size;
    let ends = Ends::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), size)?;
    let (sender_addr, receiver_addr) = (ends.sender.local_addr()?, ends.receiver.local_addr()?);
    let (gso_segments, gro_segments) = (ends.segments, ends.rx_state.gro_segments());

    let snmp_before = rcvbuf_errors();
    let (sent, received, forwarder, relay) = match kind {
        Kind::Ceiling => {
            let (sent, received) = transfer(ends, receiver_addr, load)?;
            (sent, received, None, None)
        }
        Kind::Forwarder => {
            let cpu = load.pins.map(|p| p.middle);
            let middle = Forwarder::start(receiver_addr, move || pin(cpu))?;
            let via = middle.address;
            let result = transfer(ends, via, load);
            let counters = middle.stop()?;
            let (sent, received) = result?;
            (sent, received, Some(counters), None)
        }
        Kind::Relay(backend) => {
            let node = start_relay(
                (Ipv4Addr::LOCALHOST, 0).into(),
                backend,
                false,
                CHANNEL,
                sender_addr,
                receiver_addr,
                load.pins.map(|p| p.middle),
            )?;
            let via = node.local_addr();
            let result = transfer(ends, via, load);
            let counters = relay_counters(&node);
            node.shutdown();
            node.join().map_err(|e| anyhow!("relay node: {e}"))?;
            let (sent, received) = result?;
            (sent, received, None, Some(counters))
        }
    };
    let kernel_rcvbuf_drops = match (snmp_before, rcvbuf_errors()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };

    let seconds = received.seconds;
    let frames_per_sec = if seconds > 0.0 { received.datagrams as f64 / seconds } else { 0.0 };
    let gbps = |bytes_per_frame: usize| frames_per_sec * bytes_per_frame as f64 * 8.0 / 1e9;
    Ok(RateRun {
        seq: 0,
        kind: kind.name().to_owned(),
        backend: kind.backend(),
        datagram: size,
        offered_per_sec: load.offered,
        sent,
        received: received.datagrams,
        corrupt: received.corrupt,
        seconds,
        frames_per_sec,
        payload_gbps: gbps(size - RELAY_HEADER_LEN),
        udp_gbps: gbps(size),
        wire_gbps: gbps(size + IP_UDP_HEADERS),
        gso_segments,
        gro_segments,
        kernel_rcvbuf_drops,
        relay,
        forwarder,
        failed: (received.datagrams == 0).then(|| format!("nothing arrived ({sent} datagrams sent)")),
    })
}

/// What the receiver counted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Received {
    pub(crate) datagrams: u64,
    pub(crate) corrupt: u64,
    pub(crate) seconds: f64,
}

/// The two plain sockets of a run.
pub(crate) struct Ends {
    pub(crate) sender: UdpSocket,
    tx_state: UdpSocketState,
    pub(crate) receiver: UdpSocket,
    pub(crate) rx_state: UdpSocketState,
    /// Datagrams per GSO send.
    pub(crate) segments: usize,
}

impl Ends {
    /// A sender and a receiver socket on `ip` (in the calling thread's network namespace), with
    /// large buffers and GSO batches of relay frames of `size` bytes.
    pub(crate) fn bind(ip: IpAddr, size: usize) -> Result<Self> {
        let receiver = UdpSocket::bind((ip, 0)).context("binding the receiver")?;
        let rx_state = UdpSocketState::new((&receiver).into()).context("receiver socket state")?;
        // A large receive buffer so the receiver, not the buffer, is what limits delivery.
        let _ = rx_state.set_recv_buffer_size((&receiver).into(), 16 << 20);
        receiver.set_read_timeout(Some(Duration::from_millis(100)))?;
        let sender = UdpSocket::bind((ip, 0)).context("binding the sender")?;
        let tx_state = UdpSocketState::new((&sender).into()).context("sender socket state")?;
        let _ = tx_state.set_send_buffer_size((&sender).into(), 4 << 20);
        let segments = tx_state.max_gso_segments().clamp(1, 64.min(MAX_UDP_SEND / size));
        Ok(Self { sender, tx_state, receiver, rx_state, segments })
    }
}

/// Sends from the sender to `to` on one thread while the receiver counts on another. Returns
/// (datagrams sent, what the receiver got).
pub(crate) fn transfer(ends: Ends, to: SocketAddr, load: Load) -> Result<(u64, Received)> {
    let Ends { sender, tx_state, receiver, rx_state, segments } = ends;
    let receiver_addr = receiver.local_addr()?;
    let sending = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&sending);
    let send = thread::Builder::new().name("relay-rate-tx".into()).spawn(move || {
        pin(load.pins.map(|p| p.ends));
        let result = send_frames(&sender, &tx_state, to, segments, load);
        flag.store(false, Ordering::Release);
        result
    })?;
    let flag = Arc::clone(&sending);
    let receive = thread::Builder::new().name("relay-rate-rx".into()).spawn(move || {
        // Straight from the sender, the receiver takes the middle box's CPU.
        pin(load.pins.map(|p| if to == receiver_addr { p.middle } else { p.ends }));
        recv_loop(&receiver, &rx_state, load.size, load.duration, &flag)
    })?;
    let sent = send.join().map_err(|_| anyhow!("sender thread panicked"))?;
    let received = receive.join().map_err(|_| anyhow!("receiver thread panicked"))?;
    Ok((sent?, received?))
}

/// GSO sends of `segments` relay frames of `load.size` bytes for `load.duration`, as fast as the
/// kernel takes them or paced to the offered rate. Returns the datagrams sent.
fn send_frames(socket: &UdpSocket, state: &UdpSocketState, to: SocketAddr, segments: usize, load: Load) -> Result<u64> {
    let size = load.size;
    let mut buf = vec![0u8; size * segments];
    for (i, frame) in buf.chunks_mut(size).enumerate() {
        let header = [RELAY_MARKER].into_iter().chain(CHANNEL.to_be_bytes());
        for (byte, value) in frame.iter_mut().zip(header) {
            *byte = value;
        }
        // A short-header QUIC packet's first byte, then filler: the relay never looks further.
        for (j, byte) in frame.iter_mut().enumerate().skip(RELAY_HEADER_LEN) {
            *byte = if j == RELAY_HEADER_LEN { 0x40 } else { (i + j) as u8 };
        }
    }
    let transmit = gso_transmit(to, &buf, size);
    let accepted = send_for(socket, state, &transmit, load.duration, |elapsed, accepted| {
        let Some(rate) = load.offered else { return false };
        // Paced: the next batch leaves when the datagrams sent so far are due.
        let due = Duration::from_secs_f64((accepted * segments as u64) as f64 / rate);
        if due <= elapsed {
            return false;
        }
        let ahead = due - elapsed;
        if ahead > Duration::from_micros(200) {
            thread::sleep(ahead.min(Duration::from_millis(10)));
        } else {
            thread::yield_now();
        }
        true
    })?;
    Ok(accepted * segments as u64)
}

/// Counts datagrams until the sender has stopped and the socket has been quiet for one read
/// timeout (at most `duration` + 5 s).
fn recv_loop(
    socket: &UdpSocket,
    state: &UdpSocketState,
    size: usize,
    duration: Duration,
    sending: &AtomicBool,
) -> Result<Received> {
    let mut received = Received::default();
    let header = [RELAY_MARKER].into_iter().chain(CHANNEL.to_be_bytes()).collect::<Vec<u8>>();
    received.seconds = receive_until_quiet(socket, state, duration, sending, |meta, storage| {
        for m in meta {
            let stride = m.stride.max(1);
            let datagrams = m.len.div_ceil(stride) as u64;
            received.datagrams += datagrams;
            // Every datagram must be a whole frame of the size sent, header intact.
            let whole = m.len % stride == 0 && stride == size;
            let intact = storage
                .get(..m.len)
                .is_some_and(|data| data.chunks(stride).all(|d| d.get(..RELAY_HEADER_LEN) == Some(&header)));
            if !(whole && intact) {
                received.corrupt += datagrams;
            }
        }
    })?;
    Ok(received)
}

// ---------------------------------------------------------------------------------------------
// Summaries, table

/// `RcvbufErrors` of the `Udp:` lines of /proc/net/snmp (the whole machine).
pub(crate) fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let index = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

fn summarize(runs: &[RateRun], kind: Kind, size: usize, planned: usize) -> Summary {
    let mine: Vec<&RateRun> = runs
        .iter()
        .filter(|r| r.failed.is_none() && r.kind == kind.name() && r.backend == kind.backend() && r.datagram == size)
        .collect();
    let rates = sorted(mine.iter().map(|r| r.frames_per_sec));
    let loss = sorted(mine.iter().map(|r| 1.0 - r.received as f64 / r.sent.max(1) as f64));
    Summary {
        kind: kind.name().to_owned(),
        backend: kind.backend(),
        datagram: size,
        runs: planned,
        ok: mine.len(),
        median_frames_per_sec: median(&rates),
        min_frames_per_sec: rates.first().copied(),
        max_frames_per_sec: rates.last().copied(),
        median_payload_gbps: median(&sorted(mine.iter().map(|r| r.payload_gbps))),
        median_wire_gbps: median(&sorted(mine.iter().map(|r| r.wire_gbps))),
        of_ceiling: None,
        of_forwarder: None,
        median_loss: median(&loss),
    }
}

fn label(kind: &str, backend: Option<&str>) -> String {
    match (kind, backend) {
        ("relay", Some(b)) => format!("ant-quic relay ({b})"),
        ("udp-ceiling", _) => "raw UDP ceiling (sender → receiver)".to_owned(),
        ("udp-forwarder", _) => "minimal UDP forwarder (GRO in, GSO out)".to_owned(),
        (k, _) => k.to_owned(),
    }
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    write_header(&mut s, &r.machine, (r.load_start, r.load_end), &r.command);
    let _ = writeln!(
        s,
        "- Runs: {} per kind and datagram size, {} s of sending each, kinds alternated in every round; \
         one flow over 127.0.0.1; relay node: 1 data-plane core",
        r.runs_per_kind, r.seconds
    );
    let _ = match r.pinned {
        Some((middle, ends)) => writeln!(
            s,
            "- Threads pinned: relay core or forwarder on CPU {middle} (the receiver in ceiling runs), sender and \
             receiver on CPU {ends}"
        ),
        None => writeln!(s, "- Threads not pinned: the scheduler places sender, middle box and receiver"),
    };
    let _ = match r.offered_mpps {
        Some(m) => writeln!(s, "- Offered load: {m} million datagrams per second, paced"),
        None => writeln!(
            s,
            "- Offered load: as fast as the sender's kernel takes GSO sends (an overload for every path \
             but the ceiling; the excess is dropped at the first full socket)"
        ),
    };
    for skipped in &r.skipped {
        let _ = writeln!(s, "- Skipped: {skipped}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| datagram | path | median Mframes/s | min–max Mframes/s | runs ok | payload Gbit/s | on the wire Gbit/s | \
         of the UDP ceiling | of the forwarder | lost (median) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for x in &r.summaries {
        let m = |v: Option<f64>| v.map(|v| v / 1e6);
        let pct = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{:.1} %", v * 100.0));
        let _ = writeln!(
            s,
            "| {} B | {} | {} | {}–{} | {}/{} | {} | {} | {} | {} | {} |",
            x.datagram,
            label(&x.kind, x.backend.as_deref()),
            fmt_opt(m(x.median_frames_per_sec), 3),
            fmt_opt(m(x.min_frames_per_sec), 3),
            fmt_opt(m(x.max_frames_per_sec), 3),
            x.ok,
            x.runs,
            fmt_opt(x.median_payload_gbps, 2),
            fmt_opt(x.median_wire_gbps, 2),
            if x.kind == "udp-ceiling" { "1 (baseline)".to_owned() } else { fmt_opt(x.of_ceiling, 2) },
            if x.kind == "udp-forwarder" { "1".to_owned() } else { fmt_opt(x.of_forwarder, 2) },
            pct(x.median_loss),
        );
    }
    let _ = writeln!(s);
    let _ =
        writeln!(s, "Runs in order (Mframes/s; sent → received; relay drops by reason; kernel receive-buffer drops):");
    let _ = writeln!(s);
    for run in &r.runs {
        let drops = run.relay.as_ref().map_or_else(String::new, |c| {
            let nonzero: Vec<String> =
                c.drops.iter().filter(|(_, n)| *n > 0).map(|(reason, n)| format!("{reason} {n}")).collect();
            if nonzero.is_empty() {
                "; relay drops none".to_owned()
            } else {
                format!("; relay drops {}", nonzero.join(", "))
            }
        });
        let _ = writeln!(
            s,
            "{}. {} B {}: {:.3} ({} → {}{}{}{})",
            run.seq,
            run.datagram,
            label(&run.kind, run.backend.as_deref()),
            run.frames_per_sec / 1e6,
            run.sent,
            run.received,
            if run.corrupt > 0 { format!(", {} not as sent", run.corrupt) } else { String::new() },
            drops,
            run.kernel_rcvbuf_drops.map_or_else(String::new, |n| format!("; kernel {n}")),
        );
    }
    for e in &r.errors {
        let _ = writeln!(s, "- failed: {e}");
    }
    s
}
