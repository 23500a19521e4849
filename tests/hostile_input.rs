//! The node binary under hostile UDP input: garbage, truncated QUIC headers, undecryptable
//! Initials, unknown versions, oversized and zero-length datagrams, short headers with unknown
//! connection IDs. Afterwards the node must still run, answer a version probe, serve a real
//! client, print no panic, and exit 0 on SIGTERM.
//!
//! Every datagram goes to 127.0.0.1. The barrage is bounded (about 3,000 datagrams) and every
//! wait has a deadline; child processes are killed on every path by their guards. The random
//! seed is printed; set `ANT_QUIC_HOSTILE_SEED` to replay one.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use common::{run, NodeProcess, TempDir, NODE_BIN};

const QUIC_V1: u32 = 1;
const MIN_INITIAL: usize = 1200;

/// xorshift64*: enough randomness for garbage, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.byte();
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }

    /// Random bytes, between `lo` and `hi` of them.
    fn bytes_between(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let len = self.range(lo, hi);
        self.bytes(len)
    }
}

/// A long-header packet (first byte `first`) with the given version and IDs, `payload` after
/// them, padded with random bytes to `pad_to`.
fn long_header(
    rng: &mut Rng,
    first: u8,
    version: u32,
    dcid: &[u8],
    scid: &[u8],
    payload: &[u8],
    pad_to: usize,
) -> Vec<u8> {
    let mut d = vec![first];
    d.extend_from_slice(&version.to_be_bytes());
    d.push(dcid.len() as u8);
    d.extend_from_slice(dcid);
    d.push(scid.len() as u8);
    d.extend_from_slice(scid);
    d.extend_from_slice(payload);
    while d.len() < pad_to {
        d.push(rng.byte());
    }
    d
}

/// An Initial of QUIC v1 that parses but cannot be decrypted (random protected payload).
fn fake_initial(rng: &mut Rng, total: usize) -> Vec<u8> {
    let dcid = rng.bytes_between(8, 20);
    let scid = rng.bytes_between(0, 20);
    let mut tail = vec![0u8]; // token length 0
    let header_len = 1 + 4 + 1 + dcid.len() + 1 + scid.len() + 1 + 2;
    // The Length field covers the rest: packet number and payload. Sometimes lie about it.
    let honest = total.saturating_sub(header_len);
    let length = match rng.range(0, 3) {
        0 => rng.range(0, 0x3fff),
        _ => honest.min(0x3fff),
    };
    tail.push(0x40 | (length >> 8) as u8);
    tail.push(length as u8);
    let first = 0xc0 | (rng.byte() & 0x0f); // Initial, random reserved/PN-length bits (protected)
    long_header(rng, first, QUIC_V1, &dcid, &scid, &tail, total)
}

/// Every kind of hostile datagram, in a shuffled order.
fn hostile_datagrams(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    // Random bytes, random lengths.
    for _ in 0..1000 {
        let len = rng.range(1, 1500);
        out.push(rng.bytes(len));
    }
    // Zero-length datagrams.
    for _ in 0..50 {
        out.push(Vec::new());
    }
    // Truncated long headers.
    for i in 0..200 {
        let d = match i % 6 {
            0 => vec![0xc0],
            1 => vec![0xc0, 0x00, 0x00],
            2 => {
                // Version 1, DCID length pointing past the end.
                let mut d = vec![0xc0, 0, 0, 0, 1, 20];
                d.extend(rng.bytes_between(0, 19));
                d
            }
            3 => {
                // DCID length beyond the QUIC limit of 20.
                let mut d = vec![0xc0, 0, 0, 0, 1, rng.range(21, 255) as u8];
                d.extend(rng.bytes_between(0, 40));
                d
            }
            4 => {
                // Complete DCID, SCID length pointing past the end.
                let mut d = vec![0xc0, 0, 0, 0, 1, 8];
                d.extend(rng.bytes(8));
                d.push(20);
                d.extend(rng.bytes_between(0, 19));
                d
            }
            _ => {
                // Initial with IDs, then a token length varint claiming more than there is.
                let mut d = vec![0xc3, 0, 0, 0, 1, 8];
                d.extend(rng.bytes(8));
                d.push(8);
                d.extend(rng.bytes(8));
                d.extend([0x7f, 0xff]);
                d.extend(rng.bytes_between(0, 30));
                d
            }
        };
        out.push(d);
    }
    // Short headers with fewer than 8 bytes of connection ID.
    for _ in 0..100 {
        let mut d = vec![0x40 | (rng.byte() & 0x3f)];
        d.extend(rng.bytes_between(0, 7));
        out.push(d);
    }
    // Initials that parse but do not decrypt, padded as a client's must be.
    for _ in 0..300 {
        let total = if rng.range(0, 9) == 0 { rng.range(100, 1199) } else { MIN_INITIAL };
        out.push(fake_initial(rng, total));
    }
    // Unknown versions (including the reserved 0x?a?a?a?a pattern), padded to 1200: these
    // trigger Version Negotiation.
    for i in 0..200 {
        let version = if i % 2 == 0 { 0x1a2a_3a4a | ((rng.next_u64() as u32) & 0xf0f0_f0f0) } else { 0xff00_0000 | i };
        let dcid = rng.bytes_between(8, 20);
        let scid = rng.bytes_between(0, 20);
        let first = 0x80 | rng.byte();
        out.push(long_header(rng, first, version, &dcid, &scid, &[], MIN_INITIAL));
    }
    // Oversized datagrams: random, and Initial-looking.
    for size in [9000usize, 65000] {
        for _ in 0..5 {
            out.push(rng.bytes(size));
            out.push(fake_initial(rng, size));
        }
    }
    // Short headers with random 8-byte connection IDs (the node's CID length), including ones
    // whose first byte names one of the node's cores.
    for i in 0..1000 {
        let mut d = vec![0x40 | (rng.byte() & 0x3f)];
        let mut cid = rng.bytes(8);
        if i % 3 == 0 {
            cid[0] = (i % 2) as u8;
        }
        d.extend(cid);
        d.extend(rng.bytes_between(1, 1300));
        out.push(d);
    }
    // Fisher-Yates shuffle, so each kind arrives between the others.
    for i in (1..out.len()).rev() {
        let j = rng.range(0, i);
        out.swap(i, j);
    }
    out
}

/// Send one unknown-version Initial-sized datagram and wait for the Version Negotiation reply
/// listing QUIC v1. Returns whether one came.
fn version_negotiation_answered(socket: &UdpSocket, node: SocketAddr, rng: &mut Rng) -> Result<bool> {
    socket.set_read_timeout(Some(Duration::from_millis(10)))?;
    let mut buf = vec![0u8; 65536];
    // Drain whatever the barrage provoked (bounded).
    for _ in 0..10_000 {
        if socket.recv_from(&mut buf).is_err() {
            break;
        }
    }
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    for _attempt in 0..5 {
        let dcid = rng.bytes(8);
        let scid = rng.bytes(8);
        let probe = long_header(rng, 0xc0, 0x0a0a_0a0a, &dcid, &scid, &[], MIN_INITIAL);
        socket.send_to(&probe, node)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            let reply = buf.get(..n).unwrap_or_default();
            if from != node || n < 7 || reply.first().is_none_or(|b| b & 0x80 == 0) {
                continue;
            }
            if reply.get(1..5) != Some(&[0, 0, 0, 0][..]) {
                continue;
            }
            // Version Negotiation: DCID echoes our SCID, SCID echoes our DCID, then versions.
            let dcid_len = usize::from(reply.get(5).copied().unwrap_or(0));
            let Some(echoed_dcid) = reply.get(6..6 + dcid_len) else { continue };
            if echoed_dcid != scid.as_slice() {
                continue; // an answer to an earlier datagram
            }
            let scid_at = 6 + dcid_len;
            let scid_len = usize::from(reply.get(scid_at).copied().unwrap_or(0));
            ensure!(
                reply.get(scid_at + 1..scid_at + 1 + scid_len) == Some(dcid.as_slice()),
                "version negotiation does not echo our DCID: {reply:02x?}"
            );
            let versions = reply.get(scid_at + 1 + scid_len..).unwrap_or_default();
            let lists_v1 = versions.chunks_exact(4).any(|v| v == QUIC_V1.to_be_bytes());
            ensure!(lists_v1, "version negotiation does not offer QUIC v1: {reply:02x?}");
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fetch `name` from the node with `ant-quic get` into `out`; returns the bytes written.
fn fetch(node: SocketAddr, name: &str, out: &Path, backend: &str, logs: &Path) -> Result<Vec<u8>> {
    let mut get = Command::new(NODE_BIN);
    get.arg("get").arg(format!("https://{node}/{name}")).arg("--output").arg(out);
    get.args(["--insecure", "--backend", backend, "--timeout", "20"]).env("RUST_LOG", "info");
    let done = run("get", &mut get, logs, Duration::from_secs(40))?;
    let stdout = done.stdout;
    ensure!(
        done.status.success(),
        "ant-quic get ended with {}\nstdout:\n{stdout}\nstderr:\n{}",
        done.status,
        done.stderr
    );
    std::fs::read(out.join(name)).with_context(|| format!("reading the fetched file; get said:\n{stdout}"))
}

fn hostile_input(backend: &str) -> Result<()> {
    let seed = std::env::var("ANT_QUIC_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    });
    eprintln!("hostile_input[{backend}]: seed {seed} (ANT_QUIC_HOSTILE_SEED to replay)");
    let mut rng = Rng::new(seed);

    let dir = TempDir::new(&format!("hostile-{backend}"))?;
    let www = dir.subdir("www")?;
    let content = rng.bytes_between(40_000, 200_000);
    std::fs::write(www.join("blob.bin"), &content)?;

    let mut command = Command::new(NODE_BIN);
    command.args(["--listen", "127.0.0.1:0", "--cores", "2", "--backend", backend, "--data-dir"]);
    command.arg(dir.path().join("data")).arg("--www").arg(&www);
    let mut node = NodeProcess::start(command.env("RUST_LOG", "info").env("RUST_BACKTRACE", "1"), dir.path())?;
    ensure!(node.banner.contains(&format!("backend {backend}")), "node runs another backend: {}", node.banner);
    let target = node.addr;
    ensure!(target.ip().is_loopback(), "node listens on {target}, not loopback");

    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let datagrams = hostile_datagrams(&mut rng);
    let started = Instant::now();
    let mut send_errors = 0usize;
    for (i, datagram) in datagrams.iter().enumerate() {
        if socket.send_to(datagram, target).is_err() {
            send_errors += 1;
        }
        // Pace a little so the node's receive buffer takes most of them; all within ~1 s.
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("sending the barrage took over 10 s (at datagram {i})");
        }
    }
    eprintln!(
        "hostile_input[{backend}]: sent {} datagrams in {:?} ({send_errors} send errors)",
        datagrams.len(),
        started.elapsed()
    );
    // Let the node process what is queued.
    std::thread::sleep(Duration::from_millis(300));

    let status = node.exited()?;
    ensure!(status.is_none(), "node died under hostile input: {status:?}\nstderr:\n{}", node.stderr());

    let answered = version_negotiation_answered(&socket, target, &mut rng)?;
    ensure!(
        answered,
        "node sent no Version Negotiation for an unknown version after the barrage\nstderr:\n{}",
        node.stderr()
    );

    let fetched = fetch(target, "blob.bin", &dir.path().join("out"), backend, dir.path())?;
    ensure!(fetched.len() == content.len(), "fetched {} bytes, served {}", fetched.len(), content.len());
    ensure!(fetched == content, "fetched bytes differ from the served file");

    ensure!(node.exited()?.is_none(), "node exited after the fetch\nstderr:\n{}", node.stderr());
    node.stop_with(libc::SIGTERM, Duration::from_secs(10))?;
    let stderr = node.stderr();
    for marker in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        ensure!(!stderr.contains(marker), "node stderr contains '{marker}':\n{stderr}");
    }
    Ok(())
}

#[test]
fn hostile_input_io_uring() -> Result<()> {
    hostile_input("io-uring")
}

#[test]
fn hostile_input_portable() -> Result<()> {
    hostile_input("portable")
}
