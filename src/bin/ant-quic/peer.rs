//! Reaching peers through the bootstraps: resolving `--bootstrap`, and the one-shot `--connect`
//! and `--test` runs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ant_quic::identity::PeerId;
use ant_quic::node::{start_server_with, NodeOptions};
use ant_quic::Error;
use ant_quic_control::nat::agent::{BootstrapStatus, PathKind};

use crate::progress::{TransferBar, TICK};
use crate::NodeArgs;

/// `--connect` and `--test`: start a node on its own port, register with the bootstraps, do the
/// one thing, report, stop.
pub(crate) fn one_shot(
    args: &NodeArgs,
    options: &NodeOptions,
    security: &ant_quic::tls::ServerSecurity,
) -> Result<ExitCode, Error> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let started = Instant::now();
    // A one-shot peer coordinates nobody: no alternate address to answer on.
    let mut options = options.clone();
    options.nat.alternate = None;
    let server = start_server_with(&options, security)?;
    let outcome = match args.connect {
        Some(target) => connect_to_peer(&server, target, args, started + timeout),
        None => connectivity_test(&server, args, started + timeout),
    };
    let mut nat = server.nat;
    nat.stop();
    server.node.shutdown();
    let _ = server.node.join();
    match outcome {
        Ok(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!("error: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Which bootstraps must have told us our observed address before going on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Registered {
    /// Any one of them.
    Any,
    /// The first one given (it coordinates: its connection is the oldest).
    First,
    /// All of them.
    All,
}

/// Wait until `enough` bootstraps told us our observed address, or the deadline. A pinned
/// bootstrap that proved another peer ID will not tell: it counts as done (and failed).
fn wait_registered(
    nat: &ant_quic::nat::Nat,
    enough: Registered,
    deadline: Instant,
) -> ant_quic_control::nat::agent::NatStatus {
    loop {
        let status = nat.status();
        // Observed (and its alternate addresses answered, or were given up on), or refused.
        let observed = |b: &BootstrapStatus| b.observed.is_some() && !b.discovering;
        let settled = |b: &BootstrapStatus| observed(b) || b.wrong_peer;
        let done = match enough {
            Registered::Any => status.bootstraps.iter().any(observed) || status.bootstraps.iter().all(|b| b.wrong_peer),
            Registered::First => status.bootstraps.first().is_some_and(settled),
            Registered::All => status.bootstraps.iter().all(settled),
        };
        if done || Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long `--connect` waits for the first bootstrap before letting another one coordinate.
const FIRST_BOOTSTRAP_WAIT: Duration = Duration::from_secs(10);

fn unreachable_reason(status: &ant_quic_control::nat::agent::NatStatus, waited: Duration) -> String {
    if status.bootstraps.iter().all(|b| b.wrong_peer) {
        // Reached, but not who the pins say: each reason names the address and the peer ID.
        let reasons: Vec<&str> = status.bootstraps.iter().filter_map(|b| b.last_error.as_deref()).collect();
        return format!("{}; check the peer ID given with the bootstrap", reasons.join("; "));
    }
    let reasons: Vec<String> = status
        .bootstraps
        .iter()
        .map(|b| match &b.last_error {
            Some(error) => format!("{}: {error}", b.address),
            None => format!("{}: no answer within {} s", b.address, waited.as_secs()),
        })
        .collect();
    format!(
        "no bootstrap reachable ({}); check the address, that a node listens there, and that UDP is allowed",
        reasons.join("; ")
    )
}

fn connect_to_peer(
    server: &ant_quic::node::Server,
    target: PeerId,
    args: &NodeArgs,
    deadline: Instant,
) -> Result<String, String> {
    // The first bootstrap given coordinates when it answers (on a lossy path its handshake may
    // take seconds); after a while any registered one will do.
    let first_deadline = deadline.min(Instant::now() + FIRST_BOOTSTRAP_WAIT);
    let mut status = wait_registered(&server.nat, Registered::First, first_deadline);
    if status.bootstraps.first().is_none_or(|b| b.observed.is_none()) {
        status = wait_registered(&server.nat, Registered::Any, deadline);
    }
    if !status.bootstraps.iter().any(|b| b.observed.is_some()) {
        return Err(unreachable_reason(&status, Duration::from_secs(args.timeout)));
    }
    let connection = server.nat.connect(target, deadline.saturating_duration_since(Instant::now()))?;
    let core = connection.conn.core;
    let mut line = serde_json::json!({
        "peer": target.to_string(),
        "path": connection.path.name(),
        "remote": connection.remote.to_string(),
        "connect_ms": millis(connection.connect),
    });
    if let Some(bytes) = args.send_bytes {
        let (report, reports) = crossbeam_channel::bounded(1);
        // The bar counts the UDP bytes this node sends from here on: the upload, with its packet
        // overhead and the little else a one-shot node sends meanwhile.
        let sent =
            || server.node.handle().all_stats().map(|c| ant_quic::dataplane::stats::read(&c.tx_bytes)).sum::<u64>();
        let sent_before = sent();
        let request = ant_quic::nat::link::CoreRequest::Upload { conn: connection.conn, bytes, report };
        server.node.send_message(core, request).map_err(|e| e.to_string())?;
        let bar = crate::progress::wanted(args.json).then(|| TransferBar::new("sending", bytes));
        let upload = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match reports.recv_timeout(if bar.is_some() { left.min(TICK) } else { left }) {
                Ok(upload) => break Ok(upload),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(_) => break Err(format!("the transfer of {bytes} bytes did not finish in time")),
            }
            if let Some(bar) = &bar {
                bar.moved(sent().saturating_sub(sent_before));
            }
        };
        if let Some(bar) = bar {
            bar.clear();
        }
        let upload = upload?;
        if let Some(error) = &upload.error {
            return Err(format!("transfer failed: {error}"));
        }
        let secs = upload.elapsed.as_secs_f64().max(1e-9);
        if let Some(object) = line.as_object_mut() {
            object.insert("bytes".into(), upload.bytes.into());
            object.insert("sha256".into(), upload.sha256.clone().into());
            object.insert("verified".into(), upload.verified.into());
            object.insert("mbit_s".into(), ((upload.bytes as f64 * 8.0 / secs / 1e6 * 10.0).round() / 10.0).into());
        }
    }
    // The path at the end: a connection made through the relay moves when a punch finds a
    // direct path (at once, or in a background round).
    let wait_until = (Instant::now() + Duration::from_secs(args.wait_direct.unwrap_or(0))).min(deadline);
    let direct_after = match connection.path {
        PathKind::Direct => Some((connection.connect, connection.remote)),
        PathKind::Relayed => loop {
            let after = server.nat.status().direct_after(target);
            if after.is_some() || Instant::now() >= wait_until {
                break after;
            }
            std::thread::sleep(Duration::from_millis(20));
        },
    };
    if let Some(object) = line.as_object_mut() {
        object.insert("first_path".into(), connection.path.name().into());
        object.insert("first_byte_ms".into(), millis(connection.connect).into());
        object.insert("direct_ms".into(), direct_after.map(|(after, _)| millis(after)).into());
        object.insert("path".into(), if direct_after.is_some() { "direct" } else { "relayed" }.into());
        // Where the connection runs at the end: the direct address, or the relay's.
        let at_end = direct_after.map_or(connection.remote, |(_, address)| address);
        object.insert("remote_at_end".into(), at_end.to_string().into());
    }
    // The RTT once the handshake (and any transfer) is done.
    let (report, reports) = crossbeam_channel::bounded(1);
    let describe = ant_quic::nat::link::CoreRequest::Describe { conn: connection.conn, report };
    if server.node.send_message(core, describe).is_ok() {
        if let Ok(Some((_, rtt))) = reports.recv_timeout(Duration::from_secs(2)) {
            if let Some(object) = line.as_object_mut() {
                object.insert("rtt_ms".into(), millis(rtt).into());
            }
        }
    }
    if args.json {
        Ok(line.to_string())
    } else {
        let get = |key: &str| line.get(key).map(|v| v.to_string().trim_matches('"').to_owned()).unwrap_or_default();
        let mut text = format!(
            "connected to {} {} via {} in {} ms (rtt {} ms)",
            get("peer"),
            get("first_path"),
            get("remote"),
            get("connect_ms"),
            get("rtt_ms")
        );
        if connection.path == PathKind::Relayed {
            match direct_after {
                Some((after, address)) => text
                    .push_str(&format!("; moved to a direct path to {address} {} ms after the request", millis(after))),
                None => text.push_str("; still relayed"),
            }
        }
        if args.send_bytes.is_some() {
            text.push_str(&format!(
                "; sent {} bytes, sha256 {}, verified {}, {} Mbit/s",
                get("bytes"),
                get("sha256"),
                get("verified"),
                get("mbit_s")
            ));
        }
        Ok(text)
    }
}

fn connectivity_test(server: &ant_quic::node::Server, args: &NodeArgs, deadline: Instant) -> Result<String, String> {
    use ant_quic_control::nat::candidate::Mapping;
    let status = wait_registered(&server.nat, Registered::All, deadline);
    let observed: Vec<SocketAddr> = status.bootstraps.iter().filter_map(|b| b.observed).collect();
    let Some(first) = observed.first().copied() else {
        return Err(unreachable_reason(&status, Duration::from_secs(args.timeout)));
    };
    let mapping = match status.mapping() {
        Mapping::Unknown => "unknown (no alternate port answered: give two --bootstrap to detect it)",
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::EndpointDependent => "endpoint-dependent",
    };
    let rtt = status.bootstraps.iter().filter_map(|b| b.rtt).min();
    let bootstraps: Vec<serde_json::Value> = status
        .bootstraps
        .iter()
        .map(|b| {
            serde_json::json!({
                "address": b.address.to_string(),
                "peer_id": b.peer.map(|p| p.to_string()),
                "reachable": b.observed.is_some(),
                "observed": b.observed.map(|o| o.to_string()),
                "observed_from_alternate": b.discovered.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "rtt_ms": b.rtt.map(millis),
                "error": if b.observed.is_some() { None } else { Some(b.last_error.clone().unwrap_or_else(|| "no answer".into())) },
            })
        })
        .collect();
    let line = serde_json::json!({
        "reachable": true,
        "observed": first.to_string(),
        "mapping": mapping,
        "rtt_ms": rtt.map(millis),
        "bootstraps": bootstraps,
    });
    if args.json {
        return Ok(line.to_string());
    }
    let mut text = format!(
        "reachable: observed address {first}, NAT mapping {mapping}, rtt {}",
        rtt.map(|r| format!("{:.1} ms", millis(r))).unwrap_or_else(|| "unknown".into())
    );
    for b in &status.bootstraps {
        match b.observed {
            Some(o) => {
                text.push_str(&format!("\n  {}: observed {o}", b.address));
                for d in &b.discovered {
                    text.push_str(&format!(", {d} from its alternate address"));
                }
            }
            None => text.push_str(&format!(
                "\n  {}: unreachable ({})",
                b.address,
                b.last_error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    Ok(text)
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}
