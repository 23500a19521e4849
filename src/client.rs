//! Client applications that run on a core: the hq-interop downloader behind `ant-quic get`, and
//! the `ant-quic/1` bulk transfer used by tests and benchmarks.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ant_quic_dataplane::quinn_proto::{ConnectionError, StreamId, VarInt};
use ant_quic_dataplane::{Application, ConnId, ConnRef, ReadOutcome};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::protocol::{self, Op};

/// The outcome of one file of `ant-quic get`.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The request path.
    pub path: String,
    /// Where it was written.
    pub file: PathBuf,
    /// Bytes received.
    pub bytes: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// From the request to the last byte.
    pub elapsed: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

struct Download {
    path: String,
    file_path: PathBuf,
    file: Option<File>,
    hash: Sha256,
    bytes: u64,
    started: Instant,
    stream: Option<StreamId>,
    done: bool,
}

/// What a [`GetApp`] reports, in order: `Connected` once the handshake completes, a `File` for
/// each request, then `Ended` when the connection is closed or could not start.
#[derive(Debug, Clone)]
pub enum GetEvent {
    /// The handshake completed.
    Connected,
    /// One request's outcome.
    File(Fetched),
    /// The connection is closed (with 0-RTT requests, the owner closes it) or never started.
    Ended,
}

/// Fetches paths over hq-interop on one connection, reporting [`GetEvent`]s.
pub struct GetApp {
    downloads: Vec<Download>,
    report: mpsc::Sender<GetEvent>,
    by_stream: HashMap<StreamId, usize>,
    conn: Option<ConnId>,
    finished: bool,
    /// The requests went out as 0-RTT data.
    sent_early: bool,
    /// Force a key update every this many bytes received (a test knob); 0: never.
    key_update_every: u64,
    received: u64,
    /// Bytes received so far of each request, in order, for a progress display on another thread.
    progress: Arc<[AtomicU64]>,
}

impl std::fmt::Debug for GetApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetApp").field("downloads", &self.downloads.len()).finish_non_exhaustive()
    }
}

impl GetApp {
    /// Fetch `paths`, writing each to `(path, file)`.
    pub fn new(requests: Vec<(String, PathBuf)>, report: mpsc::Sender<GetEvent>) -> Self {
        let now = Instant::now();
        let progress = requests.iter().map(|_| AtomicU64::new(0)).collect();
        let downloads = requests
            .into_iter()
            .map(|(path, file_path)| Download {
                path,
                file_path,
                file: None,
                hash: Sha256::new(),
                bytes: 0,
                started: now,
                stream: None,
                done: false,
            })
            .collect();
        Self {
            downloads,
            report,
            by_stream: HashMap::new(),
            conn: None,
            finished: false,
            sent_early: false,
            key_update_every: 0,
            received: 0,
            progress,
        }
    }

    /// Bytes received so far of each request, in the order given to [`GetApp::new`], updated as
    /// they arrive (a refused 0-RTT attempt starts them over from 0).
    pub fn progress(&self) -> Arc<[AtomicU64]> {
        Arc::clone(&self.progress)
    }

    /// Initiate a 1-RTT key update every `bytes` received (0: never), to test that servers follow
    /// (RFC 9001 §6); quinn-proto ignores one asked for while the previous one is under way.
    pub fn with_key_updates(mut self, bytes: u64) -> Self {
        self.key_update_every = bytes;
        self
    }

    fn open_requests(&mut self, conn: &mut ConnRef<'_>) {
        for (index, download) in self.downloads.iter_mut().enumerate() {
            if download.stream.is_some() || download.done {
                continue;
            }
            let Some(stream) = conn.open_bi() else { return };
            download.stream = Some(stream);
            download.started = Instant::now();
            match File::create(partial_path(&download.file_path)) {
                Ok(file) => download.file = Some(file),
                Err(e) => {
                    finish(
                        download,
                        &self.report,
                        Some(format!("cannot create {}: {e}", download.file_path.display())),
                    );
                    let _ = conn.reset(stream, VarInt::from_u32(0));
                    continue;
                }
            }
            let request = format!("GET {}\r\n", download.path);
            // The request is tiny: the initial stream window always takes it whole.
            let _ = conn.write(stream, request.as_bytes());
            let _ = conn.finish(stream);
            self.by_stream.insert(stream, index);
        }
    }

    fn close_when_done(&mut self, conn: &mut ConnRef<'_>) {
        // Answers to 0-RTT requests can all arrive with the server's first flight, in the turn
        // the handshake completes: a close then would go out instead of our Finished, and the
        // server would never see the handshake end. The owner closes it (stopping the node),
        // after this turn's packets left.
        if self.sent_early {
            return;
        }
        if !self.finished && self.downloads.iter().all(|d| d.done) {
            self.finished = true;
            conn.close(VarInt::from_u32(0), b"done");
        }
    }
}

fn finish(download: &mut Download, report: &mpsc::Sender<GetEvent>, error: Option<String>) {
    if download.done {
        return;
    }
    download.done = true;
    let mut error = error;
    if let Some(mut file) = download.file.take() {
        if let Err(e) = file.flush().and_then(|()| file.sync_all()) {
            error.get_or_insert(format!("writing {}: {e}", download.file_path.display()));
        }
        drop(file);
        // Only a complete download takes the file's name; a failed one leaves nothing behind.
        let partial = partial_path(&download.file_path);
        if error.is_none() {
            if let Err(e) = std::fs::rename(&partial, &download.file_path) {
                error = Some(format!("renaming {}: {e}", partial.display()));
            }
        }
        if error.is_some() {
            let _ = std::fs::remove_file(&partial);
        }
    }
    let hash = std::mem::take(&mut download.hash);
    let _ = report.send(GetEvent::File(Fetched {
        path: download.path.clone(),
        file: download.file_path.clone(),
        bytes: download.bytes,
        sha256: hex::encode(hash.finalize()),
        elapsed: download.started.elapsed(),
        error,
    }));
}

/// Where a download is written until it is complete.
fn partial_path(file: &std::path::Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

impl Application for GetApp {
    fn on_zero_rtt(&mut self, conn: &mut ConnRef<'_>) {
        self.conn = Some(conn.id());
        self.sent_early = true;
        self.open_requests(conn);
    }

    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        self.conn = Some(conn.id());
        let _ = self.report.send(GetEvent::Connected);
        if self.sent_early {
            let accepted = conn.quic().accepted_0rtt();
            tracing::info!(accepted, "0-RTT requests");
            if !accepted {
                // The server never saw them: they are sent again now, from scratch.
                self.by_stream.clear();
                for (download, progress) in self.downloads.iter_mut().zip(self.progress.iter()).filter(|(d, _)| !d.done)
                {
                    progress.store(0, Ordering::Relaxed);
                    download.stream = None;
                    download.file = None;
                    download.hash = Sha256::new();
                    download.bytes = 0;
                }
            }
        }
        self.open_requests(conn);
        self.close_when_done(conn);
    }

    fn on_streams_available(&mut self, conn: &mut ConnRef<'_>) {
        self.open_requests(conn);
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let Some(&index) = self.by_stream.get(&stream) else { return };
        let Some(download) = self.downloads.get_mut(index) else { return };
        let bytes_before = download.bytes;
        let mut write_error = None;
        let outcome = conn.read(stream, &mut |chunk: Bytes| {
            download.bytes += chunk.len() as u64;
            download.hash.update(&chunk);
            if let Some(file) = download.file.as_mut() {
                if let Err(e) = file.write_all(&chunk) {
                    write_error.get_or_insert(e);
                }
            }
        });
        if let Some(progress) = self.progress.get(index) {
            progress.store(download.bytes, Ordering::Relaxed);
        }
        let before = self.received;
        self.received = before + download.bytes.saturating_sub(bytes_before);
        if self.key_update_every > 0 && self.received / self.key_update_every > before / self.key_update_every {
            conn.quic().force_key_update();
        }
        match (outcome, write_error) {
            (_, Some(e)) => {
                let message = format!("writing {}: {e}", download.file_path.display());
                let _ = conn.stop(stream, VarInt::from_u32(0));
                finish(download, &self.report, Some(message));
            }
            (Ok(ReadOutcome::Finished), None) => finish(download, &self.report, None),
            (Ok(ReadOutcome::Pending), None) => {}
            (Err(e), None) => finish(download, &self.report, Some(format!("server refused the request: {e}"))),
        }
        self.close_when_done(conn);
    }

    fn on_closed(&mut self, _id: ConnId, _tag: u64, reason: &ConnectionError) {
        for download in &mut self.downloads {
            finish(download, &self.report, Some(format!("connection closed: {reason}")));
        }
        let _ = self.report.send(GetEvent::Ended);
    }

    fn on_connect_failed(&mut self, _tag: u64, error: &ant_quic_dataplane::quinn_proto::ConnectError) {
        for download in &mut self.downloads {
            finish(download, &self.report, Some(format!("cannot connect: {error}")));
        }
        let _ = self.report.send(GetEvent::Ended);
    }
}

/// Result of one bulk operation on `ant-quic/1`.
#[derive(Debug, Clone)]
pub struct BulkOutcome {
    /// Payload bytes moved.
    pub bytes: u64,
    /// From opening the stream to the server's last byte.
    pub elapsed: Duration,
    /// SHA-256 of the payload as seen by this side.
    pub local_sha256: [u8; 32],
    /// SHA-256 reported by the server (uploads with hashing).
    pub remote_sha256: Option<[u8; 32]>,
    /// Bytes the server reported receiving (uploads).
    pub remote_count: Option<u64>,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Path MTU (bytes of UDP payload per datagram) when the transfer ended.
    pub mtu: u16,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// What a bulk client sends.
#[derive(Debug, Clone)]
pub enum BulkPayload {
    /// Ask the server for this many bytes.
    Download(u64),
    /// Send these bytes (repeated `repeat` times) and ask for their count and hash.
    Upload {
        /// The data.
        data: Bytes,
        /// How many times to send it.
        repeat: u64,
        /// Whether the server hashes what it receives.
        hash: bool,
    },
}

/// Runs one bulk operation on the first connection of its core, then closes it.
pub struct BulkApp {
    payload: BulkPayload,
    hash_local: bool,
    report: mpsc::Sender<BulkOutcome>,
    stream: Option<StreamId>,
    started: Instant,
    /// The upload under way (uploads only).
    upload: Option<UploadWriter>,
    received: Vec<u8>,
    bytes: u64,
    hash: Sha256,
    cipher: String,
    mtu: u16,
    reported: bool,
}

impl std::fmt::Debug for BulkApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkApp").field("payload", &self.payload).finish_non_exhaustive()
    }
}

impl BulkApp {
    /// One transfer; hash what crosses the wire on this side when `hash_local` is set.
    pub fn new(payload: BulkPayload, hash_local: bool, report: mpsc::Sender<BulkOutcome>) -> Self {
        Self {
            payload,
            hash_local,
            report,
            stream: None,
            started: Instant::now(),
            upload: None,
            received: Vec::new(),
            bytes: 0,
            hash: Sha256::new(),
            cipher: String::new(),
            mtu: 0,
            reported: false,
        }
    }

    fn send_more(&mut self, conn: &mut ConnRef<'_>) {
        let (Some(stream), Some(upload)) = (self.stream, self.upload.as_mut()) else { return };
        let (hash_local, hash) = (self.hash_local, &mut self.hash);
        upload.write(conn, stream, |chunk| {
            if hash_local {
                hash.update(chunk);
            }
        });
    }

    fn report(&mut self, error: Option<String>) {
        if self.reported {
            return;
        }
        self.reported = true;
        let hash = std::mem::take(&mut self.hash);
        let (remote_count, remote_sha256) = match self.payload {
            BulkPayload::Upload { .. } => {
                let count = self.received.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                let sha = self.received.get(8..40).and_then(|b| b.try_into().ok());
                (count, sha)
            }
            BulkPayload::Download(_) => (None, None),
        };
        let bytes = match self.payload {
            BulkPayload::Download(_) => self.bytes,
            BulkPayload::Upload { .. } => self.upload.as_ref().map_or(0, UploadWriter::sent),
        };
        let _ = self.report.send(BulkOutcome {
            bytes,
            elapsed: self.started.elapsed(),
            local_sha256: hash.finalize().into(),
            remote_sha256,
            remote_count,
            cipher: self.cipher.clone(),
            mtu: self.mtu,
            error,
        });
    }
}

impl Application for BulkApp {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        if self.stream.is_some() {
            return;
        }
        self.cipher = crate::tls::preferred_cipher_suite();
        let Some(stream) = conn.open_bi() else {
            self.report(Some("no stream available".into()));
            return;
        };
        self.stream = Some(stream);
        self.started = Instant::now();
        let op = match &self.payload {
            BulkPayload::Download(len) => Op::Download(*len),
            BulkPayload::Upload { hash, .. } => Op::Upload { hash: *hash },
        };
        let _ = conn.write(stream, &protocol::encode_op(op));
        match self.payload {
            BulkPayload::Download(_) => {
                let _ = conn.finish(stream);
            }
            BulkPayload::Upload { ref data, repeat, .. } => {
                self.upload = Some(UploadWriter::new(data.clone(), data.len() as u64 * repeat));
                self.send_more(conn);
            }
        }
    }

    fn on_writable(&mut self, conn: &mut ConnRef<'_>, _stream: StreamId) {
        self.send_more(conn);
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        if Some(stream) != self.stream {
            return;
        }
        let download = matches!(self.payload, BulkPayload::Download(_));
        let (hash_local, hash, bytes, received) =
            (self.hash_local, &mut self.hash, &mut self.bytes, &mut self.received);
        let outcome = conn.read(stream, &mut |chunk: Bytes| {
            if download {
                *bytes += chunk.len() as u64;
                if hash_local {
                    hash.update(&chunk);
                }
            } else if received.len() < 64 {
                received.extend_from_slice(&chunk);
            }
        });
        match outcome {
            Ok(ReadOutcome::Finished) => {
                self.mtu = conn.quic().current_mtu();
                self.report(None);
                conn.close(VarInt::from_u32(0), b"done");
            }
            Ok(ReadOutcome::Pending) => {}
            Err(e) => {
                self.report(Some(format!("stream failed: {e}")));
                conn.close(VarInt::from_u32(1), b"stream failed");
            }
        }
    }

    fn on_closed(&mut self, _id: ConnId, _tag: u64, reason: &ConnectionError) {
        self.report(Some(format!("connection closed before the transfer ended: {reason}")));
    }

    fn on_connect_failed(&mut self, _tag: u64, error: &ant_quic_dataplane::quinn_proto::ConnectError) {
        self.report(Some(format!("cannot connect: {error}")));
    }
}

/// Writes `total` bytes on a stream as repeats of one block (the last one cut short), then FIN.
/// What flow control does not take now is written on the next call.
#[derive(Debug)]
pub(crate) struct UploadWriter {
    block: Bytes,
    total: u64,
    sent: u64,
    /// Queued but not yet accepted by flow control.
    pending: Option<Bytes>,
}

impl UploadWriter {
    /// `total` bytes of `block` repeated (none when `block` is empty).
    pub(crate) fn new(block: Bytes, total: u64) -> Self {
        let total = if block.is_empty() { 0 } else { total };
        Self { block, total, sent: 0, pending: None }
    }

    /// Bytes handed to the stream so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Writes as much as flow control takes, and FIN once all was written; `on_chunk` sees each
    /// chunk once, when it is queued.
    pub(crate) fn write(&mut self, conn: &mut ConnRef<'_>, stream: StreamId, mut on_chunk: impl FnMut(&[u8])) {
        loop {
            if self.pending.is_none() {
                if self.sent >= self.total {
                    let _ = conn.finish(stream);
                    return;
                }
                let len = usize::try_from(self.total - self.sent).unwrap_or(usize::MAX).min(self.block.len());
                let chunk = self.block.slice(..len);
                on_chunk(&chunk);
                self.sent += len as u64;
                self.pending = Some(chunk);
            }
            let Some(chunk) = self.pending.as_mut() else { return };
            let mut chunks = [chunk.clone()];
            match conn.quic().send_stream(stream).write_chunks(&mut chunks) {
                Ok(written) if written.bytes == chunk.len() => self.pending = None,
                Ok(written) => {
                    let _ = chunk.split_to(written.bytes);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}
