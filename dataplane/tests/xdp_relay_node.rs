//! A node on the af-xdp backend hands its established relay channels to the XDP program (issue
//! 16, stage 2, part B), end to end on a veth between two namespaces of the test's own: the node
//! (one core) on `v0`, two UDP "ends" and a stranger in the peer namespace on `v1`.
//!
//! - after a frame in each direction through the core, frames are forwarded by the program
//!   (XDP_TX): its relayed counter and the channel's packet count grow, the core receives none of
//!   them, and each arrives intact at the other end from the node's address; the relay's
//!   forwarded counters include them once the core has read the map;
//! - a frame from a third address on the channel is not relayed;
//! - the byte limit stops forwarding at the limit, with the drop counted by the core;
//! - at expiry the channel leaves the map and later frames are dropped;
//! - a node that stops takes its channels out of the map.
//!
//! XDP_TX into a veth delivers only when the peer end can take XDP frames: `v1` gets a program
//! that passes everything (see docs/af-xdp.md). Needs root, `ip`, `ethtool` and a kernel with
//! BPF and AF_XDP: without them the test fails under `CI=true` and is skipped elsewhere.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic_dataplane::relay::RelayDrop;
use ant_quic_dataplane::stats::read;
use ant_quic_dataplane::sys::bpf::{Map, Program, XdpLink};
use ant_quic_dataplane::sys::process::current_uid;
use ant_quic_dataplane::sys::xdp::interface_index;
use ant_quic_dataplane::xdp::asm::{Asm, R0};
use ant_quic_dataplane::xdp::program::XDP_PASS;
use ant_quic_dataplane::xdp::Counter;
use ant_quic_dataplane::{Application, BackendKind, Node, NodeConfig, RelayAllocation, RELAY_MARKER};
use common::in_netns::in_netns;
use common::veth::{run, Netns, NODE_IP, PEER_IP};
use common::{total, wait_for};

struct Idle;
impl Application for Idle {}

fn lab_here() -> bool {
    prerequisite::require(current_uid() == 0, "root (the test attaches XDP programs and creates network namespaces)")
        .unwrap()
        && prerequisite::require(
            prerequisite::installed("ip").is_some() && prerequisite::installed("ethtool").is_some(),
            "`ip` and `ethtool` (Debian packages iproute2 and ethtool; scripts/test.sh installs them)",
        )
        .unwrap()
        && prerequisite::require_ok(Map::hash(4, 8, 1, "probe").map(drop), "BPF hash maps (CAP_BPF)").unwrap()
}

/// An XDP program that passes every frame, attached to `v1` in the peer namespace: a veth
/// delivers XDP_TX frames from its peer only when it runs XDP itself.
fn pass_everything_on_v1(ns: &Netns) -> (Program, XdpLink) {
    in_netns(&ns.peer, || {
        let mut asm = Asm::default();
        asm.mov_imm(R0, XDP_PASS as i32);
        asm.exit();
        let program = Program::load_xdp(&asm.finish().unwrap(), "t_pass").unwrap();
        let link = XdpLink::attach(&program, interface_index("v1").unwrap()).unwrap();
        (program, link)
    })
}

fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![RELAY_MARKER];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A UDP socket in the peer namespace.
fn end(ns: &Netns) -> UdpSocket {
    let socket = in_netns(&ns.peer, || UdpSocket::bind((PEER_IP, 0)).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket
}

fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).expect("a relayed frame arrives");
    (buf[..n].to_vec(), from)
}

/// Nothing arrives at `socket` within 300 ms.
fn nothing_arrives(socket: &UdpSocket, what: &str) {
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, from)) = socket.recv_from(&mut buf) {
        panic!("{what}: {n} bytes arrived from {from}");
    }
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
}

#[test]
fn established_relay_channels_are_forwarded_by_xdp_within_their_limits() {
    if !lab_here() {
        return;
    }
    let ns = Netns::create("xrel");
    // The peer's kernel writes whole UDP checksums, as a NIC would (see docs/af-xdp.md).
    run("ip", &["netns", "exec", &ns.peer, "ethtool", "-K", "v1", "tx", "off"]);
    let _pass = pass_everything_on_v1(&ns);
    let node = in_netns(&ns.node, || {
        let mut config = NodeConfig::new(SocketAddr::from((NODE_IP, 0)), None);
        config.cores = Some(1);
        config.backend = Some(BackendKind::AfXdp);
        Node::start(config, Arc::new(|_core: usize| -> Box<dyn Application> { Box::new(Idle) })).unwrap()
    });
    let relay = node.local_addr();
    let xdp = node.xdp().expect("the af-xdp backend attached its program");
    let handle = node.handle();
    let stats = |f: fn(&ant_quic_dataplane::stats::CoreStats) -> u64| total(&handle, f);
    let (a, b, stranger) = (end(&ns), end(&ns), end(&ns));
    let allocation = |channel: u32, expires: Duration, byte_limit: u64| RelayAllocation {
        channel,
        a: a.local_addr().unwrap(),
        b: b.local_addr().unwrap(),
        expires: Instant::now() + expires,
        byte_limit,
        rate_limit: u32::MAX,
    };
    // Generation 1 (the node's) in the high half, as the coordinator allocates them.
    let (open, limited, expiring) = (0x0001_0001, 0x0001_0002, 0x0001_0003);
    node.install_relay(allocation(open, Duration::from_secs(600), u64::MAX)).unwrap();
    node.install_relay(allocation(limited, Duration::from_secs(600), 3 * 1005)).unwrap();
    node.install_relay(allocation(expiring, Duration::from_secs(8), u64::MAX)).unwrap();
    wait_for("the allocations on the core", || stats(|s| read(&s.relay_allocations)) == 3);

    // One frame each way through the core: the channel goes into the map.
    let send_and_check = |from: &UdpSocket, to: &UdpSocket, channel: u32, payload: &[u8]| {
        let sent = frame(channel, payload);
        from.send_to(&sent, relay).unwrap();
        let (data, source) = receive(to);
        assert_eq!(source, relay, "relayed from the node's address");
        assert_eq!(data, sent, "relayed intact");
    };
    for channel in [open, limited, expiring] {
        send_and_check(&a, &b, channel, b"first, through the core");
        send_and_check(&b, &a, channel, b"second, through the core");
        wait_for("the channel in the map", || xdp.relay_entry(channel).unwrap().is_some());
    }
    let core_frames = stats(|s| read(&s.relay_forwarded));
    assert_eq!(core_frames, 6, "the first two frames of each channel went through the core");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 0);

    // From now on XDP forwards them: the core receives nothing.
    let received_by_core = stats(|s| read(&s.rx_datagrams));
    let mut relayed_bytes = 0;
    for i in 0..100u32 {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let payload: Vec<u8> = (0..1 + (i as usize * 13) % 1400).map(|j| (j as u32 ^ i) as u8).collect();
        send_and_check(from, to, open, &payload);
        relayed_bytes += frame(open, &payload).len() as u64;
    }
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 100);
    let entry = xdp.relay_entry(open).unwrap().unwrap();
    assert_eq!((entry.packets, entry.bytes), (100, relayed_bytes));
    assert_eq!(stats(|s| read(&s.rx_datagrams)), received_by_core, "the core received none of them");
    // The relay's counters include them once the core has read the map (about once a second).
    wait_for("the XDP frames in the relay's counters", || stats(|s| read(&s.relay_xdp_forwarded)) == 100);
    assert_eq!(stats(|s| read(&s.relay_forwarded)), core_frames + 100);

    // A stranger on the channel is not relayed (the core counts it).
    stranger.send_to(&frame(open, b"not an end"), relay).unwrap();
    wait_for("the stranger's frame dropped", || stats(|s| s.relay_drops(RelayDrop::WrongSource)) == 1);
    nothing_arrives(&a, "the stranger's frame at a");
    nothing_arrives(&b, "the stranger's frame at b");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 100);

    // The byte limit: 3 × 1,005 bytes, of which the core's two frames used 57: two 1,005-byte
    // frames pass in XDP, the third does not and is dropped by the core as over the limit.
    let big = [7u8; 1000];
    send_and_check(&a, &b, limited, &big);
    send_and_check(&b, &a, limited, &big);
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 102);
    a.send_to(&frame(limited, &big), relay).unwrap();
    wait_for("the frame over the limit dropped", || stats(|s| s.relay_drops(RelayDrop::ByteLimit)) == 1);
    nothing_arrives(&b, "the frame over the byte limit");
    assert_eq!(xdp.relay_entry(limited).unwrap(), None, "a channel over its limit leaves the map");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 102);

    // Expiry: forwarded in XDP until then; then out of the map, and frames are dropped.
    send_and_check(&a, &b, expiring, b"before expiry");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 103);
    wait_for("the expired channel out of the map", || xdp.relay_entry(expiring).unwrap().is_none());
    let dropped = || stats(|s| s.relay_drops(RelayDrop::Expired) + s.relay_drops(RelayDrop::UnknownChannel));
    let before = dropped();
    a.send_to(&frame(expiring, b"after expiry"), relay).unwrap();
    wait_for("the frame after expiry dropped", || dropped() == before + 1);
    nothing_arrives(&b, "the frame after expiry");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 103);
    // The open channel is still forwarded in XDP.
    send_and_check(&b, &a, open, b"still open");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 104);
    // A core that stops takes its channels back (the map, held here, outlives the program).
    let channels = xdp.relay_channels();
    assert!(channels.lookup(&ant_quic_dataplane::xdp::relay::key(open)).unwrap().is_some());
    node.shutdown();
    node.join().unwrap();
    assert_eq!(channels.lookup(&ant_quic_dataplane::xdp::relay::key(open)).unwrap(), None, "removed at stop");
}

#[test]
fn with_xdp_relay_off_every_relay_frame_goes_through_the_core() {
    if !lab_here() {
        return;
    }
    let ns = Netns::create("xrof");
    run("ip", &["netns", "exec", &ns.peer, "ethtool", "-K", "v1", "tx", "off"]);
    let _pass = pass_everything_on_v1(&ns);
    let node = in_netns(&ns.node, || {
        let mut config = NodeConfig::new(SocketAddr::from((NODE_IP, 0)), None);
        config.cores = Some(1);
        config.backend = Some(BackendKind::AfXdp);
        config.xdp_relay = false;
        Node::start(config, Arc::new(|_core: usize| -> Box<dyn Application> { Box::new(Idle) })).unwrap()
    });
    let relay = node.local_addr();
    let xdp = node.xdp().expect("the af-xdp backend attached its program");
    let handle = node.handle();
    let (a, b) = (end(&ns), end(&ns));
    let channel = 0x0001_0001;
    node.install_relay(RelayAllocation {
        channel,
        a: a.local_addr().unwrap(),
        b: b.local_addr().unwrap(),
        expires: Instant::now() + Duration::from_secs(600),
        byte_limit: u64::MAX,
        rate_limit: u32::MAX,
    })
    .unwrap();
    wait_for("the allocation on the core", || total(&handle, |s| read(&s.relay_allocations)) == 1);
    // Frames each way, over more than the core's once-a-second sweep: with the channel offered
    // to XDP it would be in the map by then.
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut frames = 0;
    while Instant::now() < deadline {
        for (from, to) in [(&a, &b), (&b, &a)] {
            let sent = frame(channel, b"through the core");
            from.send_to(&sent, relay).unwrap();
            assert_eq!(receive(to), (sent, relay), "relayed intact from the node's address");
            frames += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(xdp.relay_entry(channel).unwrap(), None, "the channel stays out of the map");
    assert_eq!(xdp.count(Counter::Relayed).unwrap(), 0);
    assert_eq!(total(&handle, |s| read(&s.relay_forwarded)), frames, "the core forwarded every frame");
    node.shutdown();
    node.join().unwrap();
}

/// CPU time (user + system) of the node's core thread so far.
fn core_cpu() -> Duration {
    let ticks = ant_quic_dataplane::sys::process::clock_ticks_per_second().unwrap();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        if std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim() != "ant-quic-core-0" {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // The fields after the command's closing parenthesis; utime and stime are 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let used: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        return Duration::from_millis(used * 1000 / ticks);
    }
    panic!("no core thread");
}

#[test]
#[ignore = "a benchmark: cargo test --release -p ant-quic-dataplane --test xdp_relay_node -- --ignored --nocapture"]
fn measure_relay_rate_and_core_cpu_in_xdp_against_through_the_core() {
    if !lab_here() {
        return;
    }
    const FRAMES: usize = 100_000;
    let ns = Netns::create("xrbm");
    run("ip", &["netns", "exec", &ns.peer, "ethtool", "-K", "v1", "tx", "off"]);
    let _pass = pass_everything_on_v1(&ns);
    let (a, b) = (end(&ns), end(&ns));
    let mut results: Vec<(BackendKind, f64, f64)> = Vec::new();
    for round in 0..5u32 {
        for backend in [BackendKind::AfXdp, BackendKind::Portable] {
            let node = in_netns(&ns.node, move || {
                let mut config = NodeConfig::new(SocketAddr::from((NODE_IP, 0)), None);
                config.cores = Some(1);
                config.backend = Some(backend);
                Node::start(config, Arc::new(|_core: usize| -> Box<dyn Application> { Box::new(Idle) })).unwrap()
            });
            let relay = node.local_addr();
            let channel = 0x0001_0100 + round;
            node.install_relay(RelayAllocation {
                channel,
                a: a.local_addr().unwrap(),
                b: b.local_addr().unwrap(),
                expires: Instant::now() + Duration::from_secs(600),
                byte_limit: u64::MAX,
                rate_limit: u32::MAX,
            })
            .unwrap();
            wait_for("the allocation", || total(&node.handle(), |s| read(&s.relay_allocations)) == 1);
            for (from, to) in [(&a, &b), (&b, &a)] {
                from.send_to(&frame(channel, b"warm-up"), relay).unwrap();
                receive(to);
            }
            if let Some(xdp) = node.xdp() {
                wait_for("the channel in the map", || xdp.relay_entry(channel).unwrap().is_some());
            }
            let sink = b.try_clone().unwrap();
            let sent = frame(channel, &[0x5a; 1195]);
            let cpu_before = core_cpu();
            let start = Instant::now();
            let counter = std::thread::spawn(move || {
                sink.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let (mut count, mut last) = (0usize, Instant::now());
                let mut buf = [0u8; 2048];
                while sink.recv_from(&mut buf).is_ok() {
                    count += 1;
                    last = Instant::now();
                }
                (count, last)
            });
            for _ in 0..FRAMES {
                a.send_to(&sent, relay).unwrap();
            }
            let (count, last) = counter.join().unwrap();
            let cpu = core_cpu().saturating_sub(cpu_before);
            let rate = count as f64 / last.saturating_duration_since(start).as_secs_f64();
            let cpu_per_frame_ns = cpu.as_nanos() as f64 / count.max(1) as f64;
            eprintln!(
                "round {round} {backend}: {count}/{FRAMES} delivered, {:.0} frames/s, core CPU {cpu:?} ({cpu_per_frame_ns:.0} ns/frame)",
                rate
            );
            results.push((backend, rate, cpu_per_frame_ns));
            node.shutdown();
            node.join().unwrap();
        }
    }
    for backend in [BackendKind::AfXdp, BackendKind::Portable] {
        let median = |f: fn(&(BackendKind, f64, f64)) -> f64| {
            let mut v: Vec<f64> = results.iter().filter(|r| r.0 == backend).map(f).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        eprintln!("{backend}: frames/s median/min/max {:?}, core ns/frame {:?}", median(|r| r.1), median(|r| r.2));
    }
}
