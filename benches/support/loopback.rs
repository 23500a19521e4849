//! A server node and a client node on 127.0.0.1 for the wall-clock benches: the client's
//! application connects on request, runs echo round trips on the `ant-quic/1` `E` operation and
//! reports to the bench thread.

// Each bench uses part of this module: what one leaves unused is used by another.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ant_quic::dataplane::{Application, ConnId, ConnRef, ConnectRequest, Connections, Node, ReadOutcome};
use ant_quic::node::{start_client_app, start_server, NodeOptions, Server};
use ant_quic::protocol::{encode_op, Op};
use ant_quic::quinn_proto::{ClientConfig, ConnectError, ConnectionError, StreamId, VarInt};
use ant_quic::tls::{self, ServerAuth, ALPN_ANT_QUIC};

/// How long any single step may take before the bench gives up.
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// What the client application tells the bench thread.
#[derive(Debug)]
pub enum Report {
    /// A connection finished its handshake (and was closed if the client closes on connect).
    Connected,
    /// All echo rounds asked for are done.
    Echoed,
    /// Something failed.
    Failed(String),
}

/// Run `rounds` echo round trips of `payload`, one after the other, on the first connection.
struct EchoRounds {
    rounds: u64,
    payload: Vec<u8>,
}

struct BenchClient {
    close_on_connect: bool,
    conn: Option<ConnId>,
    rounds_left: u64,
    request: Vec<u8>,
    answer: usize,
    reports: mpsc::Sender<Report>,
}

impl BenchClient {
    fn send_request(&mut self, conn: &mut ConnRef<'_>) {
        let Some(stream) = conn.open_bi() else {
            let _ = self.reports.send(Report::Failed("no bidirectional stream credit".into()));
            return;
        };
        self.answer = 0;
        // Small requests fit the initial flow-control window in one write.
        let _ = conn.write(stream, &self.request);
        let _ = conn.finish(stream);
    }
}

impl Application<EchoRounds> for BenchClient {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if self.close_on_connect {
            conn.close(VarInt::from_u32(0), b"bench");
        } else if self.conn.is_none() {
            self.conn = Some(conn.id());
        }
        let _ = self.reports.send(Report::Connected);
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let answer = &mut self.answer;
        match conn.read(stream, &mut |bytes| *answer += bytes.len()) {
            Ok(ReadOutcome::Finished) => {
                // The request was the op byte and the payload; the answer is the payload.
                if self.answer + 1 != self.request.len() {
                    let _ = self.reports.send(Report::Failed(format!("echo returned {} bytes", self.answer)));
                    return;
                }
                self.rounds_left = self.rounds_left.saturating_sub(1);
                if self.rounds_left == 0 {
                    let _ = self.reports.send(Report::Echoed);
                } else {
                    self.send_request(conn);
                }
            }
            Ok(ReadOutcome::Pending) => {}
            Err(e) => {
                let _ = self.reports.send(Report::Failed(format!("echo stream: {e}")));
            }
        }
    }

    fn on_message(&mut self, conns: &mut Connections<'_>, echo: EchoRounds) {
        let Some(mut conn) = self.conn.and_then(|id| conns.get(id)) else {
            let _ = self.reports.send(Report::Failed("no connection to echo on".into()));
            return;
        };
        self.rounds_left = echo.rounds.max(1);
        self.request = encode_op(Op::Echo);
        self.request.extend_from_slice(&echo.payload);
        self.send_request(&mut conn);
    }

    fn on_closed(&mut self, id: ConnId, _tag: u64, reason: &ConnectionError) {
        if Some(id) == self.conn {
            let _ = self.reports.send(Report::Failed(format!("connection closed: {reason}")));
        }
    }

    fn on_connect_failed(&mut self, _tag: u64, error: &ConnectError) {
        let _ = self.reports.send(Report::Failed(format!("cannot connect: {error}")));
    }
}

/// A one-core server and a one-core client on loopback.
pub struct Loopback {
    server: Server,
    client: Node<EchoRounds>,
    client_config: ClientConfig,
    reports: mpsc::Receiver<Report>,
    next_tag: u64,
}

impl Loopback {
    /// Start both nodes. `close_on_connect`: the client closes every connection as soon as its
    /// handshake completes (connection-management benches); otherwise it keeps the first one for
    /// echo round trips.
    pub fn start(close_on_connect: bool) -> Result<Self, String> {
        let server = start_server(&NodeOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            cores: Some(1),
            ..NodeOptions::default()
        })
        .map_err(|e| e.to_string())?;
        let (tx, reports) = mpsc::channel();
        let app =
            BenchClient { close_on_connect, conn: None, rounds_left: 0, request: Vec::new(), answer: 0, reports: tx };
        let client = start_client_app(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), None, None, app)
            .map_err(|e| e.to_string())?;
        let client_config = tls::client_config(ServerAuth::PeerId(server.identity.peer_id()), &[ALPN_ANT_QUIC])
            .map_err(|e| e.to_string())?;
        Ok(Self { server, client, client_config, reports, next_tag: 0 })
    }

    /// Open `count` connections at once and wait until every handshake has completed.
    pub fn connect(&mut self, count: usize) -> Result<(), String> {
        for _ in 0..count {
            self.next_tag += 1;
            let request = ConnectRequest {
                remote: self.server.node.local_addr(),
                server_name: tls::default_server_name().to_owned(),
                config: self.client_config.clone(),
                tag: self.next_tag,
            };
            self.client.connect(request, Some(0)).map_err(|e| e.to_string())?;
        }
        for _ in 0..count {
            self.expect(|r| matches!(r, Report::Connected))?;
        }
        Ok(())
    }

    /// `rounds` echo round trips of `payload` on the first connection, one after the other; the
    /// time from asking the client core to hearing back from it.
    pub fn echo(&mut self, rounds: u64, payload: &[u8]) -> Result<Duration, String> {
        let started = Instant::now();
        let message = EchoRounds { rounds, payload: payload.to_vec() };
        self.client.send_message(0, message).map_err(|e| e.to_string())?;
        self.expect(|r| matches!(r, Report::Echoed))?;
        Ok(started.elapsed())
    }

    fn expect(&self, wanted: impl Fn(&Report) -> bool) -> Result<(), String> {
        match self.reports.recv_timeout(STEP_LIMIT) {
            Ok(report) if wanted(&report) => Ok(()),
            Ok(Report::Failed(reason)) => Err(reason),
            Ok(other) => Err(format!("unexpected {other:?}")),
            Err(_) => Err(format!("no answer within {STEP_LIMIT:?}")),
        }
    }

    /// Stop both nodes.
    pub fn stop(self) {
        self.client.shutdown();
        self.server.node.shutdown();
        let _ = self.client.join();
        let _ = self.server.node.join();
    }
}
