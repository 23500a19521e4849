//! How tasks reach a connection's core: [`ConnHandle`] (shared by a connection's handles and
//! streams; the last one dropped closes it), commands sent with retry while the core's queue is
//! full, and replies awaited with undo on cancellation ([`Awaited`]).

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use ant_quic_dataplane::quinn_proto::VarInt;
use ant_quic_dataplane::{Messenger, NodeError};
use bytes::Bytes;

use super::bridge::Command;
use super::shared::{ConnShared, Reply};
use super::Error;

/// A command the core's queue did not take.
#[derive(Debug)]
pub(crate) struct SendFailed {
    pub(crate) busy: bool,
}

impl SendFailed {
    /// Full queue: poll again soon (the core drains it within a loop turn). Anything else: the
    /// endpoint has stopped.
    pub(crate) fn poll(self, cx: &Context<'_>) -> Poll<Result<(), Error>> {
        if self.busy {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(Err(Error::EndpointClosed))
        }
    }
}

/// Send `command` to `core`.
pub(crate) fn try_send(messenger: &Messenger<Command>, core: usize, command: Command) -> Result<(), SendFailed> {
    messenger.send_message(core, command).map_err(|e| SendFailed { busy: matches!(e, NodeError::Busy(_)) })
}

/// What every handle of one connection shares: dropping the last one closes it.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) messenger: Messenger<Command>,
}

impl ConnHandle {
    pub(crate) fn try_send(&self, command: Command) -> Result<(), SendFailed> {
        try_send(&self.messenger, self.shared.id.core, command)
    }

    pub(crate) fn poll_send(&self, cx: &Context<'_>, command: impl FnOnce() -> Command) -> Poll<Result<(), Error>> {
        match self.try_send(command()) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(failed) => failed.poll(cx),
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        if self.shared.closed.get().is_some() {
            return;
        }
        self.shared.dropped.store(true, Ordering::Release);
        let command =
            Command::Close { conn: Arc::clone(&self.shared), code: VarInt::from_u32(0), reason: Bytes::new() };
        let _ = self.try_send(command);
    }
}

/// Send the command `make` builds to `core`, polling again while its queue is full.
pub(crate) async fn send(messenger: &Messenger<Command>, core: usize, make: impl Fn() -> Command) -> Result<(), Error> {
    poll_fn(|cx| match try_send(messenger, core, make()) {
        Ok(()) => Poll::Ready(Ok(())),
        Err(failed) => failed.poll(cx),
    })
    .await
}

/// A reply a task waits for. Dropped before the reply is taken, the request is undone by `undo`
/// (here, or by the core when the reply comes later).
pub(crate) struct Awaited<T, U: FnMut(T)> {
    pub(crate) reply: Arc<Reply<T>>,
    undo: Option<U>,
}

impl<T, U: FnMut(T)> Awaited<T, U> {
    pub(crate) fn new(undo: U) -> Self {
        Self { reply: Arc::new(Reply::new()), undo: Some(undo) }
    }

    pub(crate) async fn wait(mut self) -> T {
        let value = poll_fn(|cx| self.reply.poll_take(cx).map_or(Poll::Pending, Poll::Ready)).await;
        self.undo = None;
        value
    }
}

impl<T, U: FnMut(T)> Drop for Awaited<T, U> {
    fn drop(&mut self) {
        if let Some(mut undo) = self.undo.take() {
            if let Some(value) = self.reply.abandon() {
                undo(value);
            }
        }
    }
}

/// Ask the core for something and wait for its reply ([`Awaited`]).
pub(crate) async fn ask<T>(
    messenger: &Messenger<Command>,
    core: usize,
    command: impl Fn(Arc<Reply<T>>) -> Command,
    undo: impl FnMut(T),
) -> Result<T, Error> {
    let awaited = Awaited::new(undo);
    send(messenger, core, || command(Arc::clone(&awaited.reply))).await?;
    Ok(awaited.wait().await)
}
