//! NAT rebinding under loss: a bulk download survives a client whose NAT moves it to a new source
//! port every second on a path that drops 5 % of datagrams each way, with the bytes intact.
//!
//! Between client and server runs a "lossy rebinding NAT" (a UDP proxy on loopback, in this test
//! process): it drops datagrams with a seeded generator (a failure reproduces with the same
//! `ANT_QUIC_REBIND_SEED`) and, every [`REBIND_EVERY`], sends the client's datagrams from a fresh
//! socket. Datagrams the server still sends to an earlier port are lost, as behind a NAT that
//! forgot the old mapping.
//!
//! * `aioquic_client_downloads_from_node_across_rebinding`: the node (`--www`) serves, aioquic's
//!   `tests/interop/hq_client.py --keep-alive 1` fetches through the proxy (a client that never
//!   speaks after its NAT moved cannot be found by any server; docs/reliability.md).
//! * `get_downloads_from_aioquic_across_rebinding`: `tests/interop/hq_server.py` serves,
//!   `ant-quic get` fetches through the proxy.
//!
//! Each asserts the SHA-256 of the file and that the proxy rebound at least [`MIN_REBINDS`] times
//! during the transfer (so it cannot pass without rebinding). RFC 9000 §9 (connection migration).

mod common;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::{
    aioquic_python, interop_script, random_bytes, run, sha256_hex, Finished, NodeProcess, Process, TempDir, NODE_BIN,
};

/// How often the NAT moves the client to a new source port.
const REBIND_EVERY: Duration = Duration::from_secs(1);
/// Share of datagrams dropped in each direction, in per mille.
const LOSS_PER_MILLE: u64 = 50;
/// Rebinds the transfer must live through for the test to count.
const MIN_REBINDS: u64 = 5;
/// The file the node serves: the node sends fast enough on loopback that a smaller one would be
/// done before [`MIN_REBINDS`].
const NODE_FILE_LEN: usize = 64 * 1024 * 1024;
/// The file aioquic's server serves (slower than the node).
const AIOQUIC_FILE_LEN: usize = 20 * 1024 * 1024;
/// Bound on one transfer (the whole test stays under about 90 s once the Python env exists).
const TRANSFER_BUDGET: Duration = Duration::from_secs(80);

fn seed() -> u64 {
    std::env::var("ANT_QUIC_REBIND_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_4e41_5452_6562)
}

/// `ANT_QUIC_REBIND_VERBOSE=1`: aioquic DEBUG logs and qlog traces in the test's log directory.
fn verbose() -> bool {
    std::env::var("ANT_QUIC_REBIND_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// splitmix64: a small seeded generator, so a failing run's drops can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn drop_this(&mut self) -> bool {
        self.next() % 1000 < LOSS_PER_MILLE
    }
}

#[derive(Default)]
struct Counters {
    rebinds: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    /// Datagrams from the server to a port the NAT no longer maps.
    to_stale_port: AtomicU64,
}

/// The lossy rebinding NAT: the client sends to `front`; the proxy forwards to `server` from its
/// current upstream socket and back. Two threads, one per direction; stopped when dropped.
struct LossyRebindingNat {
    front: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Poll interval of the proxy threads (read timeout): bounds how late a stop or a rebind is seen.
const POLL: Duration = Duration::from_millis(5);

impl LossyRebindingNat {
    fn start(server: SocketAddr, seed: u64) -> Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        front.set_read_timeout(Some(POLL))?;
        let first = UdpSocket::bind("127.0.0.1:0")?;
        first.set_read_timeout(Some(POLL))?;
        let upstream = Arc::new(Mutex::new(Arc::new(first)));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let front_addr = front.local_addr()?;

        // client → server, through whichever upstream socket is current
        let outbound = {
            let (front, upstream, client, counters, stop) = (
                Arc::clone(&front),
                Arc::clone(&upstream),
                Arc::clone(&client),
                Arc::clone(&counters),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(seed);
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else { continue };
                    *client.lock().unwrap() = Some(from);
                    if rng.drop_this() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let up = Arc::clone(&upstream.lock().unwrap());
                    let _ = up.send_to(&buf[..n], server);
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            })
        };

        // server → client, from the current upstream socket only; this thread also rebinds
        let inbound = {
            let (front, upstream, client, counters, stop) = (
                Arc::clone(&front),
                Arc::clone(&upstream),
                Arc::clone(&client),
                Arc::clone(&counters),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ 0xffff_ffff_ffff_ffff);
                let mut buf = vec![0u8; 65536];
                let mut last_rebind = Instant::now();
                // Stale sockets stay open (bounded by the test's length): datagrams to them are
                // silently lost, as at a NAT, instead of drawing ICMP errors.
                let mut stale = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if last_rebind.elapsed() >= REBIND_EVERY && client.lock().unwrap().is_some() {
                        let fresh = UdpSocket::bind("127.0.0.1:0").unwrap();
                        fresh.set_read_timeout(Some(POLL)).unwrap();
                        fresh.set_nonblocking(false).unwrap();
                        let old = std::mem::replace(&mut *upstream.lock().unwrap(), Arc::new(fresh));
                        old.set_nonblocking(true).unwrap();
                        stale.push(old);
                        counters.rebinds.fetch_add(1, Ordering::Relaxed);
                        last_rebind = Instant::now();
                    }
                    for old in &stale {
                        while old.recv_from(&mut buf).is_ok() {
                            counters.to_stale_port.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let up = Arc::clone(&upstream.lock().unwrap());
                    let Ok((n, from)) = up.recv_from(&mut buf) else { continue };
                    if from != server {
                        continue;
                    }
                    if rng.drop_this() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to);
                        counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Ok(Self { front: front_addr, counters, stop, threads: vec![outbound, inbound] })
    }

    fn report(&self) -> String {
        let c = &self.counters;
        format!(
            "{} rebinds, {} datagrams forwarded, {} dropped, {} sent by the server to stale ports",
            c.rebinds.load(Ordering::Relaxed),
            c.forwarded.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
            c.to_stale_port.load(Ordering::Relaxed)
        )
    }

    fn rebinds(&self) -> u64 {
        self.counters.rebinds.load(Ordering::Relaxed)
    }
}

impl Drop for LossyRebindingNat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn node_log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string())
}

fn describe(done: &Finished) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        done.status,
        tail(&done.stdout, 20),
        tail(&done.stderr, 40)
    )
}

/// A file of `len` random bytes at `www/big.bin`; its SHA-256.
fn make_file(www: &Path, len: usize) -> Result<String> {
    let data = random_bytes(len)?;
    fs::write(www.join("big.bin"), &data)?;
    Ok(sha256_hex(&data))
}

fn file_sha(path: &Path) -> Result<String> {
    Ok(sha256_hex(&fs::read(path).with_context(|| format!("reading {}", path.display()))?))
}

#[test]
fn aioquic_client_downloads_from_node_across_rebinding() -> Result<()> {
    let py = aioquic_python()?;
    let mut scratch = TempDir::new("rebind-node")?.keep_unless_passed();
    let (www, data, out, logs) =
        (scratch.subdir("www")?, scratch.subdir("data")?, scratch.subdir("out")?, scratch.subdir("logs")?);
    let want = make_file(&www, NODE_FILE_LEN)?;

    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--www"]).arg(&www).arg("--data-dir").arg(&data);
    let mut node = NodeProcess::start(cmd.env("RUST_LOG", node_log_level()), &logs)?;
    let nat = LossyRebindingNat::start(node.addr, seed())?;
    eprintln!("rebinding: node on {}, NAT front {} (seed {})", node.addr, nat.front, seed());

    let mut client = Command::new(&py);
    client
        .arg(interop_script("hq_client.py"))
        .args(["--host", "127.0.0.1", "--port", &nat.front.port().to_string(), "--output"])
        .arg(&out)
        .args(["--insecure", "--timeout", &TRANSFER_BUDGET.as_secs().to_string()])
        .args(["--keep-alive", "1", "/big.bin"]);
    if verbose() {
        client.arg("-v").arg("--qlog").arg(logs.join("hq_client-qlog"));
    }
    let started = Instant::now();
    let done = run("hq_client", &mut client, &logs, TRANSFER_BUDGET + Duration::from_secs(10))?;
    let elapsed = started.elapsed();
    let report = nat.report();
    eprintln!("rebinding: hq_client finished in {elapsed:?}: {}; NAT: {report}", done.status);
    let context =
        || format!("NAT: {report}\nhq_client {}\n--- node stderr ---\n{}", describe(&done), tail(&node.stderr(), 40));
    ensure!(done.status.success(), "the download failed across rebinding\n{}", context());
    ensure!(file_sha(&out.join("big.bin"))? == want, "big.bin arrived with the wrong SHA-256\n{}", context());
    ensure!(
        nat.rebinds() >= MIN_REBINDS,
        "only {} rebinds during the transfer: the test proved nothing",
        nat.rebinds()
    );
    ensure!(node.exited()?.is_none(), "node exited: {}", tail(&node.stderr(), 40));
    drop(nat);
    scratch.passed();
    Ok(())
}

#[test]
fn get_downloads_from_aioquic_across_rebinding() -> Result<()> {
    let py = aioquic_python()?;
    let mut scratch = TempDir::new("rebind-get")?.keep_unless_passed();
    let (www, out, logs) = (scratch.subdir("www")?, scratch.subdir("out")?, scratch.subdir("logs")?);
    let want = make_file(&www, AIOQUIC_FILE_LEN)?;

    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("hq_server.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--root"])
        .arg(&www)
        .args(["--max-seconds", &(TRANSFER_BUDGET.as_secs() + 20).to_string()]);
    if verbose() {
        cmd.arg("-v").arg("--qlog").arg(logs.join("hq_server-qlog"));
    }
    let mut server = Process::spawn("hq_server", &mut cmd, &logs)?;
    let port = server
        .stdout_line(Duration::from_secs(30), |l| l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()))
        .context("hq_server.py never printed READY")?;
    let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let nat = LossyRebindingNat::start(server_addr, seed())?;
    eprintln!("rebinding: aioquic server on {server_addr}, NAT front {} (seed {})", nat.front, seed());

    let mut get = Command::new(NODE_BIN);
    get.arg("get")
        .arg(format!("https://{}/big.bin", nat.front))
        .arg("--output")
        .arg(&out)
        .args(["--insecure", "--timeout", &TRANSFER_BUDGET.as_secs().to_string()])
        .env("RUST_LOG", node_log_level());
    let started = Instant::now();
    let done = run("get", &mut get, &logs, TRANSFER_BUDGET + Duration::from_secs(10))?;
    let elapsed = started.elapsed();
    let report = nat.report();
    eprintln!("rebinding: ant-quic get finished in {elapsed:?}: {}; NAT: {report}", done.status);
    let context =
        || format!("NAT: {report}\nget {}\n--- hq_server stderr ---\n{}", describe(&done), tail(&server.stderr(), 40));
    ensure!(done.status.success(), "the download failed across rebinding\n{}", context());
    let got = file_sha(&out.join("big.bin")).map_err(|e| anyhow!("{e:#}\n{}", context()))?;
    ensure!(got == want, "big.bin arrived with the wrong SHA-256\n{}", context());
    ensure!(
        nat.rebinds() >= MIN_REBINDS,
        "only {} rebinds during the transfer: the test proved nothing",
        nat.rebinds()
    );
    drop(nat);
    scratch.passed();
    Ok(())
}
