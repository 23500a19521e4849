//! The services a node offers to connections it accepts, chosen by ALPN:
//!
//! - `hq-interop`: HTTP/0.9 over QUIC as in the QUIC interop runner. A request is one
//!   bidirectional stream carrying `GET /path\r\n`; the answer is the file's bytes, then FIN. Files
//!   come from the `--www` directory only; anything else resets the stream.
//! - `ant-quic/1`: the node's own protocol; see [`crate::protocol`] for its stream operations.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ant_quic_dataplane::connection::StreamReadError;
use ant_quic_dataplane::quinn_proto::{StreamId, VarInt};
use ant_quic_dataplane::{Application, ConnId, ConnRef, ReadOutcome};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::protocol::{self, Op, AQ_BAD_OP, HQ_BAD_REQUEST, HQ_NOT_FOUND};
use crate::tls::{ALPN_ANT_QUIC, ALPN_HQ_INTEROP};

/// Longest hq-interop request line accepted (bytes, CRLF excluded).
pub const MAX_REQUEST: usize = 4096;
/// Echo bytes held back by flow control before reading stops.
const ECHO_BACKLOG: usize = 1024 * 1024;
/// Bytes read from a file per write.
const FILE_CHUNK: usize = 64 * 1024;

/// A directory served over hq-interop.
#[derive(Debug)]
pub struct WwwRoot {
    root: PathBuf,
}

impl WwwRoot {
    /// Serve `dir`, which must exist.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"));
        }
        Ok(Self { root })
    }

    /// The file a request path names, if it is a regular file inside the root after resolving
    /// symlinks. `..`, absolute paths and links leading out are refused.
    pub fn resolve(&self, request_path: &str) -> Option<PathBuf> {
        let relative = request_path.strip_prefix('/')?;
        let relative = Path::new(relative);
        if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        let full = self.root.join(relative).canonicalize().ok()?;
        (full.starts_with(&self.root) && full.is_file()).then_some(full)
    }
}

/// What the bytes of an hq-interop request stream hold so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HqRequest {
    /// No line end yet, and the stream goes on.
    Incomplete,
    /// No line end within the longest request line accepted: refused.
    TooLong,
    /// `GET <path>`: the path, without surrounding whitespace.
    Get(String),
    /// A line that is not `GET <path>`.
    NotGet,
}

/// The request line at the start of an hq-interop stream (`GET /path\r\n`; the interop runner's
/// HTTP/0.9). `finished`: the peer ended the stream, so the line may end without CRLF.
pub fn parse_hq_request(line: &[u8], finished: bool) -> HqRequest {
    let head = line.get(..MAX_REQUEST + 2).unwrap_or(line);
    let end = match head.windows(2).position(|w| w == b"\r\n") {
        Some(end) => end,
        None if finished && line.len() <= MAX_REQUEST => line.len(),
        // The line (CRLF excluded) is longer than MAX_REQUEST.
        None if finished || line.len() >= MAX_REQUEST + 2 => return HqRequest::TooLong,
        None => return HqRequest::Incomplete,
    };
    let request = String::from_utf8_lossy(line.get(..end).unwrap_or_default());
    match request.strip_prefix("GET ") {
        Some(path) => HqRequest::Get(path.trim().to_owned()),
        None => HqRequest::NotGet,
    }
}

enum StreamState {
    /// hq-interop: collecting the request line.
    HqRequest(Vec<u8>),
    /// hq-interop: sending a file; `pending` was read but not yet accepted by flow control.
    HqSending { file: File, pending: Bytes },
    /// ant-quic/1: collecting the operation header.
    AqHeader(Vec<u8>),
    /// Echo everything back; `pending` waits for flow control; `fin` once the peer finished.
    Echo { pending: Vec<Bytes>, fin: bool },
    /// Send `remaining` bytes of filler, then FIN.
    Download { remaining: u64 },
    /// Count (and maybe hash) what arrives; answer at FIN.
    /// (The hash state is boxed: it is most of the enum's size, and states move on every read.)
    Upload { received: u64, hash: Option<Box<Sha256>>, reply: Option<Bytes> },
}

/// The per-core server application of a node.
pub struct ServiceApp {
    www: Option<Arc<WwwRoot>>,
    /// NAT traversal on this core (signalling streams, traversal connections), when the node runs it.
    link: Option<crate::nat::link::CoreLink>,
    // Looked up on every read: FxHash, not SipHash. The keys are our connection slots and stream
    // IDs that quinn-proto bounds per connection, so a peer cannot grow a collision chain far.
    protocols: FxHashMap<ConnId, Protocol>,
    streams: FxHashMap<(ConnId, StreamId), StreamState>,
    filler: Bytes,
    /// The chunks of one read, kept so that reads do not allocate.
    incoming: Vec<Bytes>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    HqInterop,
    AntQuic,
}

impl std::fmt::Debug for ServiceApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceApp").field("streams", &self.streams.len()).finish_non_exhaustive()
    }
}

impl ServiceApp {
    /// Services for one core; hq-interop serves `www` when given.
    pub fn new(www: Option<Arc<WwwRoot>>) -> Self {
        Self {
            www,
            link: None,
            protocols: FxHashMap::default(),
            streams: FxHashMap::default(),
            filler: protocol::filler(),
            incoming: Vec::new(),
        }
    }

    /// Services for one core of a node that runs NAT traversal: signalling streams are accepted
    /// and their messages go to the traversal driver through `events`.
    pub(crate) fn with_nat(
        www: Option<Arc<WwwRoot>>,
        events: crossbeam_channel::Sender<crate::nat::link::NatEvent>,
    ) -> Self {
        Self { link: Some(crate::nat::link::CoreLink::new(events)), ..Self::new(www) }
    }

    fn protocol(&mut self, conn: &ConnRef<'_>) -> Option<Protocol> {
        if let Some(p) = self.protocols.get(&conn.id()) {
            return Some(*p);
        }
        let protocol = match conn.alpn()?.as_slice() {
            a if a == ALPN_HQ_INTEROP => Protocol::HqInterop,
            a if a == ALPN_ANT_QUIC => Protocol::AntQuic,
            _ => return None,
        };
        self.protocols.insert(conn.id(), protocol);
        Some(protocol)
    }

    fn read_input(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let key = (conn.id(), stream);
        let Some(mut state) = self.streams.remove(&key) else { return };
        if let StreamState::Echo { pending, .. } = &state {
            // Stop reading (and so stop granting credit) while the peer is not taking echoes.
            if pending.iter().map(Bytes::len).sum::<usize>() > ECHO_BACKLOG {
                self.streams.insert(key, state);
                return;
            }
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        let outcome = match conn.read(stream, &mut |chunk| incoming.push(chunk)) {
            Ok(outcome) => outcome,
            // Already read to its end: the sending half may still be busy.
            Err(StreamReadError::Closed) => {
                self.streams.insert(key, state);
                return;
            }
            // The peer abandoned its request: so do we.
            Err(StreamReadError::Reset(code)) => {
                let _ = conn.reset(stream, code);
                return;
            }
        };
        let finished = outcome == ReadOutcome::Finished;
        let mut keep = true;
        for chunk in incoming.drain(..) {
            match &mut state {
                StreamState::HqRequest(line) => line.extend_from_slice(&chunk),
                StreamState::AqHeader(header) => header.extend_from_slice(&chunk),
                StreamState::Echo { pending, .. } => pending.push(chunk),
                StreamState::Upload { received, hash, .. } => {
                    if let Some(h) = hash.as_mut() {
                        h.update(&chunk);
                    }
                    *received += chunk.len() as u64;
                }
                _ => {} // data after a complete request is ignored
            }
        }
        self.incoming = incoming;
        state = match state {
            StreamState::HqRequest(line) => self.start_hq(conn, stream, line, finished, &mut keep),
            StreamState::AqHeader(header) => self.start_aq(conn, stream, header, finished, &mut keep),
            StreamState::Echo { pending, fin } => StreamState::Echo { pending, fin: fin || finished },
            StreamState::Upload { received, hash, reply: None } if finished => {
                let mut answer = BytesMut::from(&received.to_be_bytes()[..]);
                if let Some(h) = hash {
                    answer.extend_from_slice(&h.finalize());
                }
                StreamState::Upload { received, hash: None, reply: Some(answer.freeze()) }
            }
            other => other,
        };
        if keep {
            self.streams.insert(key, state);
            self.write_output(conn, stream);
        }
    }

    fn start_hq(
        &mut self,
        conn: &mut ConnRef<'_>,
        stream: StreamId,
        line: Vec<u8>,
        finished: bool,
        keep: &mut bool,
    ) -> StreamState {
        let path = match parse_hq_request(&line, finished) {
            HqRequest::Incomplete => return StreamState::HqRequest(line),
            HqRequest::TooLong => {
                *keep = false;
                let _ = conn.reset(stream, HQ_BAD_REQUEST);
                let _ = conn.stop(stream, HQ_BAD_REQUEST);
                return StreamState::HqRequest(Vec::new());
            }
            HqRequest::Get(path) => Some(path),
            HqRequest::NotGet => None,
        };
        let file = path.as_deref().and_then(|p| self.www.as_ref()?.resolve(p)).and_then(|p| File::open(p).ok());
        match file {
            Some(file) => StreamState::HqSending { file, pending: Bytes::new() },
            None => {
                tracing::debug!(request = %String::from_utf8_lossy(&line), "hq-interop request refused");
                *keep = false;
                let code = if path.is_some() { HQ_NOT_FOUND } else { HQ_BAD_REQUEST };
                let _ = conn.reset(stream, code);
                StreamState::HqRequest(Vec::new())
            }
        }
    }

    fn start_aq(
        &mut self,
        conn: &mut ConnRef<'_>,
        stream: StreamId,
        header: Vec<u8>,
        finished: bool,
        keep: &mut bool,
    ) -> StreamState {
        match protocol::parse_op(&header) {
            Ok(Some((op, used))) => {
                let rest = header.get(used..).map(Bytes::copy_from_slice).unwrap_or_default();
                match op {
                    Op::Echo => StreamState::Echo { pending: vec![rest], fin: finished },
                    Op::Signal => {
                        // The traversal takes the stream over from here.
                        *keep = false;
                        match self.link.as_mut() {
                            Some(link) => link.accept_signal_stream(conn, stream, &rest),
                            None => {
                                let _ = conn.reset(stream, AQ_BAD_OP);
                                let _ = conn.stop(stream, AQ_BAD_OP);
                            }
                        }
                        StreamState::AqHeader(Vec::new())
                    }
                    Op::Download(len) => StreamState::Download { remaining: len },
                    Op::Upload { hash } => {
                        let mut h = hash.then(|| Box::new(Sha256::new()));
                        if let Some(h) = h.as_mut() {
                            h.update(&rest);
                        }
                        let received = rest.len() as u64;
                        let reply = finished.then(|| {
                            let mut answer = BytesMut::from(&received.to_be_bytes()[..]);
                            if let Some(h) = h.take() {
                                answer.extend_from_slice(&h.finalize());
                            }
                            answer.freeze()
                        });
                        StreamState::Upload { received, hash: h, reply }
                    }
                }
            }
            Ok(None) if !finished => StreamState::AqHeader(header),
            Ok(None) | Err(_) => {
                *keep = false;
                let _ = conn.reset(stream, AQ_BAD_OP);
                let _ = conn.stop(stream, AQ_BAD_OP);
                StreamState::AqHeader(Vec::new())
            }
        }
    }

    fn write_output(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let key = (conn.id(), stream);
        let Some(state) = self.streams.get_mut(&key) else { return };
        let done = match state {
            StreamState::HqSending { file, pending } => loop {
                if pending.is_empty() {
                    let mut buf = vec![0u8; FILE_CHUNK];
                    match file.read(&mut buf) {
                        Ok(0) => {
                            let _ = conn.finish(stream);
                            break true;
                        }
                        Ok(n) => {
                            buf.truncate(n);
                            *pending = Bytes::from(buf);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading a served file failed");
                            let _ = conn.reset(stream, HQ_NOT_FOUND);
                            break true;
                        }
                    }
                }
                match conn.write(stream, pending) {
                    Ok(0) => break false,
                    Ok(n) => {
                        let _ = pending.split_to(n);
                    }
                    Err(_) => break true,
                }
            },
            StreamState::Echo { pending, fin } => {
                let mut blocked = false;
                while let Some(first) = pending.first_mut() {
                    match conn.write(stream, first) {
                        Ok(n) if n == first.len() => {
                            pending.remove(0);
                        }
                        Ok(n) => {
                            let _ = first.split_to(n);
                            blocked = true;
                            break;
                        }
                        Err(_) => return self.forget(key),
                    }
                }
                if !blocked && *fin {
                    let _ = conn.finish(stream);
                    true
                } else {
                    false
                }
            }
            StreamState::Download { remaining } => {
                let mut send = conn.quic().send_stream(stream);
                loop {
                    if *remaining == 0 {
                        let _ = send.finish();
                        break true;
                    }
                    let len = usize::try_from(*remaining).unwrap_or(usize::MAX).min(self.filler.len());
                    let mut chunk = [self.filler.slice(..len)];
                    match send.write_chunks(&mut chunk) {
                        Ok(written) if written.bytes > 0 => *remaining -= written.bytes as u64,
                        Ok(_) | Err(ant_quic_dataplane::quinn_proto::WriteError::Blocked) => break false,
                        Err(_) => break true,
                    }
                }
            }
            StreamState::Upload { reply: Some(reply), .. } => match conn.write(stream, reply) {
                Ok(n) if n == reply.len() => {
                    let _ = conn.finish(stream);
                    true
                }
                Ok(n) => {
                    let _ = reply.split_to(n);
                    false
                }
                Err(_) => true,
            },
            _ => false,
        };
        if done {
            self.forget(key);
        }
    }

    fn forget(&mut self, key: (ConnId, StreamId)) {
        self.streams.remove(&key);
    }
}

impl Application<crate::nat::link::CoreRequest> for ServiceApp {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if self.protocol(conn).is_none() {
            conn.close(VarInt::from_u32(0x10), b"no supported application protocol");
            return;
        }
        if let Some(link) = self.link.as_mut() {
            link.on_connected(conn);
        }
    }

    fn on_stream_opened(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let Some(protocol) = self.protocol(conn) else { return };
        if stream.dir() != ant_quic_dataplane::quinn_proto::Dir::Bi {
            let _ = conn.stop(stream, AQ_BAD_OP);
            return;
        }
        let state = match protocol {
            Protocol::HqInterop => StreamState::HqRequest(Vec::new()),
            Protocol::AntQuic => StreamState::AqHeader(Vec::new()),
        };
        self.streams.insert((conn.id(), stream), state);
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        if self.link.as_mut().is_some_and(|link| link.on_readable(conn, stream)) {
            return;
        }
        self.read_input(conn, stream);
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        if self.link.as_mut().is_some_and(|link| link.on_writable(conn, stream)) {
            return;
        }
        self.write_output(conn, stream);
        // An echo that stopped reading for back-pressure resumes here.
        if matches!(self.streams.get(&(conn.id(), stream)), Some(StreamState::Echo { .. })) {
            self.read_input(conn, stream);
        }
    }

    fn on_stopped(&mut self, conn: &mut ConnRef<'_>, stream: StreamId, code: VarInt) {
        let _ = conn.reset(stream, code);
        self.forget((conn.id(), stream));
    }

    fn on_closed(&mut self, id: ConnId, tag: u64, reason: &ant_quic_dataplane::quinn_proto::ConnectionError) {
        self.protocols.remove(&id);
        self.streams.retain(|(conn, _), _| *conn != id);
        if let Some(link) = self.link.as_mut() {
            link.on_closed(id, tag, reason);
        }
    }

    fn on_connect_failed(&mut self, tag: u64, error: &ant_quic_dataplane::quinn_proto::ConnectError) {
        if let Some(link) = self.link.as_mut() {
            link.on_connect_failed(tag, error);
        }
    }

    fn on_message(&mut self, conns: &mut ant_quic_dataplane::Connections<'_>, request: crate::nat::link::CoreRequest) {
        let Some(link) = self.link.as_mut() else { return };
        link.on_request(conns, request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_root_serves_only_files_inside_it() {
        let base = std::env::temp_dir().join(format!("ant-quic-www-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("www");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/inside.txt"), b"ok").unwrap();
        std::fs::write(base.join("secret.txt"), b"no").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("out-link")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/inside.txt"), root.join("in-link")).unwrap();
        let www = WwwRoot::new(&root).unwrap();

        assert!(www.resolve("/sub/inside.txt").is_some());
        assert!(www.resolve("/in-link").is_some(), "a link that stays inside is served");
        assert_eq!(www.resolve("/out-link"), None, "a link leading out is refused");
        assert_eq!(www.resolve("/../secret.txt"), None);
        assert_eq!(www.resolve("/sub/../../secret.txt"), None);
        assert_eq!(www.resolve(&format!("/{}", base.join("secret.txt").display())), None);
        assert_eq!(www.resolve("sub/inside.txt"), None, "paths start with /");
        assert_eq!(www.resolve("/sub"), None, "directories are not files");
        assert_eq!(www.resolve("/missing"), None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn hq_request_line_is_get_and_a_path_within_the_limit() {
        assert_eq!(parse_hq_request(b"GET /a.txt\r\n", false), HqRequest::Get("/a.txt".into()));
        assert_eq!(parse_hq_request(b"GET /a.txt", false), HqRequest::Incomplete);
        assert_eq!(parse_hq_request(b"GET /a.txt", true), HqRequest::Get("/a.txt".into()), "FIN ends the line");
        assert_eq!(parse_hq_request(b"PUT /a.txt\r\n", false), HqRequest::NotGet);
        let longest = format!("GET /{}", "a".repeat(MAX_REQUEST - 5));
        assert_eq!(parse_hq_request(format!("{longest}\r\n").as_bytes(), false), HqRequest::Get(longest[4..].into()));
        assert_eq!(parse_hq_request(format!("{longest}\r").as_bytes(), false), HqRequest::Incomplete);
        assert_eq!(parse_hq_request(format!("{longest}a\r\n").as_bytes(), false), HqRequest::TooLong);
        assert_eq!(parse_hq_request(format!("{longest}a").as_bytes(), true), HqRequest::TooLong);
    }
}
