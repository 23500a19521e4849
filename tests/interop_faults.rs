//! The network-fault cases of the QUIC interop runner, against aioquic in both roles, through the
//! fault-injecting proxy of `tests/common/fault_proxy.rs` (loopback only).
//!
//! Every case runs twice:
//! * `faultcase_<case>_node_serves`: the node (`--www`) serves, aioquic's
//!   `tests/interop/hq_client.py` fetches through the proxy;
//! * `faultcase_<case>_get_fetches`: `tests/interop/hq_server.py` serves, `ant-quic get`
//!   fetches through the proxy.
//!
//! Each checks the SHA-256 of every file, bounds the transfer in time (the client's own
//! `--timeout` and a kill after [`Case::budget`]), and checks the proxy's counters, so that no test
//! passes without its fault having happened. The cases (parameters in [`cases`]):
//!
//! * handshakeloss / handshakecorruption: 10 connections of one small file each, 30 % of the
//!   datagrams lost / corrupted each way;
//! * transferloss / transfercorruption: a few MB on one connection, 2 % lost / corrupted;
//! * blackhole: everything dropped both ways for 4 s in the middle of a transfer;
//! * rebindport / rebindaddr: the client's source port (and address: 127.0.0.2, 127.0.0.3, ...)
//!   changes several times during a transfer;
//! * amplificationlimit: the server presents a certificate chain far larger than 3 × the client's
//!   first flight and the client's datagrams after its first are dropped for 1 s: the server must
//!   send at most 3 × what it received before the client's first Handshake packet (RFC 9000 §8.1);
//! * retry: the server sends a Retry before every handshake.
//!
//! `faultcase_proxy_*` check the proxy itself (its packet parser, and a plan against an echo
//! server), without QUIC.
//!
//! The proxy's loss and corruption are seeded: `ANT_QUIC_FAULT_SEED=N` replays a run (the seed is
//! printed). `ANT_QUIC_FAULT_VERBOSE=1` adds aioquic DEBUG logs and qlog traces to the test's
//! directory under `target/tmp/`, and keeps it (a failed test always keeps it).

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use common::fault_proxy::{Blackhole, Counters, DirectionPlan, Every, FaultPlan, FaultProxy, Rebind, Start};
use common::{
    aioquic_python, http_get, interop_script, random_bytes, run, sample, sha256_hex, Finished, NodeProcess, Process,
    TempDir, NODE_BIN,
};
use common::{describe, node_log_level, tail};

/// A fault case of the interop runner.
struct Case {
    name: &'static str,
    /// The proxy's plan (its seed is set from [`seed`]).
    plan: FaultPlan,
    /// Sizes of the files fetched, every one over every connection.
    files: &'static [usize],
    /// Separate connections (hq_client `--connections`; `ant-quic get` processes).
    connections: usize,
    /// Bound on the whole fetch.
    budget: Duration,
    /// Environment of the node (config overrides, `ANT_QUIC_<SECTION>_<KEY>`).
    node_env: &'static [(&'static str, &'static str)],
    /// Extra arguments of hq_server.py.
    server_args: &'static [&'static str],
    /// Extra arguments of hq_client.py.
    client_args: &'static [&'static str],
    /// Serve a certificate chain large enough to hit the amplification limit.
    big_chain: bool,
    /// Proof from the counters that the fault happened.
    check: fn(&Counters, &Facts) -> Result<()>,
}

/// What a check needs besides the counters.
struct Facts {
    /// Bytes of the served certificate chain (DER), 0 for the default certificate.
    chain_bytes: u64,
}

/// The node closes a connection whose handshake is not done 10 s after its first Initial
/// (`[security] handshake_timeout`, against floods of half-open connections); the client is told
/// (CONNECTION_CLOSE) but the connection has failed. Under 30 % loss each way about one aioquic
/// handshake in 200 takes longer than 10 s (docs/reliability.md), so the handshake cases give the
/// node the longest allowed, 30 s, the idle timeout of both sides.
const PATIENT_HANDSHAKES: &[(&str, &str)] = &[("ANT_QUIC_SECURITY_HANDSHAKE_TIMEOUT", "30")];

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn seed() -> u64 {
    std::env::var("ANT_QUIC_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x0fa0_17ca_5e5e_ed01)
}

fn verbose() -> bool {
    std::env::var("ANT_QUIC_FAULT_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn both(direction: DirectionPlan) -> FaultPlan {
    FaultPlan { to_server: direction, to_client: direction, ..FaultPlan::default() }
}

fn loss(per_mille: u64) -> FaultPlan {
    both(DirectionPlan { drop_per_mille: per_mille, ..DirectionPlan::default() })
}

fn corruption(per_mille: u64) -> FaultPlan {
    both(DirectionPlan { corrupt_per_mille: per_mille, ..DirectionPlan::default() })
}

fn rebinding(address: bool) -> FaultPlan {
    // Counted in the server's datagrams that reached the client, so the transfer makes progress
    // between rebinds however fast or slow the machine is.
    FaultPlan { rebind: Some(Rebind { every: Every::Datagrams(700), address }), ..FaultPlan::default() }
}

fn dropped_both_ways(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.to_server.dropped > 0 && c.to_client.dropped > 0, "no datagram was dropped in one direction");
    Ok(())
}

fn corrupted_both_ways(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.to_server.corrupted > 0 && c.to_client.corrupted > 0, "no datagram was corrupted in one direction");
    Ok(())
}

// The transfer cases check the server's direction only: at 2 % the client's 200-odd ACK
// datagrams of a 3 MiB download come through untouched about once in 60 seeds.

fn dropped_data(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.to_client.dropped > 0, "no datagram of the server's was dropped");
    Ok(())
}

fn corrupted_data(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.to_client.corrupted > 0, "no datagram of the server's was corrupted");
    Ok(())
}

fn rebound_twice(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.rebinds >= 2, "only {} rebinds during the transfer", c.rebinds);
    Ok(())
}

fn blackholed_mid_transfer(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.to_client.blackholed > 0, "the server sent nothing into the blackhole: it was not mid-transfer");
    Ok(())
}

fn retried(c: &Counters, _: &Facts) -> Result<()> {
    ensure!(c.retries >= 1, "the proxy saw no Retry packet");
    Ok(())
}

fn amplification_respected(c: &Counters, facts: &Facts) -> Result<()> {
    let (client, server) = (c.client_bytes_before_handshake, c.server_bytes_before_handshake);
    ensure!(c.to_server.blackholed > 0, "no client datagram was held back");
    ensure!(client > 0, "no client bytes before its first Handshake packet");
    ensure!(
        facts.chain_bytes > 3 * client,
        "the certificate chain ({} B) fits into 3 × {client} B: the limit was never in the way",
        facts.chain_bytes
    );
    ensure!(
        server <= 3 * client,
        "the server sent {server} B to an unvalidated address that had sent {client} B (more than 3 ×)"
    );
    Ok(())
}

fn cases(name: &'static str) -> Case {
    let base = Case {
        name: "",
        plan: FaultPlan::default(),
        files: &[],
        connections: 1,
        budget: Duration::from_secs(50),
        node_env: &[],
        server_args: &[],
        client_args: &[],
        big_chain: false,
        check: |_, _| Ok(()),
    };
    let case = match name {
        "handshakeloss" => Case {
            plan: loss(300),
            files: &[2 * KIB],
            connections: 10,
            node_env: PATIENT_HANDSHAKES,
            check: dropped_both_ways,
            ..base
        },
        "transferloss" => Case { plan: loss(20), files: &[3 * MIB], check: dropped_data, ..base },
        "handshakecorruption" => {
            Case { plan: corruption(300), files: &[2 * KIB], connections: 10, check: corrupted_both_ways, ..base }
        }
        "transfercorruption" => Case { plan: corruption(20), files: &[3 * MIB], check: corrupted_data, ..base },
        "blackhole" => Case {
            plan: FaultPlan {
                blackhole: Some(Blackhole {
                    start: Start::AfterDatagrams(400),
                    duration: Duration::from_secs(4),
                    to_server: true,
                    to_client: true,
                }),
                ..FaultPlan::default()
            },
            files: &[4 * MIB],
            check: blackholed_mid_transfer,
            ..base
        },
        "rebindport" => Case {
            plan: rebinding(false),
            files: &[3 * MIB],
            client_args: &["--keep-alive", "0.5"],
            check: rebound_twice,
            ..base
        },
        "rebindaddr" => Case {
            plan: rebinding(true),
            files: &[3 * MIB],
            client_args: &["--keep-alive", "0.5"],
            check: rebound_twice,
            ..base
        },
        "amplificationlimit" => Case {
            plan: FaultPlan {
                // The client's first flight passes; its datagrams of the next second are lost.
                blackhole: Some(Blackhole {
                    start: Start::AfterServerDatagrams(1),
                    duration: Duration::from_secs(1),
                    to_server: true,
                    to_client: false,
                }),
                ..FaultPlan::default()
            },
            files: &[5 * KIB],
            big_chain: true,
            check: amplification_respected,
            ..base
        },
        "retry" => Case {
            files: &[KIB, 200 * KIB],
            connections: 2,
            node_env: &[("ANT_QUIC_SECURITY_RETRY", "always")],
            server_args: &["--retry"],
            check: retried,
            ..base
        },
        other => panic!("no case {other}"),
    };
    Case { name, plan: FaultPlan { seed: seed(), ..case.plan }, ..case }
}

// ---------------------------------------------------------------- files and certificates

/// Writes `f<i>.bin` for every size; (URL path, SHA-256) of each.
fn make_files(www: &Path, sizes: &[usize]) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let data = random_bytes(*len)?;
        let name = format!("f{i}.bin");
        fs::write(www.join(&name), &data)?;
        files.push((format!("/{name}"), sha256_hex(&data)));
    }
    Ok(files)
}

/// Every file arrived intact in every connection's directory.
fn check_files(dirs: &[PathBuf], files: &[(String, String)]) -> Result<()> {
    for dir in dirs {
        for (path, want) in files {
            let at = dir.join(path.trim_start_matches('/'));
            let got = sha256_hex(&fs::read(&at).with_context(|| format!("reading {}", at.display()))?);
            ensure!(&got == want, "{} arrived with the wrong SHA-256", at.display());
        }
    }
    Ok(())
}

/// A chain of eight ECDSA certificates (leaf first), each padded with 40 subject alternative
/// names, and the leaf's key: about 13 KB of certificates (aioquic's server cannot send a
/// handshake flight over 16 KiB: its CRYPTO buffers are that size).
const CHAIN_PY: &str = r#"
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

out, depth, pad = sys.argv[1], 8, 40
now = datetime.datetime.now(datetime.timezone.utc)
keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(depth)]
name = lambda i: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ant-quic fault test level {i}")])
certs = []
for i in range(depth):
    issuer = min(i + 1, depth - 1)
    sans = [x509.DNSName("localhost")] + [x509.DNSName(f"padding-{i}-{j:03d}.ant-quic.invalid") for j in range(pad)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(i))
        .issuer_name(name(issuer))
        .public_key(keys[i].public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=i > 0, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(keys[issuer], hashes.SHA256())
    )
    certs.append(cert)
with open(f"{out}/chain.pem", "wb") as fh:
    for cert in certs:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
with open(f"{out}/key.pem", "wb") as fh:
    fh.write(keys[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
print(sum(len(c.public_bytes(serialization.Encoding.DER)) for c in certs))
"#;

/// (chain.pem, key.pem, DER bytes of the chain) in `dir`.
fn make_big_chain(py: &Path, dir: &Path, logs: &Path) -> Result<(PathBuf, PathBuf, u64)> {
    let mut cmd = Command::new(py);
    cmd.arg("-c").arg(CHAIN_PY).arg(dir);
    let done = run("make-chain", &mut cmd, logs, Duration::from_secs(60))?;
    ensure!(done.status.success(), "generating the certificate chain failed:\n{}", done.stderr);
    let bytes = done.stdout.trim().parse().with_context(|| format!("chain size {:?}", done.stdout))?;
    Ok((dir.join("chain.pem"), dir.join("key.pem"), bytes))
}

// ---------------------------------------------------------------- the two roles

/// One case at a time: aioquic is CPU-bound Python, and two cases sharing 2 cores stretch each
/// other's round trips, and with them every PTO backoff of a handshake under 30 % loss.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The node serves; hq_client.py fetches through the proxy.
fn node_serves(name: &'static str) -> Result<()> {
    let _turn = one_at_a_time();
    let case = cases(name);
    let py = aioquic_python()?;
    let mut scratch = TempDir::new(&format!("faults-{}-node", case.name))?.keep_unless_passed();
    let (www, data, out, logs) =
        (scratch.subdir("www")?, scratch.subdir("data")?, scratch.subdir("out")?, scratch.subdir("logs")?);
    let files = make_files(&www, case.files)?;

    let mut cmd = Command::new(NODE_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--www"]).arg(&www).arg("--data-dir").arg(&data);
    cmd.env("ANT_QUIC_SECURITY_RETRY", "never").envs(case.node_env.iter().copied()).env("RUST_LOG", node_log_level());
    let mut chain_bytes = 0;
    if case.big_chain {
        let (cert, key, bytes) = make_big_chain(&py, &scratch.subdir("cert")?, &logs)?;
        cmd.env("ANT_QUIC_SECURITY_TLS_CERT", cert).env("ANT_QUIC_SECURITY_TLS_KEY", key);
        chain_bytes = bytes;
    }
    let mut node = NodeProcess::start(&mut cmd, &logs)?;
    let proxy = FaultProxy::start(node.addr, case.plan)?;
    eprintln!("{}: node on {}, proxy {} (seed {})", case.name, node.addr, proxy.front, case.plan.seed);

    let mut client = Command::new(&py);
    client
        .arg(interop_script("hq_client.py"))
        .args(["--host", "127.0.0.1", "--port", &proxy.front.port().to_string(), "--output"])
        .arg(&out)
        .args(["--insecure", "--timeout", &case.budget.as_secs().to_string()])
        .args(["--connections", &case.connections.to_string(), "--interval", "0.1"])
        .args(case.client_args)
        .args(files.iter().map(|(path, _)| path));
    if verbose() {
        client.arg("-v").arg("--qlog").arg(logs.join("hq_client-qlog"));
    }
    let started = Instant::now();
    let done = run("hq_client", &mut client, &logs, case.budget + Duration::from_secs(10))?;
    let elapsed = started.elapsed();
    let report = format!("{}; node: {} handshakes timed out", proxy.report(), handshakes_timed_out(&node));
    eprintln!("{}: hq_client finished in {elapsed:.1?}: {}; proxy: {report}", case.name, done.status);
    let context =
        || format!("proxy: {report}\nhq_client {}\n--- node stderr ---\n{}", describe(&done), tail(&node.stderr(), 40));
    ensure!(done.status.success(), "the fetch failed\n{}", context());
    let dirs: Vec<PathBuf> = if case.connections > 1 {
        (0..case.connections).map(|i| out.join(format!("conn-{i}"))).collect()
    } else {
        vec![out.clone()]
    };
    check_files(&dirs, &files).map_err(|e| anyhow!("{e:#}\n{}", context()))?;
    (case.check)(&proxy.counters(), &Facts { chain_bytes }).map_err(|e| anyhow!("{e:#}\n{}", context()))?;
    ensure!(node.exited()?.is_none(), "node exited: {}", tail(&node.stderr(), 40));
    drop(proxy);
    if !verbose() {
        scratch.passed();
    }
    Ok(())
}

/// `quic_handshakes_timed_out_total` of the node (its admin listener's address is in its log), or
/// why it could not be read.
fn handshakes_timed_out(node: &NodeProcess) -> String {
    let log = node.stderr();
    let admin = log
        .lines()
        .find(|l| l.contains("admin HTTP listening"))
        .and_then(|l| l.split("local_addr=").nth(1))
        .and_then(|a| a.trim().parse::<SocketAddr>().ok());
    let Some(admin) = admin else { return "(no admin address in the node's log)".to_owned() };
    let (status, body) = http_get(admin, "/metrics");
    match sample(&body, "quic_handshakes_timed_out_total") {
        Some(n) if status == 200 => n.to_string(),
        _ => format!("(GET /metrics: {status})"),
    }
}

/// hq_server.py serves; `ant-quic get` fetches through the proxy, one process per connection.
fn get_fetches(name: &'static str) -> Result<()> {
    let _turn = one_at_a_time();
    let case = cases(name);
    let py = aioquic_python()?;
    let mut scratch = TempDir::new(&format!("faults-{}-get", case.name))?.keep_unless_passed();
    let (www, out, logs) = (scratch.subdir("www")?, scratch.subdir("out")?, scratch.subdir("logs")?);
    let files = make_files(&www, case.files)?;

    let mut cmd = Command::new(&py);
    cmd.arg(interop_script("hq_server.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--root"])
        .arg(&www)
        .args(["--max-seconds", &(case.budget.as_secs() + 30).to_string()])
        .args(case.server_args);
    let mut chain_bytes = 0;
    if case.big_chain {
        let (cert, key, bytes) = make_big_chain(&py, &scratch.subdir("cert")?, &logs)?;
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        chain_bytes = bytes;
    }
    if verbose() {
        cmd.arg("-v").arg("--qlog").arg(logs.join("hq_server-qlog"));
    }
    let mut server = Process::spawn("hq_server", &mut cmd, &logs)?;
    let port = server
        .stdout_line(Duration::from_secs(30), |l| l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()))
        .context("hq_server.py never printed READY")?;
    let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let proxy = FaultProxy::start(server_addr, case.plan)?;
    eprintln!("{}: aioquic server on {server_addr}, proxy {} (seed {})", case.name, proxy.front, case.plan.seed);

    let dirs: Vec<PathBuf> = (0..case.connections).map(|i| out.join(format!("conn-{i}"))).collect();
    let started = Instant::now();
    let results: Vec<Result<Finished>> = std::thread::scope(|s| {
        let runs: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let (files, logs, front) = (&files, &logs, proxy.front);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(100) * i as u32);
                    let mut get = Command::new(NODE_BIN);
                    get.arg("get")
                        .args(files.iter().map(|(path, _)| format!("https://{front}{path}")))
                        .arg("--output")
                        .arg(dir)
                        .args(["--insecure", "--timeout", &case.budget.as_secs().to_string()])
                        .env("RUST_LOG", node_log_level());
                    run(&format!("get-{i}"), &mut get, logs, case.budget + Duration::from_secs(10))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap_or_else(|_| Err(anyhow!("get thread panicked")))).collect()
    });
    let elapsed = started.elapsed();
    let report = proxy.report();
    eprintln!("{}: {} get processes finished in {elapsed:.1?}; proxy: {report}", case.name, dirs.len());
    let context =
        |what: &str| format!("proxy: {report}\n{what}\n--- hq_server stderr ---\n{}", tail(&server.stderr(), 40));
    for (i, result) in results.into_iter().enumerate() {
        let done = result.map_err(|e| anyhow!("get-{i}: {e:#}\n{}", context("")))?;
        ensure!(done.status.success(), "get-{i} failed\n{}", context(&describe(&done)));
    }
    check_files(&dirs, &files).map_err(|e| anyhow!("{e:#}\n{}", context("")))?;
    (case.check)(&proxy.counters(), &Facts { chain_bytes }).map_err(|e| anyhow!("{e:#}\n{}", context("")))?;
    drop(proxy);
    if !verbose() {
        scratch.passed();
    }
    Ok(())
}

macro_rules! fault_case {
    ($case:literal, $node:ident, $get:ident) => {
        #[test]
        fn $node() -> Result<()> {
            node_serves($case)
        }

        #[test]
        fn $get() -> Result<()> {
            get_fetches($case)
        }
    };
}

fault_case!("handshakeloss", faultcase_handshakeloss_node_serves, faultcase_handshakeloss_get_fetches);
fault_case!("transferloss", faultcase_transferloss_node_serves, faultcase_transferloss_get_fetches);
fault_case!(
    "handshakecorruption",
    faultcase_handshakecorruption_node_serves,
    faultcase_handshakecorruption_get_fetches
);
fault_case!("transfercorruption", faultcase_transfercorruption_node_serves, faultcase_transfercorruption_get_fetches);
fault_case!("blackhole", faultcase_blackhole_node_serves, faultcase_blackhole_get_fetches);
fault_case!("rebindport", faultcase_rebindport_node_serves, faultcase_rebindport_get_fetches);
fault_case!("rebindaddr", faultcase_rebindaddr_node_serves, faultcase_rebindaddr_get_fetches);
fault_case!("amplificationlimit", faultcase_amplificationlimit_node_serves, faultcase_amplificationlimit_get_fetches);
fault_case!("retry", faultcase_retry_node_serves, faultcase_retry_get_fetches);

/// The proxy finds Initial and Handshake packets coalesced in one datagram, and a Retry.
#[test]
fn faultcase_proxy_parses_coalesced_long_headers() {
    use common::fault_proxy::long_header_types;
    // Initial (token length 0, length 2), then Handshake (length 1), then a short header.
    let mut d = vec![0xc0, 0, 0, 0, 1, 1, 0xaa, 0, 0, 2, 0x11, 0x22];
    d.extend([0xe0, 0, 0, 0, 1, 0, 0, 1, 0x33]);
    d.extend([0x40, 1, 2, 3, 4, 5, 6]);
    assert_eq!(long_header_types(&d), vec![0, 2]);
    assert_eq!(long_header_types(&[0xf0, 0, 0, 0, 1, 0, 0, 9, 9]), vec![3]);
    assert!(long_header_types(&[0x40, 0, 0, 0, 1, 0, 0]).is_empty());
}

/// The proxy drops the first N datagrams whatever they are, applies its drop rate to long-header
/// datagrams only when told so, and moves the client to 127.0.0.2 on an address rebind.
#[test]
fn faultcase_proxy_applies_its_plan() -> Result<()> {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};

    let echo = UdpSocket::bind("127.0.0.1:0")?;
    echo.set_read_timeout(Some(Duration::from_millis(20)))?;
    let server = echo.local_addr()?;
    let plan = FaultPlan {
        seed: seed(),
        to_server: DirectionPlan { drop_first: 2, drop_per_mille: 1000, long_header_only: true, ..Default::default() },
        rebind: Some(Rebind { every: Every::Datagrams(1), address: true }),
        ..FaultPlan::default()
    };
    let proxy = FaultProxy::start(server, plan)?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_millis(200)))?;

    let stop = AtomicBool::new(false);
    let sources = std::thread::scope(|s| {
        let echoing = s.spawn(|| {
            let (mut sources, mut buf) = (Vec::new(), [0u8; 64]);
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    sources.push((from, buf[0]));
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
            sources
        });
        // short, long, short, long, short, long: the first two go (drop_first), then every long
        // header goes and every short header passes.
        for i in 0..6u8 {
            let datagram: &[u8] = if i % 2 == 0 { &[0x40, i, 0, 0, 0] } else { &[0xc0, 0, 0, 0, 1, 0, 0, i] };
            client.send_to(datagram, proxy.front).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        echoing.join().unwrap()
    });
    let mut echoed = 0;
    let mut buf = [0u8; 64];
    while client.recv_from(&mut buf).is_ok() {
        echoed += 1;
    }
    let c = proxy.counters();
    let ips: Vec<_> = sources.iter().map(|(from, first)| (from.ip(), *first)).collect();
    assert_eq!(
        ips,
        vec![(Ipv4Addr::new(127, 0, 0, 1).into(), 0x40), (Ipv4Addr::new(127, 0, 0, 2).into(), 0x40)],
        "{}",
        proxy.report()
    );
    assert_eq!((c.to_server.received, c.to_server.dropped, c.to_server.forwarded), (6, 4, 2), "{}", proxy.report());
    assert_eq!(echoed, 2, "{}", proxy.report());
    assert!(c.rebinds >= 1, "{}", proxy.report());
    Ok(())
}
