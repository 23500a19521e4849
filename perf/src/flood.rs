//! `ant-quic-perf flood`: a handshake flood on loopback. Valid QUIC Initials, each from a fresh
//! connection (new connection IDs, a new TLS ClientHello), spread over many source ports at a
//! fixed rate, never answered: what a server holds for each is what such a flood costs it.
//! Counts what comes back, so the amplification of the answers can be checked.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic_dataplane::quinn_proto::{Endpoint, EndpointConfig, EndpointEvent};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::load::ServerInfo;

/// The shape of a flood: how many Initials, how fast, from how many ports.
#[derive(Debug, Clone, Args)]
pub struct FloodShape {
    /// Initials to send (one per fresh connection).
    #[arg(long, default_value_t = 20_000)]
    pub initials: u64,
    /// Initials per second.
    #[arg(long, default_value_t = 3_000)]
    pub rate: u64,
    /// Source ports to spread them over (one socket each).
    #[arg(long, default_value_t = 256)]
    pub ports: usize,
    /// Send every datagram of each connection's first flight (a post-quantum ClientHello takes
    /// two), so the server can start the TLS handshake; otherwise only the first datagram.
    #[arg(long)]
    pub whole_flight: bool,
}

impl FloodShape {
    /// The same flags, for a child `flood` process.
    pub fn args(&self) -> Vec<String> {
        let flags = [
            ("--initials", self.initials.to_string()),
            ("--rate", self.rate.to_string()),
            ("--ports", self.ports.to_string()),
        ];
        let mut args: Vec<String> = flags.into_iter().flat_map(|(flag, value)| [flag.to_owned(), value]).collect();
        if self.whole_flight {
            args.push("--whole-flight".to_owned());
        }
        args
    }
}

/// `ant-quic-perf flood`.
#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    /// The server's JSON line as printed by `ant-quic-perf server` (its address and pin).
    #[arg(long)]
    pub server: String,
    #[command(flatten)]
    pub shape: FloodShape,
    /// After the last Initial, keep counting answers for this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub linger_ms: u64,
    /// One JSON line instead of the readable summary.
    #[arg(long)]
    pub json: bool,
}

/// What one flood sent and got back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloodResult {
    /// Initials sent.
    pub initials: u64,
    /// Datagrams sent (more than `initials` with a whole first flight).
    pub datagrams_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// Seconds from the first Initial to the last.
    pub seconds: f64,
    /// Datagrams the server sent back.
    pub answers: u64,
    /// Their UDP payload bytes.
    pub answer_bytes: u64,
    /// Of them, Retry packets.
    pub retries: u64,
    /// answer_bytes / bytes_sent: what the server's answers amplify the flood by.
    pub amplification: f64,
}

/// Counters shared by the receiving tasks.
#[derive(Default)]
struct Answers {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

/// Send the flood and count the answers.
pub fn run(args: &FloodArgs) -> Result<FloodResult> {
    let info: ServerInfo = serde_json::from_str(&args.server)
        .context("--server is not a server's JSON line; pass what `ant-quic-perf server` printed")?;
    if !info.addr.ip().is_loopback() {
        bail!("--server {} is not a loopback address: the flood only targets this machine", info.addr);
    }
    let shape = &args.shape;
    if shape.rate == 0 || shape.ports == 0 {
        bail!("--rate and --ports must be at least 1");
    }
    let client = crate::quinn_load::client_config(&info)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut sockets = Vec::with_capacity(shape.ports);
        for _ in 0..shape.ports {
            let socket = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .context("binding a flood socket")?;
            sockets.push(Arc::new(socket));
        }
        let answers = Arc::new(Answers::default());
        let mut receivers = tokio::task::JoinSet::new();
        for socket in &sockets {
            let (socket, answers) = (Arc::clone(socket), Arc::clone(&answers));
            receivers.spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = socket.recv(&mut buf).await {
                    answers.datagrams.fetch_add(1, Ordering::Relaxed);
                    answers.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if buf.first().is_some_and(|&b| is_retry(b)) {
                        answers.retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }

        // A client endpoint used only to build first flights: each connection is forgotten as
        // soon as its Initial is taken.
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        let interval = Duration::from_secs_f64(1.0 / shape.rate as f64);
        let start = Instant::now();
        let (mut bytes_sent, mut datagrams_sent) = (0u64, 0u64);
        let mut buf = Vec::with_capacity(1500);
        for i in 0..shape.initials {
            let due = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            let (handle, mut conn) = endpoint.connect(now, client.clone(), info.addr, "localhost")?;
            let socket = &sockets[(i as usize) % sockets.len()];
            loop {
                buf.clear();
                let Some(transmit) = conn.poll_transmit(now, 1, &mut buf) else { break };
                // Loopback drops under pressure like any path; a lost Initial is part of a flood.
                if socket.send_to(&buf[..transmit.size], info.addr).await.is_ok() {
                    bytes_sent += transmit.size as u64;
                    datagrams_sent += 1;
                }
                if !shape.whole_flight {
                    break;
                }
            }
            let _ = endpoint.handle_event(handle, EndpointEvent::drained());
        }
        let seconds = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(args.linger_ms)).await;
        receivers.abort_all();
        let answer_bytes = answers.bytes.load(Ordering::Relaxed);
        Ok(FloodResult {
            initials: shape.initials,
            datagrams_sent,
            bytes_sent,
            seconds,
            answers: answers.datagrams.load(Ordering::Relaxed),
            answer_bytes,
            retries: answers.retries.load(Ordering::Relaxed),
            amplification: if bytes_sent == 0 { 0.0 } else { answer_bytes as f64 / bytes_sent as f64 },
        })
    })
}

/// A QUIC v1 long header of type Retry (RFC 9000 §17.2.5: type bits 0b11).
fn is_retry(first: u8) -> bool {
    first & 0x80 != 0 && (first >> 4) & 0x03 == 0x03
}

impl FloodResult {
    /// The readable form.
    pub fn summary(&self) -> String {
        format!(
            "flood: {} connections' Initials in {:.2} s ({} datagrams, {} bytes); answers: {} datagrams, {} bytes ({} Retry); amplification {:.3}\n",
            self.initials,
            self.seconds,
            self.datagrams_sent,
            self.bytes_sent,
            self.answers,
            self.answer_bytes,
            self.retries,
            self.amplification
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_is_long_header_type_three() {
        assert!(is_retry(0xf0));
        assert!(!is_retry(0xc0), "Initial");
        assert!(!is_retry(0xe0), "Handshake");
        assert!(!is_retry(0x40), "short header");
    }
}
