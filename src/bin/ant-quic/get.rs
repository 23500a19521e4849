//! `ant-quic get`: download files over hq-interop on one connection (or, with `--connections`,
//! several in turn, each resuming the TLS session of the one before).

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ant_quic::client::{GetApp, GetEvent};
use ant_quic::dataplane::{BackendKind, ConnectRequest};
use ant_quic::node::{connect_request, start_client_app};
use ant_quic::tls::{ServerAuth, ALPN_HQ_INTEROP};
use ant_quic::Error;
use quinn_proto::crypto::rustls::QuicClientConfig;

use crate::progress::{GetBars, TICK};
use crate::GetArgs;

/// A download client only acknowledges, and ACK-only packets do not elicit anything. After its
/// NAT rebinds, a server whose packets to the new address are lost (or which fell back to the old,
/// dead one) would never hear from it again. A PING after this long without receiving anything
/// carries the new address to the server (RFC 9000 §9.3; §10.1.2 on keeping NAT bindings).
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A parsed `https://HOST:PORT/PATH` URL.
struct Url {
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, Error> {
    let bad = |why: &str| Error::Invalid(format!("bad URL '{url}': {why}; expected https://HOST:PORT/PATH"));
    let rest = url.strip_prefix("https://").ok_or_else(|| bad("not https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    Ok(Url { authority, path: path.to_owned() })
}

/// `requests` in `parts` consecutive groups as even as possible (none empty).
fn split<T>(requests: Vec<T>, parts: u32) -> Vec<Vec<T>> {
    let parts = usize::try_from(parts).unwrap_or(usize::MAX).clamp(1, requests.len().max(1));
    let (size, extra) = (requests.len() / parts, requests.len() % parts);
    let mut rest = requests.into_iter();
    (0..parts).map(|i| rest.by_ref().take(size + usize::from(i < extra)).collect()).collect()
}

/// Where a fetched path is written under `output`; `None` if it would escape it.
fn output_file(output: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative.as_os_str().is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(output.join(relative))
}

/// The address `get` sends from: `--bind`, or any address (IPv4 and IPv6) and port. The af-xdp
/// backend attaches to the interface holding it, so a wildcard names none.
fn local_address(args: &GetArgs) -> Result<SocketAddr, Error> {
    let wildcard = args.bind.is_none_or(|bind| bind.ip().is_unspecified());
    if args.backend == Some(BackendKind::AfXdp) && wildcard {
        return Err(Error::Invalid(
            "backend af-xdp attaches to one interface: pass --bind with one of its addresses (--bind IP[:PORT])".into(),
        ));
    }
    Ok(args.bind.unwrap_or(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)))
}

pub(crate) fn get(args: &GetArgs) -> Result<ExitCode, Error> {
    let local = local_address(args)?;
    let urls = args.urls.iter().map(|u| parse_url(u)).collect::<Result<Vec<_>, _>>()?;
    let authority = urls.first().map(|u| u.authority.clone()).unwrap_or_default();
    if let Some(other) = urls.iter().find(|u| u.authority != authority) {
        return Err(Error::Invalid(format!(
            "all URLs must name the same server (one connection): {} and {}",
            authority, other.authority
        )));
    }
    let remote = authority
        .to_socket_addrs()
        .map_err(|source| Error::Io { context: format!("resolving {authority}"), source })?
        .next()
        .ok_or_else(|| Error::Invalid(format!("{authority} has no address")))?;
    let mut requests = Vec::new();
    for url in &urls {
        let file = output_file(&args.output, &url.path)
            .ok_or_else(|| Error::Invalid(format!("cannot save '{}' under {}", url.path, args.output.display())))?;
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| Error::Io { context: format!("creating {}", parent.display()), source })?;
        }
        requests.push((url.path.clone(), file));
    }
    let auth = match (args.peer_id, args.insecure) {
        (Some(id), _) => ServerAuth::PeerId(id),
        (None, true) => ServerAuth::Insecure,
        (None, false) => {
            return Err(Error::Invalid("say how to authenticate the server: --peer-id ID or --insecure".into()));
        }
    };

    let expected = requests.len();
    let mut request = connect_request(remote, auth, &[ALPN_HQ_INTEROP], 0)?;
    if args.zero_rtt {
        // A GET may run twice (0-RTT data can be replayed): fine to send early.
        let mut tls = ant_quic::tls::rustls_client_config(auth, &[ALPN_HQ_INTEROP])?;
        tls.enable_early_data = true;
        let quic = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| Error::Invalid(format!("TLS: {e}")))?;
        request.config = quinn_proto::ClientConfig::new(Arc::new(quic));
    }
    let mut transport = quinn_proto::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    // The user's --timeout, not QUIC's default 30 s, bounds how long a handshake may keep
    // probing: under heavy loss both sides back off, and the probe that gets through can come
    // after 30 s. Zero would mean "never" to QUIC, so it waits at least a second.
    let patience = quinn_proto::IdleTimeout::try_from(Duration::from_secs(args.timeout.max(1)))
        .map_err(|_| Error::Invalid(format!("--timeout {} is too large", args.timeout)))?;
    transport.max_idle_timeout(Some(patience));
    request.config.transport_config(Arc::new(transport));
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut results = Vec::new();
    let mut never_connected = false;
    // `get` prints no JSON: bars whenever stderr is a terminal.
    let bars = crate::progress::wanted(false).then(|| GetBars::new(urls.iter().map(|u| u.path.as_str())));
    // Index of the group's first request among all of them (the bars are numbered so).
    let mut first_of_group = 0;
    // Every connection clones the same client configuration, so they share rustls's session
    // store: the second connection resumes with a ticket the first one received.
    for group in split(requests, args.connections) {
        let expected = group.len();
        let (tx, rx) = mpsc::channel::<GetEvent>();
        let files: Vec<PathBuf> = group.iter().map(|(_, file)| file.clone()).collect();
        let app = GetApp::new(group, tx).with_key_updates(args.key_update_every);
        let progress = app.progress();
        let node = start_client_app(local, args.backend, None, app)?;
        node.connect(
            ConnectRequest { config: request.config.clone(), server_name: request.server_name.clone(), ..request },
            Some(0),
        )?;
        let before = results.len();
        let mut connected = false;
        while results.len() - before < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if bars.is_some() { left.min(TICK) } else { left };
            match rx.recv_timeout(wait) {
                Ok(GetEvent::Connected) => connected = true,
                Ok(GetEvent::File(fetched)) => {
                    if let (Some(bars), Some(index)) = (&bars, files.iter().position(|f| *f == fetched.file)) {
                        bars.ended(first_of_group + index);
                    }
                    results.push(fetched)
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Ok(GetEvent::Ended) | Err(_) => break,
            }
            if let Some(bars) = &bars {
                for (offset, bytes) in progress.iter().enumerate() {
                    bars.received(first_of_group + offset, bytes.load(Ordering::Relaxed));
                }
                bars.update_total();
            }
        }
        first_of_group += expected;
        // The files are written and this connection is done: send CONNECTION_CLOSE and go,
        // rather than wait out the closing period (three PTOs) that a long-lived endpoint keeps.
        node.shutdown_now();
        let _ = node.join();
        if results.len() - before < expected {
            // A file reported (failed) without a handshake came from 0-RTT or a connect error.
            never_connected = !connected && results.len() == before;
            break;
        }
    }

    if let Some(bars) = bars {
        bars.clear();
    }
    let mut failed = expected.saturating_sub(results.len());
    if failed > 0 && never_connected {
        eprintln!(
            "error: no connection to {remote} within {} s (the handshake never completed); {failed} file(s) not fetched",
            args.timeout
        );
    } else if failed > 0 {
        eprintln!("error: {failed} file(s) got no answer within {} s", args.timeout);
    }
    for r in &results {
        match &r.error {
            None => {
                let secs = r.elapsed.as_secs_f64().max(1e-9);
                println!(
                    "{}: {} bytes, sha256 {}, {:.3} s, {:.1} MB/s -> {}",
                    r.path,
                    r.bytes,
                    r.sha256,
                    secs,
                    r.bytes as f64 / secs / 1e6,
                    r.file.display()
                );
            }
            Some(error) => {
                failed += 1;
                eprintln!("error: {}: {error}", r.path);
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_keeps_order_and_leaves_no_group_empty() {
        assert_eq!(split(vec![1, 2, 3, 4, 5], 2), vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(split(vec![1, 2], 5), vec![vec![1], vec![2]]);
        assert_eq!(split(vec![1, 2, 3], 1), vec![vec![1, 2, 3]]);
    }
}
