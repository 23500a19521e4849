//! [`SendStream`] and [`RecvStream`]: a QUIC stream's two directions as async byte streams.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use ant_quic_dataplane::quinn_proto::VarInt;
use bytes::Bytes;

use super::bridge::Command;
use super::handle::ConnHandle;
use super::shared::{StreamShared, READ_RESUME_BELOW, STREAM_BUDGET};
use super::Error;

/// A reader gives back budget at least every this many bytes it took, within a large batch.
const RELEASE_EVERY: usize = 32 * 1024;

/// The sending half of a stream. Dropping it finishes the stream (what was written is still
/// delivered); [`SendStream::reset`] abandons it instead.
#[derive(Debug)]
pub struct SendStream {
    conn: Arc<ConnHandle>,
    stream: Arc<StreamShared>,
    /// Finish or reset sent to the core: no more writes.
    closed: bool,
}

impl SendStream {
    pub(crate) fn new(conn: Arc<ConnHandle>, stream: Arc<StreamShared>) -> Self {
        Self { conn, stream, closed: false }
    }

    /// The stream's QUIC ID.
    pub fn id(&self) -> u64 {
        self.stream.id.into()
    }

    /// Write some of `buf`: returns how many bytes were taken (at least one, unless `buf` is
    /// empty). Waits while [`STREAM_BUDGET`] bytes already wait for QUIC flow control.
    ///
    /// Cancellation safe: bytes are taken only in the poll that returns them as written, so a
    /// dropped `write` future wrote nothing it did not report.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_write_inner(cx, buf)).await
    }

    /// Write all of `buf`. Not cancellation safe in the sense that a dropped future may have
    /// written a prefix of `buf` (as with any `write_all`); use [`SendStream::write`] to know how much.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let written = self.write(buf).await?;
            buf = buf.get(written..).unwrap_or_default();
        }
        Ok(())
    }

    /// Write all of `data` without copying it: the stream keeps references to `data` until
    /// QUIC no longer needs them. Like [`SendStream::write_all`], a dropped future may have
    /// written a prefix.
    pub async fn write_chunk(&mut self, mut data: Bytes) -> Result<(), Error> {
        self.write_all_chunks(std::slice::from_mut(&mut data)).await
    }

    /// Write every chunk of `chunks` in order without copying them, emptying each as the stream
    /// takes it (quinn's `write_all_chunks`). A dropped future leaves exactly the bytes it did
    /// not write in `chunks`: call again with the same slice to go on.
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), Error> {
        for chunk in chunks.iter_mut() {
            while !chunk.is_empty() {
                let written = poll_fn(|cx| self.poll_write_with(cx, chunk.len(), |take| chunk.slice(..take))).await?;
                let _ = chunk.split_to(written);
            }
        }
        Ok(())
    }

    /// Mark the end of the stream: everything written before is delivered, then the end.
    /// Returns once the core has the request; the bytes are still on their way.
    pub async fn finish(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_finish(cx)).await
    }

    /// Abandon the stream with an application error `code`: what was not yet sent never is.
    pub async fn reset(&mut self, code: u32) -> Result<(), Error> {
        if self.closed {
            return Err(Error::ClosedStream);
        }
        let (conn, stream) = (Arc::clone(&self.conn.shared), Arc::clone(&self.stream));
        let code = VarInt::from_u32(code);
        poll_fn(|cx| {
            self.conn.poll_send(cx, || Command::Reset { conn: Arc::clone(&conn), stream: Arc::clone(&stream), code })
        })
        .await?;
        self.closed = true;
        Ok(())
    }

    fn check(&self) -> Result<(), Error> {
        if self.closed {
            return Err(Error::ClosedStream);
        }
        if let Some(code) = self.stream.stop_code() {
            return Err(Error::Stopped(code));
        }
        match self.conn.shared.error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize, Error>> {
        self.poll_write_with(cx, buf.len(), |take| Bytes::copy_from_slice(buf.get(..take).unwrap_or_default()))
    }

    /// Take up to `len` bytes as `data(take)` makes them, within the budget.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        data: impl FnOnce(usize) -> Bytes,
    ) -> Poll<Result<usize, Error>> {
        self.check()?;
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut used = self.stream.in_flight.load(Ordering::Acquire);
        if used >= STREAM_BUDGET {
            self.stream.write_waker.register(cx.waker());
            self.check()?;
            used = self.stream.in_flight.load(Ordering::Acquire);
            if used >= STREAM_BUDGET {
                return Poll::Pending;
            }
        }
        let take = len.min(STREAM_BUDGET - used);
        let data = data(take);
        // Counted before the core can see it, so the core's decrement never goes below zero.
        self.stream.in_flight.fetch_add(take, Ordering::AcqRel);
        let (conn, stream) = (&self.conn.shared, &self.stream);
        let command = Command::Write { conn: Arc::clone(conn), stream: Arc::clone(stream), data };
        match self.conn.try_send(command) {
            Ok(()) => Poll::Ready(Ok(take)),
            Err(retry) => {
                self.stream.in_flight.fetch_sub(take, Ordering::AcqRel);
                retry.poll(cx).map(|result| result.map(|()| 0))
            }
        }
    }

    /// Ready once the core has handed every written byte to QUIC.
    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.stream.in_flight.load(Ordering::Acquire) == 0 {
            return Poll::Ready(Ok(()));
        }
        self.check()?;
        self.stream.write_waker.register(cx.waker());
        if self.stream.in_flight.load(Ordering::Acquire) == 0 {
            return Poll::Ready(Ok(()));
        }
        self.check()?;
        Poll::Pending
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.closed {
            return Poll::Ready(Err(Error::ClosedStream));
        }
        let (conn, stream) = (Arc::clone(&self.conn.shared), Arc::clone(&self.stream));
        let sent = self.conn.poll_send(cx, || Command::Finish { conn: Arc::clone(&conn), stream: Arc::clone(&stream) });
        if let Poll::Ready(Ok(())) = sent {
            self.closed = true;
        }
        sent
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // With the core's queue full, the flags tell it when it next touches the connection.
        let command = Command::Finish { conn: Arc::clone(&self.conn.shared), stream: Arc::clone(&self.stream) };
        if self.conn.try_send(command).is_err() {
            self.stream.send_dropped.store(true, Ordering::Release);
            self.conn.shared.streams_dropped.store(true, Ordering::Release);
        }
    }
}

impl futures_io::AsyncWrite for SendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_flush_inner(cx).map_err(Into::into)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        this.poll_finish(cx).map_err(Into::into)
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncWrite for SendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(self, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(self, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_close(self, cx)
    }
}

/// The receiving half of a stream. Dropping it before the end asks the peer to stop sending
/// (STOP_SENDING with code 0).
#[derive(Debug)]
pub struct RecvStream {
    conn: Arc<ConnHandle>,
    stream: Arc<StreamShared>,
    /// The batch taken from the queue, its chunks not yet handed out.
    batch: std::vec::IntoIter<Bytes>,
    /// The chunk being handed out.
    current: Bytes,
    /// Bytes handed out and not yet taken off `stream.buffered` (done once per batch or
    /// [`RELEASE_EVERY`] bytes, not per chunk).
    unreported: usize,
    /// The end was read, or we stopped: nothing more comes.
    done: bool,
    /// We stopped the stream: reading it is an error.
    stopped: bool,
    /// A ReadMore the core's full queue refused: sent again at the next poll.
    nudge_owed: bool,
}

impl RecvStream {
    pub(crate) fn new(conn: Arc<ConnHandle>, stream: Arc<StreamShared>) -> Self {
        Self {
            conn,
            stream,
            batch: Vec::new().into_iter(),
            current: Bytes::new(),
            unreported: 0,
            done: false,
            stopped: false,
            nudge_owed: false,
        }
    }

    /// The stream's QUIC ID.
    pub fn id(&self) -> u64 {
        self.stream.id.into()
    }

    /// Read into `buf`: how many bytes, 0 at the end of the stream (or for an empty `buf`).
    ///
    /// Cancellation safe: bytes leave the stream only in the poll that returns them.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        poll_fn(|cx| self.poll_read_inner(cx, buf)).await
    }

    /// The next bytes of the stream, at most `max`, without copying them; `None` at the end of
    /// the stream. Cancellation safe, as [`RecvStream::read`].
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| self.poll_chunk(cx, max)).await
    }

    /// Fill `chunks` with the next chunks of the stream, as many as are already here (waiting
    /// only while none is), without copying them: how many, or `None` at the end of the stream
    /// (`Some(0)` for an empty `chunks`). One await for a whole batch of packets, where
    /// [`RecvStream::read_chunk`] takes one. Cancellation safe, as [`RecvStream::read`].
    pub async fn read_chunks(&mut self, chunks: &mut [Bytes]) -> Result<Option<usize>, Error> {
        poll_fn(|cx| self.poll_chunks(cx, chunks)).await
    }

    /// Read to the end of the stream, refusing a stream longer than `limit` bytes (what was read
    /// is then lost: stop the stream or drop it).
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = self.read(&mut buf).await?;
            if read == 0 {
                return Ok(out);
            }
            if out.len() + read > limit {
                return Err(Error::Invalid(format!("the stream is longer than the limit of {limit} bytes")));
            }
            out.extend_from_slice(buf.get(..read).unwrap_or_default());
        }
    }

    /// Ask the peer to stop sending, with application error `code`; what arrives later is dropped.
    pub async fn stop(&mut self, code: u32) -> Result<(), Error> {
        if self.done {
            return Err(Error::ClosedStream);
        }
        let (conn, stream) = (Arc::clone(&self.conn.shared), Arc::clone(&self.stream));
        let code = VarInt::from_u32(code);
        poll_fn(|cx| {
            self.conn.poll_send(cx, || Command::Stop { conn: Arc::clone(&conn), stream: Arc::clone(&stream), code })
        })
        .await?;
        self.done = true;
        self.stopped = true;
        Ok(())
    }

    /// What was handed out leaves the budget: tell a core that stopped reading at the budget,
    /// once half of it is free (the core looks again itself before it pauses, so none is missed).
    fn release(&mut self) {
        let consumed = std::mem::take(&mut self.unreported);
        let left = match consumed {
            0 => self.stream.buffered.load(Ordering::SeqCst),
            _ => self.stream.buffered.fetch_sub(consumed, Ordering::SeqCst).saturating_sub(consumed),
        };
        if left <= READ_RESUME_BELOW
            && self.stream.batches.len() <= self.stream.batches.capacity() / 2
            && self.stream.read_paused.load(Ordering::SeqCst)
            && self.stream.read_paused.swap(false, Ordering::SeqCst)
        {
            self.nudge_owed = true;
        }
        if self.nudge_owed {
            let command = Command::ReadMore { conn: Arc::clone(&self.conn.shared), stream: Arc::clone(&self.stream) };
            self.nudge_owed = self.conn.try_send(command).is_err();
        }
    }

    /// The next chunk already here; everything handed out before is released first when a new
    /// batch is taken, so nothing is held back when this finds none.
    fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.batch.find(|chunk| !chunk.is_empty()) {
                return Some(chunk);
            }
            self.release();
            self.batch = self.stream.batches.pop()?.into_iter();
        }
    }

    /// At most `max` (> 0) bytes already here, without waiting.
    fn take_ready(&mut self, max: usize) -> Option<Bytes> {
        if self.current.is_empty() {
            self.current = self.next_chunk()?;
        }
        let chunk = self.current.split_to(max.min(self.current.len()));
        self.unreported += chunk.len();
        if self.unreported >= RELEASE_EVERY {
            self.release();
        }
        Some(chunk)
    }

    /// Fill `buf` with what is here, waiting only while nothing is.
    fn poll_read_inner(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Result<usize, Error>> {
        let first = std::task::ready!(self.poll_chunk(cx, buf.len()))?.unwrap_or_default();
        let mut filled = first.len();
        if let Some(out) = buf.get_mut(..filled) {
            out.copy_from_slice(&first);
        }
        while filled > 0 && filled < buf.len() {
            let Some(chunk) = self.take_ready(buf.len() - filled) else { break };
            if let Some(out) = buf.get_mut(filled..filled + chunk.len()) {
                out.copy_from_slice(&chunk);
            }
            filled += chunk.len();
        }
        Poll::Ready(Ok(filled))
    }

    /// The first slot of `chunks` filled after waiting if need be, the others with what is here.
    fn poll_chunks(&mut self, cx: &mut Context<'_>, chunks: &mut [Bytes]) -> Poll<Result<Option<usize>, Error>> {
        let Some((first, rest)) = chunks.split_first_mut() else { return Poll::Ready(Ok(Some(0))) };
        match std::task::ready!(self.poll_chunk(cx, usize::MAX))? {
            Some(chunk) => *first = chunk,
            None => return Poll::Ready(Ok(None)),
        }
        let mut filled = 1;
        for slot in rest {
            let Some(chunk) = self.take_ready(usize::MAX) else { break };
            *slot = chunk;
            filled += 1;
        }
        Poll::Ready(Ok(Some(filled)))
    }

    /// The next at most `max` bytes (at least one for `max` > 0), or `None` at the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Result<Option<Bytes>, Error>> {
        if self.stopped {
            return Poll::Ready(Err(Error::ClosedStream));
        }
        if self.nudge_owed {
            self.release();
        }
        if max == 0 {
            return Poll::Ready(Ok(Some(Bytes::new())));
        }
        for attempt in 0..2 {
            if let Some(chunk) = self.take_ready(max) {
                return Poll::Ready(Ok(Some(chunk)));
            }
            if self.done {
                return Poll::Ready(Ok(None));
            }
            // Every batch is queued before the end, the reset or the close is flagged: after
            // seeing a flag, the queue is looked at once more.
            if self.stream.fin.load(Ordering::Acquire) {
                if self.stream.batches.is_empty() {
                    self.done = true;
                    return Poll::Ready(Ok(None));
                }
                continue;
            }
            if let Some(code) = self.stream.reset_code() {
                return Poll::Ready(Err(Error::Reset(code)));
            }
            if let Some(error) = self.conn.shared.error() {
                if self.stream.batches.is_empty() {
                    return Poll::Ready(Err(error));
                }
                continue;
            }
            if attempt == 0 {
                self.stream.read_waker.register(cx.waker());
            }
        }
        if self.nudge_owed {
            // The core's queue was full: try again soon rather than wait for data that the
            // core will not read until it hears from us.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let command = Command::Stop {
            conn: Arc::clone(&self.conn.shared),
            stream: Arc::clone(&self.stream),
            code: VarInt::from_u32(0),
        };
        // With the core's queue full, the flags tell it when it next touches the connection.
        if self.conn.try_send(command).is_err() {
            self.stream.recv_dropped.store(true, Ordering::Release);
            self.conn.shared.streams_dropped.store(true, Ordering::Release);
        }
    }
}

impl futures_io::AsyncRead for RecvStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().poll_read_inner(cx, buf).map_err(Into::into)
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = std::task::ready!(self.get_mut().poll_read_inner(cx, buf.initialize_unfilled()))?;
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}
