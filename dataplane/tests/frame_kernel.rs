//! `dataplane::frame` against the Linux network stack: frames we build, written raw on one end of
//! a veth pair (a Python AF_PACKET socket), arrive at an ordinary UDP socket on the other end
//! intact, with their source and ECN, while the damaged ones `classify` refuses are dropped by the
//! kernel too; and datagrams the kernel sends, captured raw, classify as the datagrams they are.
//!
//! Two network namespaces of our own joined by a veth pair (deleted when the test ends, whatever
//! happened); the sending end of kernel datagrams has checksum offload off, so that the capture
//! sees the checksums a NIC would put on the wire. Needs root, `ip`, `ethtool` and `python3`:
//! without them the test fails under `CI=true` and is skipped elsewhere
//! (tests/common/prerequisite.rs). Every child runs under `timeout` and is reaped.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../tests/common/prerequisite.rs"]
mod prerequisite;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdout, Command, Stdio};

use ant_quic_dataplane::frame::{classify, Classified, NotOurs, UdpFrame};
use ant_quic_dataplane::quinn_proto::EcnCodepoint;
use common::{mac, run};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const A4: &str = "10.204.0.1";
const B4: &str = "10.204.0.2";
const A6: &str = "fd00:204::1";
const B6: &str = "fd00:204::2";
const MTU: usize = 1500;
/// Longest any child may run (`timeout`), so that a stuck one cannot hang the test.
const CHILD_SECONDS: &str = "30";
/// The payload that tells the Python end a family's datagrams are all sent.
const END: &[u8] = b"END";

/// Two namespaces, `a` and `b`, joined by veth `xa` (in `a`) and `xb` (in `b`), with IPv4 and
/// IPv6 addresses, static neighbours, and checksum offload off on `xb`.
struct Lab {
    names: Vec<String>,
}

impl Lab {
    fn create(tag: &str) -> Self {
        let a = format!("aq-frame-{}-{tag}", std::process::id());
        let b = format!("{a}-b");
        let mut lab = Self { names: Vec::new() };
        for name in [&a, &b] {
            run("ip", &["netns", "add", name]);
            lab.names.push(name.clone());
        }
        let (mac_a, mac_b) = (mac(MAC_A), mac(MAC_B));
        run("ip", &["-n", &a, "link", "add", "xa", "address", &mac_a, "type", "veth", "peer", "name", "xb"]);
        run("ip", &["-n", &a, "link", "set", "xb", "address", &mac_b, "netns", &b]);
        for (ns, dev, v4, v6, peer4, peer6, peer_mac) in
            [(&a, "xa", A4, A6, B4, B6, &mac_b), (&b, "xb", B4, B6, A4, A6, &mac_a)]
        {
            run("ip", &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            run("ip", &["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            for peer in [peer4, peer6] {
                run("ip", &["-n", ns, "neigh", "replace", peer, "lladdr", peer_mac, "dev", dev, "nud", "permanent"]);
            }
        }
        run("ip", &["netns", "exec", &b, "ethtool", "-K", "xb", "tx", "off"]);
        lab
    }

    fn a(&self) -> &str {
        &self.names[0]
    }

    fn b(&self) -> &str {
        &self.names[1]
    }

    /// `python3 -c script args` in namespace `ns`, bounded by `timeout`, stdin and stdout piped.
    fn python(&self, ns: &str, script: &str, args: &[&str]) -> Reaped {
        let child = Command::new("timeout")
            .args([CHILD_SECONDS, "ip", "netns", "exec", ns, "python3", "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        Reaped(child)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// A child killed and reaped when dropped, whatever the test did with it.
struct Reaped(Child);

impl Reaped {
    /// Wait for a line `ready` (the child's socket is open); the rest of stdout stays unread.
    fn wait_ready(&mut self) -> BufReader<ChildStdout> {
        let mut out = BufReader::new(self.0.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the Python end did not start");
        out
    }

    /// Close stdin, wait for the exit (bounded by `timeout`) and check it succeeded.
    fn finish(&mut self) {
        drop(self.0.stdin.take());
        let status = self.0.wait().unwrap();
        assert!(status.success(), "python3 exited with {status}");
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// Whether the lab can be built here: root, `ip`, `ethtool`, `python3`.
fn lab_here() -> bool {
    prerequisite::require(prerequisite::is_root(), "root (the test creates network namespaces)").unwrap()
        && prerequisite::require(
            ["ip", "ethtool", "python3", "timeout"].iter().all(|p| prerequisite::installed(p).is_some()),
            "`ip`, `ethtool`, `python3` and `timeout` (Debian packages iproute2, ethtool, python3, coreutils)",
        )
        .unwrap()
}

/// A seeded generator (xorshift), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// 1 to 1400 random bytes.
    fn payload(&mut self) -> Vec<u8> {
        let len = 1 + (self.next() % 1400) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Writes each line of stdin (a frame in hex) on the interface `argv[1]`.
const SEND_RAW: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
print("ready", flush=True)
for line in sys.stdin:
    if line.strip():
        s.send(bytes.fromhex(line.strip()))
"#;

/// Receives on `argv[1]:argv[3]` and `[argv[2]]:argv[3]` until each got "END" (or 10 s pass):
/// one line per datagram, "address port tos payload-hex".
const RECEIVE_UDP: &str = r#"
import select, socket, struct, sys
port = int(sys.argv[3])
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.setsockopt(socket.IPPROTO_IP, 13, 1)       # IP_RECVTOS
s4.bind((sys.argv[1], port))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, 66, 1)     # IPV6_RECVTCLASS
s6.bind((sys.argv[2], port))
print("ready", flush=True)
open_sockets = [s4, s6]
while open_sockets:
    ready, _, _ = select.select(open_sockets, [], [], 10)
    if not ready:
        print("timeout", flush=True)
        break
    for s in ready:
        data, ancillary, _, addr = s.recvmsg(65535, 64)
        if data == b"END":
            open_sockets.remove(s)
            continue
        tos = -1
        for level, kind, value in ancillary:
            if (level, kind) == (socket.IPPROTO_IP, 1):
                tos = value[0]
            if (level, kind) == (socket.IPPROTO_IPV6, 67):
                tos = struct.unpack("i", value)[0]
        print(addr[0], addr[1], tos, data.hex(), flush=True)
"#;

/// Captures every frame arriving on interface `argv[1]` (hex, one a line) until two carried
/// "END" (or 10 s pass).
const CAPTURE_RAW: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.bind((sys.argv[1], 0))
s.settimeout(10)
print("ready", flush=True)
ends = 0
while ends < 2:
    frame, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    print(frame.hex(), flush=True)
    if frame.endswith(b"END"):
        ends += 1
"#;

/// Sends each payload (hex, `argv[5:]`) from `argv[1]`:`argv[3]` to `argv[2]`:`argv[4]` with ECN
/// ECT(0) over IPv4, from the IPv6 addresses (`argv[6..]`) with ECT(1), then "END" on each.
const SEND_UDP: &str = r#"
import socket, sys
src4, src6, dst4, dst6, sport, dport = sys.argv[1:7]
payloads = [bytes.fromhex(p) for p in sys.argv[7:]]
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x02)
s4.bind((src4, int(sport)))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, 67, 0x01)  # IPV6_TCLASS
s6.bind((src6, int(sport)))
print("ready", flush=True)
for p in payloads + [b"END"]:
    s4.sendto(p, (dst4, int(dport)))
    s6.sendto(p, (dst6, int(dport)))
"#;

fn endpoint(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn frame_from_a(src: SocketAddr, dst: SocketAddr, ecn: Option<EcnCodepoint>, payload: &[u8]) -> Vec<u8> {
    let repr =
        UdpFrame { src_mac: MAC_A, dst_mac: MAC_B, src, dst, dscp: 0, ecn, identification: payload.len() as u16 };
    let mut buf = vec![0u8; 2048];
    let len = repr.build(&mut buf, payload, MTU).unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn the_kernel_takes_our_frames_and_drops_those_classify_refuses() {
    if !lab_here() {
        return;
    }
    let lab = Lab::create("in");
    let port = 7400;
    let ours = [endpoint(B4, port), endpoint(B6, port)];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Damaged frames first: had the kernel taken one, it would be read before the good ones.
    let mut refused = Vec::new();
    let mut bad_udp = frame_from_a(endpoint(A4, 5001), ours[0], None, b"bad udp checksum");
    *bad_udp.last_mut().unwrap() ^= 1;
    refused.push((bad_udp, NotOurs::BadUdpChecksum));
    let mut bad_ip = frame_from_a(endpoint(A4, 5002), ours[0], None, b"bad ip checksum");
    bad_ip[24] ^= 1;
    refused.push((bad_ip, NotOurs::BadIpChecksum));
    let mut zero6 = frame_from_a(endpoint(A6, 5003), ours[1], None, b"no udp checksum over ipv6");
    zero6[60..62].copy_from_slice(&[0, 0]);
    refused.push((zero6, NotOurs::BadUdpChecksum));
    let mut bad_udp6 = frame_from_a(endpoint(A6, 5004), ours[1], None, b"bad udp checksum");
    bad_udp6[70] ^= 0x80;
    refused.push((bad_udp6, NotOurs::BadUdpChecksum));
    for (frame, reason) in &refused {
        assert_eq!(classify(frame, &ours, MTU), Classified::ToKernel(*reason));
    }

    // Good frames: random ports, lengths and payloads, ECN, and one IPv4 datagram without a
    // UDP checksum (allowed over IPv4).
    let ecns = [None, Some(EcnCodepoint::Ect0), Some(EcnCodepoint::Ect1), Some(EcnCodepoint::Ce)];
    let mut sent = Vec::new();
    for i in 0..40 {
        let (src_ip, dst) = if i % 2 == 0 { (A4, ours[0]) } else { (A6, ours[1]) };
        let src = endpoint(src_ip, 1024 + (rng.next() % 60_000) as u16);
        let ecn = ecns[i % 4];
        let payload = rng.payload();
        let mut frame = frame_from_a(src, dst, ecn, &payload);
        if i == 2 {
            frame[40..42].copy_from_slice(&[0, 0]);
        }
        let Classified::Datagram(d) = classify(&frame, &ours, MTU) else { panic!("our own frame {i} refused") };
        assert_eq!((d.src, d.dst, d.ecn, &frame[d.payload]), (src, dst, ecn, &payload[..]));
        sent.push((src, ecn, payload, frame));
    }
    let end4 = frame_from_a(endpoint(A4, 5999), ours[0], None, END);
    let end6 = frame_from_a(endpoint(A6, 5999), ours[1], None, END);

    let mut receiver = lab.python(lab.b(), RECEIVE_UDP, &[B4, B6, &port.to_string()]);
    let received = receiver.wait_ready();
    let mut sender = lab.python(lab.a(), SEND_RAW, &["xa"]);
    sender.wait_ready();
    let mut stdin = sender.0.stdin.take().unwrap();
    let frames = refused.iter().map(|(f, _)| f).chain(sent.iter().map(|(.., f)| f)).chain([&end4, &end6]);
    for frame in frames {
        writeln!(stdin, "{}", hex(frame)).unwrap();
    }
    drop(stdin);
    sender.finish();

    let lines: Vec<String> = received.lines().map(Result::unwrap).collect();
    receiver.finish();
    assert!(!lines.iter().any(|l| l == "timeout"), "the END datagrams never arrived: {lines:?}");
    for family_is_v4 in [true, false] {
        let got: Vec<(SocketAddr, i32, Vec<u8>)> = lines
            .iter()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                (
                    SocketAddr::new(f[0].parse::<IpAddr>().unwrap(), f[1].parse().unwrap()),
                    f[2].parse().unwrap(),
                    unhex(f[3]),
                )
            })
            .filter(|(src, ..)| src.is_ipv4() == family_is_v4)
            .collect();
        let expected: Vec<(SocketAddr, i32, Vec<u8>)> = sent
            .iter()
            .filter(|(src, ..)| src.is_ipv4() == family_is_v4)
            .map(|(src, ecn, payload, _)| (*src, ecn.map_or(0, |e| e as i32), payload.clone()))
            .collect();
        assert_eq!(got.len(), expected.len(), "IPv4: {family_is_v4}: a datagram lost, or a damaged one taken");
        assert_eq!(got, expected, "IPv4: {family_is_v4}");
    }
}

#[test]
fn datagrams_the_kernel_sends_classify_as_sent() {
    if !lab_here() {
        return;
    }
    let lab = Lab::create("out");
    let (sport, dport) = (7501u16, 7502u16);
    let ours = [endpoint(A4, dport), endpoint(A6, dport)];
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let payloads: Vec<Vec<u8>> = (0..10).map(|_| rng.payload()).collect();
    let hex_payloads: Vec<String> = payloads.iter().map(|p| hex(p)).collect();

    let mut capture = lab.python(lab.a(), CAPTURE_RAW, &["xa"]);
    let captured = capture.wait_ready();
    let (sport_text, dport_text) = (sport.to_string(), dport.to_string());
    let mut args = vec![B4, B6, A4, A6, sport_text.as_str(), dport_text.as_str()];
    args.extend(hex_payloads.iter().map(String::as_str));
    let mut sender = lab.python(lab.b(), SEND_UDP, &args);
    sender.wait_ready();
    sender.finish();
    let frames: Vec<Vec<u8>> = captured.lines().map(|l| unhex(&l.unwrap())).collect();
    capture.finish();

    let mut datagrams = Vec::new();
    for frame in &frames {
        match classify(frame, &ours, MTU) {
            Classified::Datagram(d) => datagrams.push((d.clone(), frame[d.payload].to_vec())),
            // Neighbour discovery, MLD and the like: not ours.
            Classified::ToKernel(reason) => assert!(
                matches!(reason, NotOurs::NotUdp | NotOurs::NotOurAddress | NotOurs::Ipv6Extension),
                "a captured frame refused for {reason:?}: {}",
                hex(frame)
            ),
        }
    }
    for (v4, src, dst, ecn) in [
        (true, endpoint(B4, sport), ours[0], EcnCodepoint::Ect0),
        (false, endpoint(B6, sport), ours[1], EcnCodepoint::Ect1),
    ] {
        let got: Vec<&(_, Vec<u8>)> = datagrams
            .iter()
            .filter(|(d, p): &&(ant_quic_dataplane::frame::Datagram, Vec<u8>)| d.src.is_ipv4() == v4 && p != END)
            .collect();
        assert_eq!(got.len(), payloads.len(), "IPv4: {v4}: datagrams captured and classified as ours");
        for ((d, payload), sent) in got.into_iter().zip(&payloads) {
            assert_eq!((d.src, d.dst, d.ecn, d.src_mac, d.dst_mac), (src, dst, Some(ecn), MAC_B, MAC_A));
            assert_eq!(payload, sent);
        }
    }
}
