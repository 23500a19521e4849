//! The per-core half of NAT traversal: signalling streams and the connections the traversal
//! opened, on the core that owns them. Messages are decoded here and handed to the driver thread
//! (the nat module's `Driver`) with the connection they came on; what the driver wants written arrives
//! back as a [`CoreRequest`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ant_quic_control::nat::agent::{ConnPurpose, SignalRole};
use ant_quic_control::nat::wire::FrameReader;
use ant_quic_control::nat::Message;
use ant_quic_control::PeerId;
use ant_quic_dataplane::quinn_proto::{ConnectionError, StreamId, VarInt};
use ant_quic_dataplane::relay::PathRoute;
use ant_quic_dataplane::Connections;
use ant_quic_dataplane::{ConnId, ConnRef, ReadOutcome};
use bytes::Bytes;
use crossbeam_channel::Sender;
use sha2::{Digest, Sha256};

use crate::client::UploadWriter;
use crate::protocol::{self, Op, AQ_BAD_OP};

/// What the cores tell the driver.
#[derive(Debug)]
pub(crate) enum NatEvent {
    /// A signalling stream is open on `conn`.
    SignalOpened { conn: ConnId, role: SignalRole, peer: Option<PeerId>, remote: SocketAddr, rtt: Duration },
    /// A message (or an undecodable frame) arrived on `conn`'s signalling stream.
    Signal { conn: ConnId, message: Result<Message, String> },
    /// The signalling stream (or its connection) of `conn` ended.
    SignalClosed { conn: ConnId },
    /// Where `conn`'s peer is seen from now, and its RTT (sampled on request).
    PathSample { conn: ConnId, remote: SocketAddr, rtt: Duration },
    /// A connection the NAT agent opened completed its handshake.
    Connected { purpose: ConnPurpose, conn: ConnId, remote: SocketAddr, rtt: Duration },
    /// A connection the NAT agent opened failed or ended (`conn`: `None` when it never started).
    /// Several connections may have one purpose: a bootstrap's old and new one in a handover.
    Closed { purpose: ConnPurpose, conn: Option<ConnId>, reason: String },
}

/// What the driver (or a caller of the node) asks of a core.
#[derive(Debug)]
pub enum CoreRequest {
    /// Write this encoded frame on `conn`'s signalling stream.
    Signal {
        /// The connection.
        conn: ConnId,
        /// One encoded frame.
        frame: Vec<u8>,
    },
    /// Report every signalling connection's current remote address and RTT.
    Sample,
    /// Send `bytes` of random data on `conn` with the `H` operation and check the count and
    /// SHA-256 the other side reports.
    Upload {
        /// The connection.
        conn: ConnId,
        /// How many bytes.
        bytes: u64,
        /// Where the result goes.
        report: Sender<UploadReport>,
    },
    /// Close `conn` with an application close without error (code 0): a bootstrap connection
    /// whose registration moved to a new one.
    Close {
        /// The connection.
        conn: ConnId,
        /// Said in the CONNECTION_CLOSE, for the other side's logs.
        reason: &'static str,
    },
    /// The data plane now routes the path alias `alias` by `route` (`None`: the alias is gone).
    /// Told to every core, for applications that report their connections' paths.
    Route {
        /// The alias: a relayed connection's remote address.
        alias: SocketAddr,
        /// Through a relay, or straight to an address (a path through a many-probe round's
        /// bridge is told as straight to the peer's address).
        route: Option<PathRoute>,
    },
    /// Report `conn`'s RTT and remote address.
    Describe {
        /// The connection.
        conn: ConnId,
        /// Where the answer goes; `None` when the connection is gone.
        report: Sender<Option<(SocketAddr, Duration)>>,
    },
}

/// The result of a [`CoreRequest::Upload`].
#[derive(Debug, Clone)]
pub struct UploadReport {
    /// Bytes sent.
    pub bytes: u64,
    /// From the first byte written to the other side's answer.
    pub elapsed: Duration,
    /// SHA-256 of what was sent.
    pub sha256: String,
    /// Whether the other side reported the same count and SHA-256.
    pub verified: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

struct SignalStream {
    stream: StreamId,
    reader: FrameReader,
    outgoing: VecDeque<Bytes>,
}

struct Upload {
    writer: UploadWriter,
    hash: Sha256,
    answer: Vec<u8>,
    started: Instant,
    report: Sender<UploadReport>,
}

/// Per-core NAT traversal state, owned by the core's service application.
pub(crate) struct CoreLink {
    events: Sender<NatEvent>,
    signals: HashMap<ConnId, SignalStream>,
    uploads: HashMap<(ConnId, StreamId), Upload>,
}

impl std::fmt::Debug for CoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreLink").field("signals", &self.signals.len()).finish_non_exhaustive()
    }
}

/// Bytes of signalling output held for a slow peer before its stream is reset.
const MAX_SIGNAL_BACKLOG: usize = 256 * 1024;

impl CoreLink {
    pub(crate) fn new(events: Sender<NatEvent>) -> Self {
        Self { events, signals: HashMap::new(), uploads: HashMap::new() }
    }

    fn emit(&self, event: NatEvent) {
        // The driver outlives the cores; if it is gone the node is stopping.
        let _ = self.events.send(event);
    }

    /// A connection completed its handshake.
    pub(crate) fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let Some(purpose) = ConnPurpose::of_tag(conn.tag()) else { return };
        match purpose {
            ConnPurpose::Bootstrap(_) => {
                let Some(stream) = conn.open_bi() else {
                    conn.close(VarInt::from_u32(0x11), b"no stream for signalling");
                    return;
                };
                let _ = conn.write(stream, &protocol::encode_op(Op::Signal));
                self.signals.insert(
                    conn.id(),
                    SignalStream { stream, reader: FrameReader::default(), outgoing: VecDeque::new() },
                );
                self.emit(NatEvent::SignalOpened {
                    conn: conn.id(),
                    role: SignalRole::Peer,
                    peer: None,
                    remote: conn.remote_address(),
                    rtt: conn.quic().rtt(),
                });
            }
            ConnPurpose::Attempt(_) => {}
        }
        let (remote, rtt) = (conn.remote_address(), conn.quic().rtt());
        self.emit(NatEvent::Connected { purpose, conn: conn.id(), remote, rtt });
    }

    /// A peer opened a signalling stream to us (`S`); `rest` followed the operation byte.
    pub(crate) fn accept_signal_stream(&mut self, conn: &mut ConnRef<'_>, stream: StreamId, rest: &[u8]) {
        if self.signals.contains_key(&conn.id()) {
            // One signalling stream per connection.
            let _ = conn.reset(stream, AQ_BAD_OP);
            let _ = conn.stop(stream, AQ_BAD_OP);
            return;
        }
        let peer = crate::tls::client_peer_id(conn.peer_certificates().as_deref());
        self.signals
            .insert(conn.id(), SignalStream { stream, reader: FrameReader::default(), outgoing: VecDeque::new() });
        self.emit(NatEvent::SignalOpened {
            conn: conn.id(),
            role: SignalRole::Coordinator,
            peer,
            remote: conn.remote_address(),
            rtt: conn.quic().rtt(),
        });
        self.feed(conn.id(), rest);
    }

    fn feed(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(signal) = self.signals.get_mut(&id) else { return };
        signal.reader.push(bytes);
        let mut messages = Vec::new();
        while let Some(message) = signal.reader.next_message() {
            messages.push(message.map_err(|e| e.to_string()));
        }
        for message in messages {
            self.emit(NatEvent::Signal { conn: id, message });
        }
    }

    /// Whether `stream` belongs to the traversal; if so its data was consumed.
    pub(crate) fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) -> bool {
        let id = conn.id();
        if self.signals.get(&id).is_some_and(|s| s.stream == stream) {
            let mut incoming = Vec::new();
            let outcome = conn.read(stream, &mut |chunk| incoming.push(chunk));
            for chunk in incoming {
                self.feed(id, &chunk);
            }
            let poisoned = self.signals.get(&id).is_some_and(|s| s.reader.is_poisoned());
            if poisoned || !matches!(outcome, Ok(ReadOutcome::Pending)) {
                // A stream that can no longer be delimited, or that ended, ends the signalling.
                if poisoned {
                    let _ = conn.stop(stream, AQ_BAD_OP);
                    let _ = conn.reset(stream, AQ_BAD_OP);
                }
                self.signals.remove(&id);
                self.emit(NatEvent::SignalClosed { conn: id });
            }
            return true;
        }
        if let Some(upload) = self.uploads.get_mut(&(id, stream)) {
            let answer = &mut upload.answer;
            let outcome = conn.read(stream, &mut |chunk| {
                if answer.len() < 64 {
                    answer.extend_from_slice(&chunk);
                }
            });
            match outcome {
                Ok(ReadOutcome::Pending) => {}
                Ok(ReadOutcome::Finished) => self.finish_upload(id, stream, None),
                Err(e) => self.finish_upload(id, stream, Some(format!("stream failed: {e}"))),
            }
            return true;
        }
        false
    }

    /// Whether `stream` belongs to the traversal; if so more was written.
    pub(crate) fn on_writable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) -> bool {
        let id = conn.id();
        if self.signals.get(&id).is_some_and(|s| s.stream == stream) {
            self.flush_signal(conn);
            return true;
        }
        if self.uploads.contains_key(&(id, stream)) {
            self.send_upload(conn, stream);
            return true;
        }
        false
    }

    fn flush_signal(&mut self, conn: &mut ConnRef<'_>) {
        let Some(signal) = self.signals.get_mut(&conn.id()) else { return };
        while let Some(front) = signal.outgoing.front_mut() {
            match conn.write(signal.stream, front) {
                Ok(n) if n == front.len() => {
                    signal.outgoing.pop_front();
                }
                Ok(n) => {
                    let _ = front.split_to(n);
                    return;
                }
                Err(_) => {
                    signal.outgoing.clear();
                    return;
                }
            }
        }
    }

    fn send_upload(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let Some(upload) = self.uploads.get_mut(&(conn.id(), stream)) else { return };
        let hash = &mut upload.hash;
        upload.writer.write(conn, stream, |chunk| hash.update(chunk));
    }

    fn finish_upload(&mut self, id: ConnId, stream: StreamId, error: Option<String>) {
        let Some(upload) = self.uploads.remove(&(id, stream)) else { return };
        let sha256: [u8; 32] = upload.hash.finalize().into();
        let count = upload.answer.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        let remote_sha = upload.answer.get(8..40);
        let sent = upload.writer.sent();
        let verified = error.is_none() && count == Some(sent) && remote_sha == Some(&sha256[..]);
        let error = error.or_else(|| {
            (!verified).then(|| format!("the other side reported {count:?} bytes and a different SHA-256"))
        });
        let _ = upload.report.send(UploadReport {
            bytes: sent,
            elapsed: upload.started.elapsed(),
            sha256: hex::encode(sha256),
            verified,
            error,
        });
    }

    /// A request from the driver or the node's owner.
    pub(crate) fn on_request(&mut self, conns: &mut Connections<'_>, request: CoreRequest) {
        match request {
            CoreRequest::Signal { conn, frame } => {
                let Some(mut c) = conns.get(conn) else { return };
                let Some(signal) = self.signals.get_mut(&conn) else { return };
                let backlog: usize = signal.outgoing.iter().map(Bytes::len).sum();
                if backlog + frame.len() > MAX_SIGNAL_BACKLOG {
                    // A peer that reads nothing does not get to grow our memory.
                    tracing::debug!(?conn, "signalling backlog full: closing the connection");
                    c.close(VarInt::from_u32(0x12), b"signalling backlog");
                    return;
                }
                signal.outgoing.push_back(Bytes::from(frame));
                self.flush_signal(&mut c);
            }
            CoreRequest::Sample => {
                let ids: Vec<ConnId> = self.signals.keys().copied().collect();
                for id in ids {
                    if let Some(mut c) = conns.get(id) {
                        let (remote, rtt) = (c.remote_address(), c.quic().rtt());
                        self.emit(NatEvent::PathSample { conn: id, remote, rtt });
                    }
                }
            }
            CoreRequest::Upload { conn, bytes, report } => {
                let fail = |why: &str| {
                    let _ = report.send(UploadReport {
                        bytes: 0,
                        elapsed: Duration::ZERO,
                        sha256: String::new(),
                        verified: false,
                        error: Some(why.to_owned()),
                    });
                };
                let Some(mut c) = conns.get(conn) else { return fail("the connection is gone") };
                let Some(stream) = c.open_bi() else { return fail("no stream available") };
                let _ = c.write(stream, &protocol::encode_op(Op::Upload { hash: true }));
                let upload = Upload {
                    writer: UploadWriter::new(random_block(), bytes),
                    hash: Sha256::new(),
                    answer: Vec::new(),
                    started: Instant::now(),
                    report: report.clone(),
                };
                self.uploads.insert((conn, stream), upload);
                self.send_upload(&mut c, stream);
            }
            CoreRequest::Close { conn, reason } => {
                if let Some(mut c) = conns.get(conn) {
                    c.close(VarInt::from_u32(0), reason.as_bytes());
                }
            }
            // The node's services do not report paths.
            CoreRequest::Route { .. } => {}
            CoreRequest::Describe { conn, report } => {
                let answer = conns.get(conn).map(|mut c| (c.remote_address(), c.quic().rtt()));
                let _ = report.send(answer);
            }
        }
    }

    /// A connection ended.
    pub(crate) fn on_closed(&mut self, id: ConnId, tag: u64, reason: &ConnectionError) {
        if self.signals.remove(&id).is_some() {
            self.emit(NatEvent::SignalClosed { conn: id });
        }
        let uploads: Vec<StreamId> = self.uploads.keys().filter(|(c, _)| *c == id).map(|(_, s)| *s).collect();
        for stream in uploads {
            self.finish_upload(id, stream, Some(format!("connection closed: {reason}")));
        }
        if let Some(purpose) = ConnPurpose::of_tag(tag) {
            self.emit(NatEvent::Closed { purpose, conn: Some(id), reason: reason.to_string() });
        }
    }

    /// A connection we asked for could not start.
    pub(crate) fn on_connect_failed(&mut self, tag: u64, error: &ant_quic_dataplane::quinn_proto::ConnectError) {
        if let Some(purpose) = ConnPurpose::of_tag(tag) {
            self.emit(NatEvent::Closed { purpose, conn: None, reason: format!("cannot connect: {error}") });
        }
    }
}

/// 64 KiB of random bytes, repeated to make an upload (random so that nothing on the path can
/// compress or fake it).
fn random_block() -> Bytes {
    let mut block = vec![0u8; 64 * 1024];
    if crate::tls::provider().secure_random.fill(&mut block).is_err() {
        // Without a random source, a counter pattern still checks integrity end to end.
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
    }
    Bytes::from(block)
}
