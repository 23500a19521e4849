//! Relay channels forwarded inside the XDP program (issue 16, stage 2, part A), run by the kernel
//! over hand-made frames (BPF_PROG_TEST_RUN, with the frame as the program left it):
//!
//! - a relay frame from either end of a channel comes back as XDP_TX, every header byte that of
//!   the frame the node would build to the other end, checksums right, and the channel's
//!   counters grow by its relay bytes and one packet;
//! - a frame failing any check (source, channel, expiry, byte limit, length, marker) goes on to
//!   the redirect logic unchanged, and the counters do not move.
//!
//! Needs root and a kernel with BPF hash maps: without them the tests fail under `CI=true` and
//! are skipped elsewhere (tests/common/prerequisite.rs).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use ant_quic_dataplane::frame::{checksum, MacAddress, UdpFrame, IPV4_FRAME_OVERHEAD};
use ant_quic_dataplane::sys::bpf::{Map, Program};
use ant_quic_dataplane::sys::process::current_uid;
use ant_quic_dataplane::xdp::bench_programs::xdp_tx_forwarder;
use ant_quic_dataplane::xdp::program::{redirect_program, COUNTERS, XDP_PASS, XDP_TX};
use ant_quic_dataplane::xdp::relay::{self, RelayEnd, RelayEntry, ENTRY_SIZE, KEY_SIZE};
use ant_quic_dataplane::xdp::{Counter, Filter};

const NODE_MAC: MacAddress = [0x02, 0, 0, 0, 0, 0x01];
const A_MAC: MacAddress = [0x02, 0, 0, 0, 0, 0x0a];
const B_MAC: MacAddress = [0x02, 0, 0, 0, 0, 0x0b];
const CHANNEL: u32 = 0x0102_0304;
const MTU: usize = 1500;

fn node() -> SocketAddr {
    "10.0.0.1:4433".parse().unwrap()
}
fn end_a() -> SocketAddrV4 {
    "10.0.0.2:5000".parse().unwrap()
}
fn end_b() -> SocketAddrV4 {
    "192.168.7.3:61000".parse().unwrap()
}

/// Root and a kernel that lets us create a BPF hash map.
fn bpf_here() -> bool {
    prerequisite::require(current_uid() == 0, "root (the test loads XDP programs)").unwrap()
        && prerequisite::require_ok(Map::hash(4, 8, 1, "probe").map(drop), "BPF hash maps (CAP_BPF)").unwrap()
}

/// The program with a channel map, its maps kept alive.
struct Relay {
    program: Program,
    channels: Map,
    counters: Map,
    _xsks: Map,
}

impl Relay {
    fn new() -> Self {
        let xsks = Map::xsk(1, "t_xsks").unwrap();
        let counters = Map::counters(COUNTERS, "t_counters").unwrap();
        let channels = Map::hash(KEY_SIZE, ENTRY_SIZE as u32, 16, "t_channels").unwrap();
        let code = redirect_program(
            &Filter::for_bound(node()),
            xsks.as_raw_fd(),
            counters.as_raw_fd(),
            Some(channels.as_raw_fd()),
        )
        .unwrap();
        let program = Program::load_xdp(&code, "t_relay").unwrap_or_else(|e| panic!("{e}"));
        Self { program, channels, counters, _xsks: xsks }
    }

    fn install(&self, channel: u32, entry: RelayEntry) {
        self.channels.insert(&relay::key(channel), &entry.encode()).unwrap();
    }

    fn entry(&self, channel: u32) -> RelayEntry {
        RelayEntry::decode(&self.channels.lookup(&relay::key(channel)).unwrap().unwrap()).unwrap()
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.program.test_run_with_output(frame).unwrap()
    }

    fn count(&self, counter: Counter) -> u64 {
        self.counters.counter(counter as u32).unwrap()
    }
}

fn channel_entry(expiry_ns: u64, byte_limit: u64) -> RelayEntry {
    RelayEntry::new(RelayEnd::new(end_a(), A_MAC), RelayEnd::new(end_b(), B_MAC), expiry_ns, byte_limit)
}

/// A relay frame: marker, channel, payload.
fn relay_payload(channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x22];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frame `UdpFrame` builds (IPv4 header and UDP checksums computed in full).
fn frame(src_mac: MacAddress, dst_mac: MacAddress, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let udp = UdpFrame { src_mac, dst_mac, src, dst, dscp: 0, ecn: None, identification: 0x1234 };
    let mut buf = vec![0u8; IPV4_FRAME_OVERHEAD + payload.len()];
    let len = udp.build(&mut buf, payload, MTU).unwrap();
    buf.truncate(len);
    buf
}

/// Both checksums of an IPv4 frame, recomputed over what it carries.
fn assert_checksums_right(frame: &[u8], what: &str) {
    assert!(checksum::verify(&frame[14..34]), "{what}: IPv4 header checksum");
    let src = IpAddr::from(<[u8; 4]>::try_from(&frame[26..30]).unwrap());
    let dst = IpAddr::from(<[u8; 4]>::try_from(&frame[30..34]).unwrap());
    let field = u16::from_be_bytes([frame[40], frame[41]]);
    assert_ne!(field, 0, "{what}: a UDP checksum was sent");
    assert!(checksum::verify_udp(src, dst, &frame[34..], field), "{what}: UDP checksum");
}

#[test]
fn a_relay_frame_from_either_end_leaves_addressed_to_the_other_end_and_is_counted() {
    if !bpf_here() {
        return;
    }
    let relay = Relay::new();
    relay.install(CHANNEL, channel_entry(u64::MAX, u64::MAX));
    let (a, b) = (SocketAddr::V4(end_a()), SocketAddr::V4(end_b()));
    let (mut bytes, mut packets) = (0u64, 0u64);
    // Lengths odd and even, contents that carry in the checksum sums differently.
    let payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"x".to_vec(),
        b"hello, other end".to_vec(),
        vec![0xff; 1001],
        (0..=255u8).cycle().take(1400).collect(),
    ];
    for payload in &payloads {
        let data = relay_payload(CHANNEL, payload);
        for (from, from_mac, to, to_mac, what) in [(a, A_MAC, b, B_MAC, "a to b"), (b, B_MAC, a, A_MAC, "b to a")] {
            let what = format!("{what}, {} payload bytes", payload.len());
            let input = frame(from_mac, NODE_MAC, from, node(), &data);
            let (action, output) = relay.run(&input);
            assert_eq!(action, XDP_TX, "{what}: sent back out");
            let expected = frame(NODE_MAC, to_mac, node(), to, &data);
            assert_eq!(output.len(), expected.len(), "{what}");
            for (at, (got, want)) in output.iter().zip(&expected).enumerate() {
                assert_eq!(got, want, "{what}: byte {at} of {:02x?}", &output[..IPV4_FRAME_OVERHEAD]);
            }
            assert_checksums_right(&output, &what);
            bytes += data.len() as u64;
            packets += 1;
            let entry = relay.entry(CHANNEL);
            assert_eq!((entry.bytes, entry.packets), (bytes, packets), "{what}: the channel's counters");
        }
    }
    assert_eq!(relay.count(Counter::Relayed), packets);
    assert_eq!(relay.count(Counter::NoSocket) + relay.count(Counter::Passed), 0);

    // A datagram sent without a UDP checksum (allowed over IPv4) is relayed without one.
    let mut input = frame(A_MAC, NODE_MAC, a, node(), &relay_payload(CHANNEL, b"no checksum"));
    input[40..42].fill(0);
    let (action, output) = relay.run(&input);
    assert_eq!(action, XDP_TX);
    assert_eq!(&output[40..42], &[0, 0], "no UDP checksum stays none");
    assert!(checksum::verify(&output[14..34]), "IPv4 header checksum");
    assert_eq!(&output[30..34], &end_b().ip().octets());
}

#[test]
fn frames_failing_a_check_go_on_to_the_redirect_logic_unchanged() {
    if !bpf_here() {
        return;
    }
    let relay = Relay::new();
    let data = relay_payload(CHANNEL, b"0123456789");
    let len = data.len() as u64;
    // Room for exactly two frames of `data`.
    relay.install(CHANNEL, channel_entry(u64::MAX, 2 * len));
    relay.install(7, channel_entry(1, u64::MAX)); // expired at boot
    let a = SocketAddr::V4(end_a());
    let from_a = |data: &[u8]| frame(A_MAC, NODE_MAC, a, node(), data);
    let mut short_udp_length = from_a(&data);
    // The UDP length says 4 payload bytes; the rest is padding (as Ethernet pads short frames).
    short_udp_length[38..40].copy_from_slice(&(8u16 + 4).to_be_bytes());
    let mut long_udp_length = from_a(&data);
    long_udp_length[38..40].copy_from_slice(&(8 + data.len() as u16 + 1).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("another source address", frame(A_MAC, NODE_MAC, "10.0.0.9:5000".parse().unwrap(), node(), &data)),
        ("end a's address, another port", frame(A_MAC, NODE_MAC, "10.0.0.2:5001".parse().unwrap(), node(), &data)),
        ("end b's port, end a's address", frame(A_MAC, NODE_MAC, "10.0.0.2:61000".parse().unwrap(), node(), &data)),
        ("an unknown channel", from_a(&relay_payload(CHANNEL + 1, b"0123456789"))),
        ("an expired channel", from_a(&relay_payload(7, b"0123456789"))),
        ("4 bytes of relay header", from_a(&data[..4])),
        ("a UDP length short of the relay header", short_udp_length),
        ("a UDP length past the frame", long_udp_length),
        ("another marker", from_a(&[&[0x21], &data[1..]].concat())),
        ("not a relay frame", from_a(b"a QUIC packet")),
    ];
    let mut no_socket = 0;
    let check_falls_through = |what: &str, input: &[u8], no_socket: &mut u64| {
        let (action, output) = relay.run(input);
        assert_eq!(action, XDP_PASS, "{what}: on to the redirect logic (no socket, so passed)");
        assert_eq!(output, input, "{what}: unchanged");
        *no_socket += 1;
        assert_eq!(relay.count(Counter::NoSocket), *no_socket, "{what}: counted as the node's datagram");
    };
    for (what, input) in &cases {
        check_falls_through(what, input, &mut no_socket);
    }
    let untouched = relay.entry(CHANNEL);
    assert_eq!((untouched.bytes, untouched.packets), (0, 0), "nothing counted for frames not relayed");
    assert_eq!(relay.entry(7).packets, 0);

    // The byte limit: two frames fit exactly, the third would exceed it.
    for sent in 1..=2 {
        assert_eq!(relay.run(&from_a(&data)).0, XDP_TX, "frame {sent} within the limit");
    }
    check_falls_through("over the byte limit", &from_a(&data), &mut no_socket);
    let entry = relay.entry(CHANNEL);
    assert_eq!((entry.bytes, entry.packets), (2 * len, 2));

    // A channel taken out of the map is no longer forwarded.
    relay.install(CHANNEL, channel_entry(u64::MAX, u64::MAX));
    assert_eq!(relay.run(&from_a(&data)).0, XDP_TX);
    assert!(relay.channels.remove(&relay::key(CHANNEL)).unwrap());
    assert!(!relay.channels.remove(&relay::key(CHANNEL)).unwrap(), "already gone");
    assert!(relay.channels.lookup(&relay::key(CHANNEL)).unwrap().is_none());
    check_falls_through("a removed channel", &from_a(&data), &mut no_socket);
    assert_eq!(relay.count(Counter::Relayed), 3);
}

/// The benchmarks' XDP_TX ceiling (`bench_programs::xdp_tx_forwarder`): a frame to the relay
/// port goes back out with MACs and addresses swapped, to the receiver's port, checksums valid
/// (IPv4) and absent (UDP); a frame to another port is passed unchanged.
#[test]
fn the_benchmarks_xdp_tx_forwarder_turns_frames_around_to_the_receiver_port() {
    if !bpf_here() {
        return;
    }
    let program =
        Program::load_xdp(&xdp_tx_forwarder(4433, 6000).unwrap(), "t_xdp_tx").unwrap_or_else(|e| panic!("{e}"));
    let a = SocketAddr::V4(end_a());
    let payload = relay_payload(CHANNEL, b"to the receiver");
    let (action, out) = program.test_run_with_output(&frame(A_MAC, NODE_MAC, a, node(), &payload)).unwrap();
    assert_eq!(action, XDP_TX);
    let receiver = SocketAddr::new(a.ip(), 6000);
    let mut expected = frame(NODE_MAC, A_MAC, node(), receiver, &payload);
    expected[40..42].copy_from_slice(&[0, 0]);
    // The frame keeps its identification and the rest of its IPv4 header, as `frame` builds both.
    assert_eq!(out, expected, "turned around to the receiver's port, no UDP checksum");
    assert!(checksum::verify(&out[14..34]), "IPv4 header checksum");
    let other = frame(A_MAC, NODE_MAC, a, SocketAddr::new(node().ip(), 4434), &payload);
    assert_eq!(program.test_run_with_output(&other).unwrap(), (XDP_PASS, other));
}
