//! `relay-rate --veth`: relay forwarding on a veth pair between two network namespaces made for
//! the session. The sender and the receiver (the channel's two ends) are plain UDP sockets in
//! the peer's namespace; what sits in the node's namespace, on `v0`, is one of:
//!
//! - `relay (io-uring)` / `relay (af-xdp)`: the relay node (one data-plane core), user space;
//!   on af-xdp with `xdp_relay` off, so every frame goes through the core;
//! - `XDP relay`: the relay node on af-xdp with the channel offloaded: one frame each way goes
//!   through the core, which then puts the channel in its program's map; the rest never reach
//!   a core;
//! - `XDP_TX ceiling`: a minimal XDP_TX forwarder (`xdp::bench_programs`), the ceiling.
//!
//! XDP_TX on a veth hands the frame to the peer's end, which takes it only when that end runs
//! NAPI. On Linux 6.18 turning GRO on there was not enough (every frame XDP_TXed was lost);
//! an XDP program that passes every frame, attached to the peer's end, is: it is there for
//! every kind of run (`--peer-napi` changes it). CPU is read from /proc/stat (user,
//! nice, system, irq and softirq time of every CPU) around each run, because XDP runs in softirq
//! and is charged to no process; it includes the sender and the receiver.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use ant_quic_dataplane::xdp::Counter;
use ant_quic_dataplane::{BackendKind, Node, RELAY_HEADER_LEN};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use super::relay_node::{relay_counters, start_relay};
use super::xdp_tx::Attached;
use super::{ratio, rcvbuf_errors, transfer, Ends, Load, Pins, RelayRateArgs, CHANNEL};
use crate::harness::{command_line, fmt_opt, loadavg, machine, median, print_report, sorted, write_header, Machine};
use crate::veth::{in_namespace, VethPair, NODE_IF, NODE_IP, PEER_IF, PEER_IP};

/// How the peer's end of the veth is made to take XDP_TX frames (it must run NAPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerNapi {
    /// An XDP program that passes every frame, attached to the peer's end for the XDP runs only:
    /// a NIC would need nothing, and the program slows what the user-space relay sends (GSO
    /// batches are split before it), so those runs go without.
    XdpPass,
    /// The same program for every run.
    XdpPassAlways,
    /// GRO turned on on the peer's end, no program.
    Gro,
    /// Neither (GRO off, no program).
    None,
}

/// The relay's UDP port on `v0`.
const RELAY_PORT: u16 = 4500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    XdpTx,
    XdpRelay,
    Node(BackendKind),
}

impl Kind {
    const ALL: [Kind; 4] =
        [Kind::XdpTx, Kind::XdpRelay, Kind::Node(BackendKind::IoUring), Kind::Node(BackendKind::AfXdp)];

    fn label(self) -> String {
        match self {
            Kind::XdpTx => "minimal XDP_TX forwarder (ceiling)".to_owned(),
            Kind::XdpRelay => "relay node, channel forwarded in XDP (af-xdp)".to_owned(),
            Kind::Node(backend) => format!("relay node, user space ({backend})"),
        }
    }
}

#[derive(Debug, Serialize)]
struct Run {
    seq: usize,
    path: String,
    datagram: usize,
    sent: u64,
    received: u64,
    corrupt: u64,
    seconds: f64,
    frames_per_sec: f64,
    payload_gbps: f64,
    /// Frames the middle box says it forwarded (the node's counter, the channel's packets).
    forwarded: Option<u64>,
    /// Busy CPU seconds of the whole machine during the run (/proc/stat).
    busy_cpu_seconds: Option<f64>,
    /// `busy_cpu_seconds` per frame received, in microseconds.
    cpu_us_per_frame: Option<f64>,
    kernel_rcvbuf_drops: Option<u64>,
    failed: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    path: String,
    datagram: usize,
    ok: usize,
    runs: usize,
    median_frames_per_sec: Option<f64>,
    min_frames_per_sec: Option<f64>,
    max_frames_per_sec: Option<f64>,
    median_payload_gbps: Option<f64>,
    median_cpu_us_per_frame: Option<f64>,
    median_loss: Option<f64>,
    of_io_uring_relay: Option<f64>,
    of_xdp_tx: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    machine: Machine,
    seconds: f64,
    runs_per_kind: usize,
    offered_mpps: Option<f64>,
    pinned: Option<(usize, usize)>,
    load_start: Option<f64>,
    load_end: Option<f64>,
    peer_napi: PeerNapi,
    summaries: Vec<Summary>,
    runs: Vec<Run>,
    errors: Vec<String>,
}

/// The veth session: every kind per size and round, alternated; prints the table or JSON.
pub(super) fn run(args: &RelayRateArgs) -> Result<()> {
    let pins = if args.pin {
        let cpus = ant_quic_dataplane::sys::thread::allowed_cpus();
        match (cpus.first(), cpus.last()) {
            (Some(&middle), Some(&ends)) if middle != ends => Some(Pins { middle, ends }),
            _ => bail!("--pin needs two CPUs"),
        }
    } else {
        None
    };
    let veth = VethPair::create("relay")?;
    veth.in_peer("ethtool", &["-K", PEER_IF, "gro", if args.peer_napi == PeerNapi::Gro { "on" } else { "off" }])?;
    let peer_pass = match args.peer_napi {
        PeerNapi::XdpPassAlways => Some(in_namespace(&veth.peer, || Attached::pass_all(PEER_IF))?),
        _ => None,
    };
    let load_start = loadavg();
    let (mut runs, mut errors) = (Vec::new(), Vec::new());
    for &size in &args.sizes {
        for repetition in 1..=args.runs {
            for kind in Kind::ALL {
                let what = format!("{} {size} B, run {repetition}/{}", kind.label(), args.runs);
                eprintln!("[relay-rate] {what} …");
                let load = Load {
                    size,
                    duration: Duration::from_secs_f64(args.seconds),
                    offered: args.offered_mpps.map(|m| m * 1e6),
                    pins,
                };
                match run_once(&veth, kind, load, args.peer_napi) {
                    Ok(mut r) => {
                        r.seq = runs.len() + 1;
                        eprintln!(
                            "[relay-rate]   {:.3} Mframes/s, {} of {} arrived, {} µs CPU per frame",
                            r.frames_per_sec / 1e6,
                            r.received,
                            r.sent,
                            fmt_opt(r.cpu_us_per_frame, 3)
                        );
                        if let Some(why) = &r.failed {
                            errors.push(format!("{what}: {why}"));
                        }
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
    drop(peer_pass);
    drop(veth);
    let mut summaries = Vec::new();
    for &size in &args.sizes {
        let mut of_size: Vec<Summary> =
            Kind::ALL.iter().map(|k| summarize(&runs, k.label(), size, args.runs)).collect();
        let io_uring = Kind::Node(BackendKind::IoUring).label();
        let uring = of_size.iter().find(|s| s.path == io_uring).and_then(|s| s.median_frames_per_sec);
        let ceiling = of_size.iter().find(|s| s.path == Kind::XdpTx.label()).and_then(|s| s.median_frames_per_sec);
        for s in &mut of_size {
            s.of_io_uring_relay = ratio(s.median_frames_per_sec, uring);
            s.of_xdp_tx = ratio(s.median_frames_per_sec, ceiling);
        }
        summaries.extend(of_size);
    }
    let report = Report {
        command: command_line(),
        machine: machine(),
        seconds: args.seconds,
        runs_per_kind: args.runs,
        offered_mpps: args.offered_mpps,
        pinned: pins.map(|p| (p.middle, p.ends)),
        load_start,
        load_end,
        peer_napi: args.peer_napi,
        summaries,
        runs,
        errors,
    };
    print_report(&report, args.json, markdown)
}

/// What sits on `v0` during a run; dropping it removes it.
enum Middle {
    XdpTx(Attached),
    XdpRelay(Node),
    Node(Node),
}

impl Middle {
    /// Starts `kind` (in the calling thread's namespace: the node's) between `a` and `b`.
    fn start(kind: Kind, a: SocketAddrV4, b: SocketAddrV4, cpu: Option<usize>) -> Result<Self> {
        let relay = SocketAddr::from((NODE_IP, RELAY_PORT));
        Ok(match kind {
            Kind::XdpTx => Middle::XdpTx(Attached::xdp_tx(NODE_IF, RELAY_PORT, b.port())?),
            Kind::XdpRelay => {
                Middle::XdpRelay(start_relay(relay, BackendKind::AfXdp, true, CHANNEL, a.into(), b.into(), cpu)?)
            }
            Kind::Node(backend) => Middle::Node(start_relay(relay, backend, false, CHANNEL, a.into(), b.into(), cpu)?),
        })
    }

    /// Frames it says it forwarded; stops it.
    fn stop(self) -> Result<Option<u64>> {
        match self {
            Middle::XdpTx(forwarder) => {
                drop(forwarder);
                Ok(None)
            }
            Middle::XdpRelay(node) => {
                let redirect = node.xdp().ok_or_else(|| anyhow!("the relay node has no XDP program"))?;
                let entry = redirect.relay_entry(CHANNEL)?.ok_or_else(|| anyhow!("the channel left the map"))?;
                let relayed = redirect.count(Counter::Relayed)?;
                if relayed != entry.packets {
                    bail!("the program counted {relayed} frames relayed, the channel {}", entry.packets);
                }
                node.shutdown();
                node.join().map_err(|e| anyhow!("relay node: {e}"))?;
                Ok(Some(entry.packets))
            }
            Middle::Node(node) => {
                let forwarded = relay_counters(&node).forwarded;
                node.shutdown();
                node.join().map_err(|e| anyhow!("relay node: {e}"))?;
                Ok(Some(forwarded))
            }
        }
    }
}

fn run_once(veth: &VethPair, kind: Kind, load: Load, peer_napi: PeerNapi) -> Result<Run> {
    let size = load.size;
    let peer_pass = match (peer_napi, kind) {
        (PeerNapi::XdpPass, Kind::XdpTx | Kind::XdpRelay) => {
            Some(in_namespace(&veth.peer, || Attached::pass_all(PEER_IF))?)
        }
        _ => None,
    };
    let ends = in_namespace(&veth.peer, move || Ends::bind(IpAddr::V4(PEER_IP), size))?;
    let v4 = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => Err(anyhow!("an end bound to IPv6")),
    };
    let (a, b) = (v4(ends.sender.local_addr()?)?, v4(ends.receiver.local_addr()?)?);
    let cpu = load.pins.map(|p| p.middle);
    // The node's core threads start from this thread, and so live in the node's namespace.
    let middle = in_namespace(&veth.node, move || Middle::start(kind, a, b, cpu))?;
    if let Middle::XdpRelay(node) = &middle {
        offload_channel(node, &ends, SocketAddr::from((NODE_IP, RELAY_PORT)))?;
    }
    let snmp_before = rcvbuf_errors();
    let busy_before = busy_cpu_seconds();
    let result = transfer(ends, SocketAddr::from((NODE_IP, RELAY_PORT)), load);
    let busy_after = busy_cpu_seconds();
    let forwarded = middle.stop()?;
    drop(peer_pass);
    let (sent, received) = result?;
    let busy = match (busy_before, busy_after) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let frames_per_sec = if received.seconds > 0.0 { received.datagrams as f64 / received.seconds } else { 0.0 };
    Ok(Run {
        seq: 0,
        path: kind.label(),
        datagram: size,
        sent,
        received: received.datagrams,
        corrupt: received.corrupt,
        seconds: received.seconds,
        frames_per_sec,
        payload_gbps: frames_per_sec * (size - RELAY_HEADER_LEN) as f64 * 8.0 / 1e9,
        forwarded,
        busy_cpu_seconds: busy,
        cpu_us_per_frame: busy.filter(|_| received.datagrams > 0).map(|b| b * 1e6 / received.datagrams as f64),
        kernel_rcvbuf_drops: match (snmp_before, rcvbuf_errors()) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        },
        failed: (received.datagrams == 0).then(|| format!("nothing arrived ({sent} datagrams sent)")),
    })
}

/// User + nice + system + irq + softirq seconds of every CPU so far (the `cpu` line of
/// /proc/stat; guest time is inside user).
fn busy_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq …
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    let ticks = ant_quic_dataplane::sys::process::clock_ticks_per_second()?;
    Some(busy as f64 / ticks as f64)
}

fn summarize(runs: &[Run], path: String, size: usize, planned: usize) -> Summary {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.failed.is_none() && r.path == path && r.datagram == size).collect();
    let rates = sorted(mine.iter().map(|r| r.frames_per_sec));
    Summary {
        datagram: size,
        ok: mine.len(),
        runs: planned,
        median_frames_per_sec: median(&rates),
        min_frames_per_sec: rates.first().copied(),
        max_frames_per_sec: rates.last().copied(),
        median_payload_gbps: median(&sorted(mine.iter().map(|r| r.payload_gbps))),
        median_cpu_us_per_frame: median(&sorted(mine.iter().filter_map(|r| r.cpu_us_per_frame))),
        median_loss: median(&sorted(mine.iter().map(|r| 1.0 - r.received as f64 / r.sent.max(1) as f64))),
        of_io_uring_relay: None,
        of_xdp_tx: None,
        path,
    }
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    write_header(&mut s, &r.machine, (r.load_start, r.load_end), &r.command);
    let _ = writeln!(
        s,
        "- Path: a veth pair between two network namespaces made for the session; sender and receiver (the channel's \
         two ends, plain UDP sockets, GSO out, GRO in) in one, the relay on `v0` in the other; native XDP; AF_XDP in \
         copy mode (veth has no zero-copy); transmit checksum offload off on the peer's end (AF_XDP needs whole \
         checksums)"
    );
    let _ = writeln!(
        s,
        "- Peer's end: {} (a veth takes XDP_TX frames only while its peer runs NAPI)",
        match r.peer_napi {
            PeerNapi::XdpPass => {
                "an XDP program that passes every frame during the XDP runs (XDP_TX needs it there, a NIC would \
                 not), nothing during the user-space relay runs (it would split their GSO batches); GRO off"
            }
            PeerNapi::XdpPassAlways => "an XDP program that passes every frame, in every run; GRO off",
            PeerNapi::Gro => "GRO on, no XDP program",
            PeerNapi::None => "GRO off, no XDP program",
        }
    );
    let _ = writeln!(
        s,
        "- Channel forwarded in XDP: the relay node on af-xdp puts the channel in its XDP program's map after one \
         frame each way through its core (`[node] xdp_relay`); the user-space af-xdp row runs with it off"
    );
    let _ = writeln!(
        s,
        "- Runs: {} per kind and datagram size, {} s of sending each, kinds alternated in every round; relay node: 1 \
         data-plane core",
        r.runs_per_kind, r.seconds
    );
    let _ = match r.pinned {
        Some((middle, ends)) => writeln!(s, "- Pinned: relay core on CPU {middle}, sender and receiver on CPU {ends}"),
        None => writeln!(s, "- Threads not pinned"),
    };
    let _ = match r.offered_mpps {
        Some(m) => writeln!(s, "- Offered load: {m} million datagrams per second, paced"),
        None => writeln!(s, "- Offered load: as fast as the sender's kernel takes GSO sends"),
    };
    let _ = writeln!(
        s,
        "- CPU per frame: busy time (user, nice, system, irq, softirq) of all CPUs from /proc/stat during the run, \
         over the frames received; it includes the sender and the receiver (and anything else running)"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| datagram | path | median Mframes/s | min–max Mframes/s | runs ok | payload Gbit/s | of the io-uring relay \
         | of the XDP_TX ceiling | CPU µs per frame (median) | lost (median) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for x in &r.summaries {
        let m = |v: Option<f64>| v.map(|v| v / 1e6);
        let _ = writeln!(
            s,
            "| {} B | {} | {} | {}–{} | {}/{} | {} | {} | {} | {} | {} |",
            x.datagram,
            x.path,
            fmt_opt(m(x.median_frames_per_sec), 3),
            fmt_opt(m(x.min_frames_per_sec), 3),
            fmt_opt(m(x.max_frames_per_sec), 3),
            x.ok,
            x.runs,
            fmt_opt(x.median_payload_gbps, 2),
            fmt_opt(x.of_io_uring_relay, 2),
            fmt_opt(x.of_xdp_tx, 2),
            fmt_opt(x.median_cpu_us_per_frame, 3),
            x.median_loss.map_or_else(|| "—".to_owned(), |v| format!("{:.1} %", v * 100.0)),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Runs in order (Mframes/s; sent → received; forwarded by the middle; CPU µs per frame):");
    let _ = writeln!(s);
    for run in &r.runs {
        let _ = writeln!(
            s,
            "{}. {} B {}: {:.3} ({} → {}{}; forwarded {}; {} µs{})",
            run.seq,
            run.datagram,
            run.path,
            run.frames_per_sec / 1e6,
            run.sent,
            run.received,
            if run.corrupt > 0 { format!(", {} not as sent", run.corrupt) } else { String::new() },
            run.forwarded.map_or_else(|| "—".to_owned(), |n| n.to_string()),
            fmt_opt(run.cpu_us_per_frame, 3),
            run.kernel_rcvbuf_drops.map_or_else(String::new, |n| format!("; kernel drops {n}")),
        );
    }
    for e in &r.errors {
        let _ = writeln!(s, "- failed: {e}");
    }
    s
}

/// A node offloads a channel once it has forwarded a frame each way on it (so it knows both
/// ends' next hops): one frame each way, read back, then wait for the channel in the map.
fn offload_channel(node: &Node, ends: &Ends, relay: SocketAddr) -> Result<()> {
    let redirect = node.xdp().ok_or_else(|| anyhow!("the relay node has no XDP program"))?;
    let frame = |len: usize| {
        let mut frame = vec![0u8; len];
        frame[0] = ant_quic_dataplane::RELAY_MARKER;
        frame[1..5].copy_from_slice(&CHANNEL.to_be_bytes());
        frame
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while redirect.relay_entry(CHANNEL)?.is_none() {
        if std::time::Instant::now() > deadline {
            bail!("the relay node did not put the channel in its XDP map within 5 s");
        }
        ends.sender.send_to(&frame(64), relay)?;
        let _ = ends.receiver.recv_from(&mut buf);
        ends.receiver.send_to(&frame(64), relay)?;
        ends.sender.set_read_timeout(Some(Duration::from_millis(100)))?;
        let _ = ends.sender.recv_from(&mut buf);
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the warm-up left in the receiver's buffer is not part of the run.
    ends.receiver.set_nonblocking(true)?;
    while ends.receiver.recv_from(&mut buf).is_ok() {}
    ends.receiver.set_nonblocking(false)?;
    ends.receiver.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(())
}
