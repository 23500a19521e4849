//! `--backend af-xdp` end to end: a node in one network namespace of the test's own, on its end
//! of a veth pair, serves a download to `ant-quic get` in the other namespace through its AF_XDP
//! socket; ping and TCP still cross the veth while the program is attached; SIGKILL of the node
//! leaves no XDP program behind; what the backend cannot do is refused with one line, status 2.
//! Against aioquic (an independent implementation, tests/interop/): its client downloads 200 MB
//! from the node on af-xdp, 64 of its connections at once fetch a file each, and `ant-quic get
//! --backend af-xdp --bind IP` downloads 200 MB from its server.
//!
//! Needs root, `ip` (iproute2) and `ethtool`, and a kernel with BPF and AF_XDP: without them the
//! tests fail under `CI=true` and are skipped elsewhere (tests/common/prerequisite.rs); the aioquic
//! tests also need the Python environment of `scripts/python-env.sh`. Every process is killed and
//! reaped on every path; the namespaces are deleted.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../dataplane/tests/common/veth.rs"]
mod veth;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::process::send_signal;
use common::{random_bytes, sample, sha256_hex, NodeProcess, TempDir, NODE_BIN};
use veth::{Netns, NODE_IP, NODE_IP6, PEER_IP};

const PORT: u16 = 4433;
const ADMIN_PORT: u16 = 9433;
/// Tens of megabytes: tens of thousands of frames through the TX ring.
const DOWNLOAD: usize = 40 << 20;
/// What aioquic downloads from the node, and the node from aioquic.
const BIG_DOWNLOAD: usize = 200 << 20;
/// Concurrent aioquic connections to the node, each fetching one file of `MANY_FILE` bytes.
const MANY: usize = 64;
const MANY_FILE: usize = 256 << 10;
const DEADLINE: Duration = Duration::from_secs(120);

/// The node's command, run inside namespace `netns` (`ip netns exec` execs it: same pid).
fn node_command(netns: &str, dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, NODE_BIN]).args(args).current_dir(dir).env("RUST_LOG", "info");
    command.arg("--data-dir").arg(dir.join("data"));
    command
}

/// `program args...` run in namespace `netns` to completion (bounded), with its output.
fn in_netns(netns: &str, program: &str, args: &[&str], logs: &Path) -> common::Finished {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, program]).args(args);
    common::run(program, &mut command, logs, DEADLINE).unwrap()
}

/// One af-xdp counter of core 0, read from the node's metrics.
fn af_xdp_counter(metrics: &str, path: &str) -> u64 {
    af_xdp_core_counter(metrics, 0, path)
}

/// One af-xdp counter of `core`, read from the node's metrics.
fn af_xdp_core_counter(metrics: &str, core: usize, path: &str) -> u64 {
    let series = format!("ant_quic_core_af_xdp_datagrams_total{{core=\"{core}\",path=\"{path}\"}}");
    sample(metrics, &series).unwrap_or_else(|| panic!("no {series} in the metrics")) as u64
}

#[test]
fn a_node_on_af_xdp_serves_a_download_through_its_xdp_socket_and_sigkill_leaves_no_program() {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut tmp = TempDir::new("xdp-backend").unwrap().keep_unless_passed();
    let (www, out, logs) = (tmp.subdir("www").unwrap(), tmp.subdir("out").unwrap(), tmp.subdir("logs").unwrap());
    let blob = random_bytes(DOWNLOAD).unwrap();
    std::fs::write(www.join("blob"), &blob).unwrap();
    // veth hands frames over with the transport checksum left to the receiver (CHECKSUM_PARTIAL);
    // in the RX ring that reads as a bad checksum. A NIC puts the whole checksum on the wire, as
    // the peer's kernel does with offload off (`xdp_lab`).
    let ns = Netns::for_af_xdp("xdpb");
    // The admin HTTP listener on the veth: reading the metrics from the peer is a TCP connection
    // across it while the program is attached.
    let mut node = start_xdp_node(&ns, tmp.path(), &www, &logs);
    assert!(ns.xdp_attached(), "the node's XDP program is on v0");

    // The kernel still gets everything that is not the node's UDP: ICMP here, TCP below.
    let ping = in_netns(&ns.peer, "ping", &["-c", "3", "-W", "2", &NODE_IP.to_string()], &logs);
    assert!(ping.status.success(), "ping across the veth while the program is attached: {}", ping.stdout);
    let metrics = || node_metrics(&ns, &logs);
    let before = metrics();
    assert_eq!(af_xdp_counter(&before, "sent_af_xdp"), 0, "nothing sent before the download");

    let started = Instant::now();
    let url = format!("https://{}/blob", SocketAddr::from((NODE_IP, PORT)));
    let finished = get_from_the_peer(&ns, &url, &out, tmp.path(), &logs, "get");
    assert!(finished.status.success(), "get failed: {}\n{}", finished.stdout, finished.stderr);
    let took = started.elapsed();
    let fetched = std::fs::read(out.join("blob")).unwrap();
    assert_eq!(fetched.len(), blob.len(), "the whole file arrived");
    assert_eq!(sha256_hex(&fetched), sha256_hex(&blob), "SHA-256 intact");

    let metrics = metrics();
    // Each datagram carries at most ~1,450 bytes of the file.
    let summary = assert_through_af_xdp(&metrics, (DOWNLOAD / 1500) as u64);
    println!("{} MB in {took:.2?}; {summary}", DOWNLOAD >> 20);

    // The program's own counters: every datagram in the RX ring was redirected by it; the ping,
    // ARP and the metrics' TCP were passed to the kernel; every RX queue has a socket; nothing
    // relayed. The exposition is what Prometheus parses.
    let program = |verdict: &str| {
        let series = format!("ant_quic_xdp_program_frames_total{{verdict=\"{verdict}\"}}");
        sample(&metrics, &series).unwrap_or_else(|| panic!("no {series} in the metrics")) as u64
    };
    let received = af_xdp_counter(&metrics, "received_af_xdp");
    assert!(program("redirected") >= received, "redirected {} < {received} received", program("redirected"));
    assert!(program("passed_not_ours") >= 6, "ping, ARP and TCP passed: {}", program("passed_not_ours"));
    assert_eq!((program("passed_no_socket"), program("relayed")), (0, 0));
    if common::require_prometheus("promtool").unwrap() {
        // curl's output comes back as lines: the exposition ends with a line feed.
        common::promtool_check_metrics(&format!("{metrics}\n"));
    }

    // SIGKILL: the kernel closes the node's descriptors, and with its BPF link the program goes.
    send_signal(node.pid() as u32, libc::SIGKILL).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while node.exited().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    while ns.xdp_attached() {
        assert!(Instant::now() < deadline, "an XDP program outlived the node that attached it");
        std::thread::sleep(Duration::from_millis(20));
    }
    tmp.passed();
}

#[test]
fn what_af_xdp_cannot_do_is_refused_with_one_line_and_status_2() {
    let mut tmp = TempDir::new("xdp-refusal").unwrap().keep_unless_passed();
    let logs = tmp.subdir("logs").unwrap();
    // A wildcard address names no interface: refused before anything is attached (no root needed).
    let mut wildcard = Command::new(NODE_BIN);
    wildcard.args(["--listen", "0.0.0.0:0", "--backend", "af-xdp"]).arg("--data-dir").arg(tmp.path().join("data"));
    wildcard.current_dir(tmp.path());
    let finished = common::run("wildcard", &mut wildcard, &logs, DEADLINE).unwrap();
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    let errors: Vec<&str> = finished.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one line: {}", finished.stderr);
    assert!(errors[0].contains("xdp_interface"), "the line says what to do: {}", errors[0]);
    // `get` sends from any address unless told otherwise: af-xdp needs a specific --bind (get's
    // errors are status 1).
    for bind in [&[][..], &["--bind", "0.0.0.0"]] {
        let mut get = Command::new(NODE_BIN);
        get.args(["get", "--insecure", "--backend", "af-xdp", "https://127.0.0.1:9/x"]).args(bind);
        get.arg("--output").arg(tmp.path());
        let finished = common::run("get-wildcard", &mut get, &logs, DEADLINE).unwrap();
        assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
        let errors: Vec<&str> = finished.stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "one line: {}", finished.stderr);
        assert!(errors[0].contains("pass --bind"), "the line says what to do: {}", errors[0]);
    }

    if !common::af_xdp_lab_here() {
        return;
    }
    // More cores than the interface has RX queues (a veth has one here): each core needs its own.
    let ns = Netns::create("xdpr");
    let listen = SocketAddr::from((NODE_IP, PORT)).to_string();
    let mut command = node_command(&ns.node, tmp.path(), &["--listen", &listen, "--cores", "2", "--backend", "af-xdp"]);
    let finished = common::run("cores", &mut command, &logs, DEADLINE).unwrap();
    assert_eq!(finished.status.code(), Some(2), "{}\n{}", finished.stdout, finished.stderr);
    let errors: Vec<&str> = finished.stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one line: {}", finished.stderr);
    assert!(errors[0].contains("2 cores") && errors[0].contains("1 RX queues"), "names both numbers: {}", errors[0]);
    assert!(!ns.xdp_attached(), "a refused node leaves no program behind");
    tmp.passed();
}

/// `ant-quic get URL` (portable backend) in the peer's namespace, writing to `out`; `name` names
/// its log.
fn get_from_the_peer(ns: &Netns, url: &str, out: &Path, dir: &Path, logs: &Path, name: &str) -> common::Finished {
    let mut get = Command::new("ip");
    get.args(["netns", "exec", &ns.peer, NODE_BIN, "get", "--insecure", "--backend", "portable", "--timeout", "90"]);
    get.arg("--output").arg(out).arg(url).current_dir(dir);
    common::run(name, &mut get, logs, DEADLINE).unwrap()
}

/// A node on af-xdp (1 core) serving `www` on NODE_IP:PORT, its metrics on NODE_IP:ADMIN_PORT.
fn start_xdp_node(ns: &Netns, dir: &Path, www: &Path, logs: &Path) -> NodeProcess {
    start_xdp_node_on(ns, dir, www, logs, IpAddr::V4(NODE_IP), 1)
}

/// A node on af-xdp with `cores` cores serving `www` on `ip`:PORT, its metrics on
/// NODE_IP:ADMIN_PORT.
fn start_xdp_node_on(ns: &Netns, dir: &Path, www: &Path, logs: &Path, ip: IpAddr, cores: usize) -> NodeProcess {
    let (listen, cores) = (SocketAddr::new(ip, PORT).to_string(), cores.to_string());
    let args =
        ["--listen", &listen, "--cores", &cores, "--backend", "af-xdp", "--metrics-port", &ADMIN_PORT.to_string()];
    let mut command = node_command(&ns.node, dir, &args);
    command.arg("--www").arg(www).env("ANT_QUIC_METRICS_BIND", NODE_IP.to_string());
    let node = NodeProcess::start(&mut command, logs).unwrap();
    assert!(node.banner.contains("backend af-xdp"), "{}", node.banner);
    node
}

/// The node's metrics, read with curl from the peer's namespace (TCP across the veth).
fn node_metrics(ns: &Netns, logs: &Path) -> String {
    let url = format!("http://{NODE_IP}:{ADMIN_PORT}/metrics");
    let curl = in_netns(&ns.peer, "curl", &["-sS", "--max-time", "10", &url], logs);
    assert!(curl.status.success(), "metrics across the veth: {}", curl.stderr);
    curl.stdout
}

/// Asserts that the node sent at least `at_least` datagrams through its TX ring, at most 1 in 100
/// through its UDP socket, and received everything through its RX ring; returns a summary.
fn assert_through_af_xdp(metrics: &str, at_least: u64) -> String {
    assert_core_through_af_xdp(metrics, 0, at_least)
}

/// [`assert_through_af_xdp`] for the sockets of `core`.
fn assert_core_through_af_xdp(metrics: &str, core: usize, at_least: u64) -> String {
    let counter = |path| af_xdp_core_counter(metrics, core, path);
    let (rx_xdp, rx_socket) = (counter("received_af_xdp"), counter("received_udp_socket"));
    let (tx_xdp, tx_socket) = (counter("sent_af_xdp"), counter("sent_udp_socket"));
    let summary = format!(
        "core {core}: received {rx_xdp} AF_XDP, {rx_socket} UDP socket; sent {tx_xdp} AF_XDP, {tx_socket} UDP socket"
    );
    assert!(tx_xdp >= at_least, "the data left through the TX ring: {summary}");
    assert!(tx_socket * 100 <= tx_xdp, "at most a few datagrams through the UDP socket: {summary}");
    assert!(rx_xdp > 0 && rx_socket == 0, "every datagram came through the RX ring: {summary}");
    summary
}

/// The kernel's UDP counters in namespace `netns` (`/proc/net/snmp` is per namespace):
/// (InDatagrams, OutDatagrams), the datagrams its UDP sockets took and sent. Frames through an
/// AF_XDP socket bypass the kernel's UDP stack and are not counted.
fn kernel_udp(netns: &str, logs: &Path) -> (u64, u64) {
    let snmp = in_netns(netns, "cat", &["/proc/net/snmp"], logs).stdout;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let field = |name: &str| -> u64 {
        let i = names.split_whitespace().position(|n| n == name).unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    (field("InDatagrams"), field("OutDatagrams"))
}

/// The SHA-256 of each `OK PATH BYTES SHA` line of hq_client.py (prefixed `CONN i ` with several
/// connections).
fn hq_client_oks(stdout: &str) -> Vec<String> {
    let fields = stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>());
    fields
        .filter_map(|f| match f.as_slice() {
            ["OK", _, _, sha] | ["CONN", _, "OK", _, _, sha] => Some(sha.to_string()),
            _ => None,
        })
        .collect()
}

/// aioquic's hq client in the peer namespace: `connections` connections at once, each fetching
/// `path` from the node.
fn aioquic_fetch(ns: &Netns, path: &str, connections: usize, out: &Path, logs: &Path) -> common::Finished {
    let python = common::aioquic_python().unwrap();
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns.peer]).arg(python).arg(common::interop_script("hq_client.py"));
    command.args(["--host", &NODE_IP.to_string(), "--port", &PORT.to_string(), "--insecure", "--timeout", "90"]);
    command.args(["--connections", &connections.to_string()]).arg("--output").arg(out).arg(path);
    common::run("hq_client", &mut command, logs, DEADLINE).unwrap()
}

#[test]
fn aioquic_downloads_200_mb_from_a_node_on_af_xdp() {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut tmp = TempDir::new("xdp-aioquic-client").unwrap().keep_unless_passed();
    let (www, out, logs) = (tmp.subdir("www").unwrap(), tmp.subdir("out").unwrap(), tmp.subdir("logs").unwrap());
    let blob = random_bytes(BIG_DOWNLOAD).unwrap();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let ns = Netns::for_af_xdp("xdpa");
    let node = start_xdp_node(&ns, tmp.path(), &www, &logs);

    let started = Instant::now();
    let done = aioquic_fetch(&ns, "/blob", 1, &out, &logs);
    let took = started.elapsed();
    assert!(done.status.success(), "hq_client: {}\n{}\nnode:\n{}", done.stdout, done.stderr, node.stderr());
    assert_eq!(hq_client_oks(&done.stdout), [sha256_hex(&blob)], "one file, SHA-256 intact: {}", done.stdout);
    assert_eq!(sha256_hex(&std::fs::read(out.join("blob")).unwrap()), sha256_hex(&blob), "the file written");
    let summary = assert_through_af_xdp(&node_metrics(&ns, &logs), (BIG_DOWNLOAD / 1500) as u64);
    println!("aioquic client: {} MB in {took:.2?}; {summary}", BIG_DOWNLOAD >> 20);
    drop(node);
    tmp.passed();
}

#[test]
fn sixty_four_aioquic_connections_at_once_fetch_from_a_node_on_af_xdp() {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut tmp = TempDir::new("xdp-aioquic-many").unwrap().keep_unless_passed();
    let (www, out, logs) = (tmp.subdir("www").unwrap(), tmp.subdir("out").unwrap(), tmp.subdir("logs").unwrap());
    let file = random_bytes(MANY_FILE).unwrap();
    std::fs::write(www.join("file"), &file).unwrap();
    let ns = Netns::for_af_xdp("xdpm");
    let node = start_xdp_node(&ns, tmp.path(), &www, &logs);

    let started = Instant::now();
    let done = aioquic_fetch(&ns, "/file", MANY, &out, &logs);
    let took = started.elapsed();
    assert!(done.status.success(), "hq_client: {}\n{}\nnode:\n{}", done.stdout, done.stderr, node.stderr());
    let oks = hq_client_oks(&done.stdout);
    assert_eq!(oks.len(), MANY, "one file per connection: {}", done.stdout);
    assert!(oks.iter().all(|sha| *sha == sha256_hex(&file)), "every file intact: {}", done.stdout);
    for i in 0..MANY {
        let written = std::fs::read(out.join(format!("conn-{i}/file"))).unwrap();
        assert_eq!(sha256_hex(&written), sha256_hex(&file), "conn-{i}/file written intact");
    }
    let metrics = node_metrics(&ns, &logs);
    let accepted = sample(&metrics, "ant_quic_core_connections_accepted_total{core=\"0\"}").unwrap();
    assert_eq!(accepted as usize, MANY, "the node accepted {MANY} connections");
    let summary = assert_through_af_xdp(&metrics, (MANY * MANY_FILE / 1500) as u64);
    println!("{MANY} aioquic connections, {} KB each, in {took:.2?}; {summary}", MANY_FILE >> 10);
    drop(node);
    tmp.passed();
}

#[test]
fn get_on_af_xdp_bound_to_its_veth_address_downloads_200_mb_from_aioquic() {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut tmp = TempDir::new("xdp-aioquic-server").unwrap().keep_unless_passed();
    let (www, out, logs) = (tmp.subdir("www").unwrap(), tmp.subdir("out").unwrap(), tmp.subdir("logs").unwrap());
    let blob = random_bytes(BIG_DOWNLOAD).unwrap();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let ns = Netns::for_af_xdp("xdpg");
    let python = common::aioquic_python().unwrap();
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns.peer]).arg(python).arg(common::interop_script("hq_server.py"));
    command.args(["--host", &PEER_IP.to_string(), "--port", "0", "--max-seconds", "120", "--root"]).arg(&www);
    let mut server = common::Process::spawn("hq_server", &mut command, &logs).unwrap();
    let port = server
        .stdout_line(Duration::from_secs(30), |l| l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok()))
        .unwrap();

    let (node_udp, peer_udp) = (kernel_udp(&ns.node, &logs), kernel_udp(&ns.peer, &logs));
    let started = Instant::now();
    let url = format!("https://{PEER_IP}:{port}/blob");
    let bind = NODE_IP.to_string();
    let args = ["get", "--insecure", "--backend", "af-xdp", "--bind", &bind, "--timeout", "90", &url];
    let mut get = Command::new("ip");
    get.args(["netns", "exec", &ns.node, NODE_BIN]).args(args).arg("--output").arg(&out).current_dir(tmp.path());
    let done = common::run("get", &mut get, &logs, DEADLINE).unwrap();
    let took = started.elapsed();
    assert!(done.status.success(), "get: {}\n{}\nserver:\n{}", done.stdout, done.stderr, server.stderr());
    assert_eq!(sha256_hex(&std::fs::read(out.join("blob")).unwrap()), sha256_hex(&blob), "SHA-256 intact");

    // get has no metrics: the kernels' UDP counters on both sides say where the datagrams went.
    // The server's went through its kernel's UDP stack; get's through its AF_XDP socket, which
    // its kernel's UDP counters never see, but for the first Initial (sent before get had heard
    // from the server, through its UDP socket).
    let (node_after, peer_after) = (kernel_udp(&ns.node, &logs), kernel_udp(&ns.peer, &logs));
    let (got_in, got_out) = (node_after.0 - node_udp.0, node_after.1 - node_udp.1);
    let (server_in, server_out) = (peer_after.0 - peer_udp.0, peer_after.1 - peer_udp.1);
    let summary = format!(
        "server sent {server_out} and received {server_in} datagrams; get's kernel UDP stack took {got_in} and sent {got_out}"
    );
    println!("get on af-xdp: {} MB in {took:.2?}; {summary}", BIG_DOWNLOAD >> 20);
    assert!(server_out >= (BIG_DOWNLOAD / 1500) as u64, "the server's datagrams: {summary}");
    assert!(got_in * 100 <= server_out, "get received through its RX ring: {summary}");
    assert!(server_in >= 100 && got_out * 100 <= server_in, "get sent through its TX ring: {summary}");
    drop(server);
    tmp.passed();
}

/// The file of the IPv6 and two-queue tests: thousands of frames each, in about a second.
const SMALL_DOWNLOAD: usize = 8 << 20;

#[test]
fn a_node_on_af_xdp_serves_a_download_over_ipv6() {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut tmp = TempDir::new("xdp-ipv6").unwrap().keep_unless_passed();
    let (www, out, logs) = (tmp.subdir("www").unwrap(), tmp.subdir("out").unwrap(), tmp.subdir("logs").unwrap());
    let blob = random_bytes(SMALL_DOWNLOAD).unwrap();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let ns = Netns::for_af_xdp("xdp6");
    ns.add_ipv6();
    let node = start_xdp_node_on(&ns, tmp.path(), &www, &logs, IpAddr::V6(NODE_IP6), 1);

    let started = Instant::now();
    let url = format!("https://{}/blob", SocketAddr::from((NODE_IP6, PORT)));
    let done = get_from_the_peer(&ns, &url, &out, tmp.path(), &logs, "get");
    let took = started.elapsed();
    assert!(done.status.success(), "get over IPv6: {}\n{}\nnode:\n{}", done.stdout, done.stderr, node.stderr());
    assert_eq!(sha256_hex(&std::fs::read(out.join("blob")).unwrap()), sha256_hex(&blob), "SHA-256 intact");
    let summary = assert_through_af_xdp(&node_metrics(&ns, &logs), (SMALL_DOWNLOAD / 1500) as u64);
    println!("IPv6: {} MB in {took:.2?}; {summary}", SMALL_DOWNLOAD >> 20);
    drop(node);
    tmp.passed();
}

/// Concurrent `get`s against the two-core node: each its own UDP socket, so its own flow hash.
/// The peer's veth end picks its TX queue, and so the node's RX queue, by that hash: with 16 flows
/// both queues are used but for a chance of 2 in 65,536.
const FLOWS: usize = 16;

#[test]
fn a_two_core_node_on_af_xdp_serves_concurrent_downloads_through_both_queues() {
    if !common::af_xdp_lab_here() {
        return;
    }
    let mut tmp = TempDir::new("xdp-queues").unwrap().keep_unless_passed();
    let (www, out, logs) = (tmp.subdir("www").unwrap(), tmp.subdir("out").unwrap(), tmp.subdir("logs").unwrap());
    let file = random_bytes(SMALL_DOWNLOAD / FLOWS).unwrap();
    std::fs::write(www.join("file"), &file).unwrap();
    let ns = Netns::for_af_xdp_with_queues("xdpq", 2);
    let node = start_xdp_node_on(&ns, tmp.path(), &www, &logs, IpAddr::V4(NODE_IP), 2);

    let started = Instant::now();
    let url = format!("https://{}/file", SocketAddr::from((NODE_IP, PORT)));
    let outs: Vec<_> = (0..FLOWS).map(|i| out.join(format!("get-{i}"))).collect();
    std::thread::scope(|scope| {
        let gets: Vec<_> = outs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                let (ns, url, dir, logs) = (&ns, &url, tmp.path(), &logs);
                std::fs::create_dir_all(out).unwrap();
                scope.spawn(move || get_from_the_peer(ns, url, out, dir, logs, &format!("get-{i}")))
            })
            .collect();
        for get in gets {
            let done = get.join().unwrap();
            assert!(done.status.success(), "get: {}\n{}\nnode:\n{}", done.stdout, done.stderr, node.stderr());
        }
    });
    let took = started.elapsed();
    for out in &outs {
        assert_eq!(
            sha256_hex(&std::fs::read(out.join("file")).unwrap()),
            sha256_hex(&file),
            "{} intact",
            out.display()
        );
    }
    let metrics = node_metrics(&ns, &logs);
    let accepted: f64 = (0..2)
        .map(|core| sample(&metrics, &format!("ant_quic_core_connections_accepted_total{{core=\"{core}\"}}")).unwrap())
        .sum();
    assert_eq!(accepted as usize, FLOWS, "one connection per get");
    // Each core's socket took datagrams from its queue's RX ring and answered through its own TX
    // ring; with every queue holding a socket, nothing reached the UDP sockets.
    let summaries: Vec<String> = (0..2).map(|core| assert_core_through_af_xdp(&metrics, core, 1)).collect();
    println!("{FLOWS} gets of {} KB in {took:.2?}; {}", (SMALL_DOWNLOAD / FLOWS) >> 10, summaries.join("; "));
    drop(node);
    tmp.passed();
}
