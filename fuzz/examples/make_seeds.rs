//! Writes the seed corpus of the targets added with the node's packet path, Ethernet frames,
//! configuration, admin and hq-interop parsers into `fuzz/seeds/TARGET/`: `cargo run --example make_seeds` in `fuzz/`.
//! (The seeds of the wire-format targets come from their fuzz runs.) The node_datagram seeds use
//! the target's fixed connection-ID key, and a client Initial made by quinn-proto with the
//! node's client TLS config, so they reach the handshake.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ant_quic::config::DEFAULT_FILE;
use ant_quic::tls::{self, ServerAuth, ALPN_ANT_QUIC};
use ant_quic_dataplane::cid::{configure_core_endpoint, CidKey, CoreCidGenerator};
use ant_quic_dataplane::probe;
use ant_quic_dataplane::quinn_proto::{ConnectionIdGenerator, Endpoint, EndpointConfig};

/// As node_datagram.rs.
const KEY: [u8; 16] = *b"ant-quic-fuzzkey";
const GENERATION: u16 = 3;
const CHANNEL: u32 = (GENERATION as u32) << 16 | 1;
/// Senders in node_datagram's meta byte.
const CLIENT: u8 = 0;
const END_A: u8 = 1;
const RELAY: u8 = 3;
/// Flags byte: what the node does with new connections.
const ACCEPT: u8 = 0;
const RETRY: u8 = 1;
const REFUSE: u8 = 2;

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    write(&seeds.join("node_datagram"), &node_datagram())?;
    write(&seeds.join("frame_classify"), &frame_classify())?;
    write(&seeds.join("config_toml"), &config_toml())?;
    write(&seeds.join("admin_request"), &admin_request())?;
    write(&seeds.join("hq_request"), &hq_request())?;
    Ok(())
}

fn write(dir: &Path, seeds: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

/// One datagram in node_datagram's input: meta (sender, receiving core), length, bytes.
fn datagram(sender: u8, core: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![sender | core << 2];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

fn input(flags: u8, datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![flags];
    for d in datagrams {
        out.extend_from_slice(d);
    }
    out
}

/// A client node's first datagram: an Initial carrying a ClientHello for `ant-quic/1`, from an
/// endpoint configured as a node's core (its own key; no grease_quic_bit, so the server keeps the
/// fixed bit in what it sends back, RFC 9287 §3).
fn client_initial() -> Vec<u8> {
    let config = tls::client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).expect("client config");
    let mut endpoint_config = EndpointConfig::default();
    configure_core_endpoint(&mut endpoint_config, 0, 1, &CidKey::from_bytes(*b"client-node-key!"));
    let mut endpoint = Endpoint::new(Arc::new(endpoint_config), None, true, None);
    let server = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 4433);
    let now = Instant::now();
    let (_, mut conn) = endpoint.connect(now, config, server, tls::default_server_name()).expect("connect");
    let mut buf = Vec::new();
    let transmit = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
    buf.truncate(transmit.size);
    buf
}

fn node_datagram() -> Vec<(&'static str, Vec<u8>)> {
    let key = CidKey::from_bytes(KEY);
    let initial = client_initial();
    let mut other_version = initial.clone();
    other_version[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
    // Short headers with IDs this node issued (core 1) and a predecessor issued (generation 2).
    let short = |core: u8, generation: u16| {
        let mut packet = vec![0x40];
        packet.extend_from_slice(&CoreCidGenerator::new(core, generation, key.clone()).generate_cid());
        packet.extend_from_slice(&[0x5a; 40]);
        packet
    };
    let relay_frame = |channel: u32, payload: &[u8]| {
        let mut frame = vec![ant_quic_dataplane::RELAY_MARKER];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    };
    let probe = probe::probe(&key, 1, *b"nonce-01");
    vec![
        ("initial-accept", input(ACCEPT, &[datagram(CLIENT, 0, &initial)])),
        ("initial-twice", input(ACCEPT, &[datagram(CLIENT, 0, &initial), datagram(CLIENT, 0, &initial)])),
        ("initial-retry", input(RETRY, &[datagram(CLIENT, 1, &initial)])),
        ("initial-refuse", input(REFUSE, &[datagram(CLIENT, 0, &initial)])),
        ("version-negotiation", input(ACCEPT, &[datagram(CLIENT, 0, &other_version)])),
        ("short-other-core", input(ACCEPT, &[datagram(CLIENT, 0, &short(1, GENERATION))])),
        ("short-other-generation", input(ACCEPT, &[datagram(CLIENT, 0, &short(0, GENERATION - 1))])),
        ("relayed-initial", input(ACCEPT, &[datagram(RELAY, 0, &relay_frame(CHANNEL, &initial))])),
        ("relay-forward", input(ACCEPT, &[datagram(END_A, 0, &relay_frame(CHANNEL + 1, &[0x40; 60]))])),
        ("probe", input(ACCEPT, &[datagram(CLIENT, 1, &probe)])),
        ("control", input(ACCEPT, &[datagram(CLIENT, 0, &[0x21, 1, 0, 0, 0, 0])])),
    ]
}

fn config_toml() -> Vec<(&'static str, Vec<u8>)> {
    let full = r#"[node]
listen = "[::]:4433"
cores = 2
backend = "portable"
data_dir = "/var/lib/ant-quic"
www = "/srv/www"
bootstrap = ["bootstrap.example:4433", "192.0.2.1:9000"]
drain_timeout = 30

[metrics]
port = 9100
bind = "0.0.0.0"

[logging]
level = "info,ant_quic=debug"
format = "json"
outputs = ["stdout", "file"]
file_path = "/var/log/ant-quic/node.log"
rotation = "hourly"
retention_days = 3

[security]
retry = "always"
retry_threshold = 8
max_half_open = 256
handshake_timeout = 5
"#;
    let renamed = "[node]\nlisten_addr = \"0.0.0.0:9000\"\nbootstrap_nodes = [\"a:1\"]\n\
                   [metrics]\nmetrics_port = 9100\n[logging]\nlog_level = \"warn\"\nlog_format = \"text\"\n";
    let strict = "[compatibility]\nsupport_deprecated_keys = false\nmigration_warnings = false\n\
                  [node]\nlisten_addr = \"0.0.0.0:9000\"\n";
    vec![
        ("default", DEFAULT_FILE.as_bytes().to_vec()),
        ("full", full.as_bytes().to_vec()),
        ("renamed", renamed.as_bytes().to_vec()),
        ("renamed-refused", strict.as_bytes().to_vec()),
        ("unknown-key", b"[logging]\nlevle = \"info\"\n".to_vec()),
        ("bad-value", b"[metrics]\nport = 70000\n".to_vec()),
        // Once an error of two lines: the message quotes the value.
        ("level-newline", b"[logging]\nlevel = \"bad\\nlevel\"\n".to_vec()),
        // Once a panic in the filter parser: a space before a non-ASCII target.
        ("level-space-non-ascii", "[logging]\nlevel = \"info, é=debug\"\n".as_bytes().to_vec()),
    ]
}

fn admin_request() -> Vec<(&'static str, Vec<u8>)> {
    let chunked = |chunk: u8, bytes: &[u8]| [&[chunk][..], bytes].concat();
    vec![
        ("metrics", chunked(64, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nAccept: */*\r\n\r\n")),
        ("health-bytewise", chunked(1, b"GET /health HTTP/1.0\r\n\r\n")),
        ("ready-query", chunked(200, b"GET /ready?verbose=1 HTTP/1.1\r\nUser-Agent: curl/8\r\n\r\n")),
        ("post", chunked(7, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")),
        ("malformed", chunked(16, b"GET /metrics HTTP/2\r\n\r\n")),
        ("bare-lf", chunked(9, b"GET / HTTP/1.1\nHost: a\n\n")),
    ]
}

fn hq_request() -> Vec<(&'static str, Vec<u8>)> {
    // First byte: chunk size, and 0x80 when the stream ends after the bytes.
    let seed = |head: u8, bytes: &[u8]| [&[head][..], bytes].concat();
    vec![
        ("index", seed(16, b"GET /index.html\r\n")),
        ("fin-ends-line", seed(0x80 | 5, b"GET /sub/file.txt")),
        ("in-link", seed(64, b"GET /in-link\r\n")),
        ("out-link", seed(64, b"GET /out-link\r\n")),
        ("dot-dot", seed(3, b"GET /sub/../../secret.txt\r\n")),
        ("double-slash", seed(100, b"GET /sub//./file.txt\r\n")),
        ("not-get", seed(100, b"PUT /index.html\r\n")),
    ]
}

/// Ethernet frames to frame_classify's port (4433): IPv4 and IPv6 datagrams carrying the start of
/// a long header, ECN CE with a DSCP and nothing to carry, a frame padded to Ethernet's 60 bytes,
/// an IPv4 datagram without UDP checksum, and a fragment.
fn frame_classify() -> Vec<(&'static str, Vec<u8>)> {
    use ant_quic_dataplane::frame::UdpFrame;
    use ant_quic_dataplane::quinn_proto::EcnCodepoint;
    let v4 = UdpFrame {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: "192.0.2.1:9000".parse().expect("address"),
        dst: "198.51.100.7:4433".parse().expect("address"),
        dscp: 0,
        ecn: Some(EcnCodepoint::Ect0),
        identification: 1,
    };
    let v6 = UdpFrame {
        src: "[2001:db8::1]:9000".parse().expect("address"),
        dst: "[2001:db8::7]:4433".parse().expect("address"),
        ..v4
    };
    let build = |repr: &UdpFrame, payload: &[u8]| {
        let mut buf = vec![0u8; 1514];
        let len = repr.build(&mut buf, payload, 1500).expect("seed frame fits");
        buf.truncate(len);
        buf
    };
    let quic = [0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0x40, 0x10, 0xaa, 0xbb];
    let mut padded = build(&v4, b"x");
    padded.resize(60, 0);
    let mut no_checksum = build(&v4, &quic);
    no_checksum[40..42].copy_from_slice(&[0, 0]);
    let mut fragment = build(&v4, &quic);
    fragment[20] |= 0x20;
    vec![
        ("ipv4", build(&v4, &quic)),
        ("ipv6", build(&v6, &quic)),
        ("ipv4-ce", build(&UdpFrame { ecn: Some(EcnCodepoint::Ce), dscp: 46, ..v4 }, &[])),
        ("ipv4-padded", padded),
        ("ipv4-no-udp-checksum", no_checksum),
        ("ipv4-fragment", fragment),
    ]
}
