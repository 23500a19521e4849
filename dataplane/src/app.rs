//! The application interface: code that runs on a core, beside the connections it serves.
//!
//! Every connection lives on one core, and so does the application code that reads and writes its
//! streams: an [`Application`] is created per core by an [`AppFactory`] and called back on that
//! core's thread, without locks, as the connection makes progress (as msquic calls back on its
//! worker threads).
//!
//! Other threads reach it with [`crate::Messenger::send_message`]. The message type `M` is the
//! application's own (an enum of its requests, `()` when it takes none): it travels by value
//! in the core's command queue, in order with the node's own commands, so delivering one costs
//! no allocation and no downcast, and a message of the wrong type does not compile. Only the
//! [`crate::Node`] and its [`crate::Messenger`] carry `M`; the [`crate::NodeHandle`] that
//! monitoring and control code holds does not, so it works for any application.

use quinn_proto::{ConnectionError, StreamId, VarInt};

use crate::connection::{ConnId, ConnRef, Connections};

/// Per-core application code, taking messages of type `M` from other threads. Every method has a
/// default that does nothing.
pub trait Application<M = ()> {
    /// The handshake completed (both for connections we opened and ones we accepted).
    fn on_connected(&mut self, _conn: &mut ConnRef<'_>) {}
    /// A connection we opened resumes a session whose server allows early data: streams opened
    /// now travel as 0-RTT data, before the handshake completes. If the server refuses them,
    /// they are forgotten (stream IDs start again) and `on_connected` follows with
    /// `conn.quic().accepted_0rtt()` false: open them again there.
    fn on_zero_rtt(&mut self, _conn: &mut ConnRef<'_>) {}
    /// The peer opened a stream.
    fn on_stream_opened(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// Data (or the end of the stream) can be read from `stream`. Called once per stream each
    /// time the core drives the connection, however many packets of the batch it just read
    /// carried the stream: read what you want now; the next call comes when more data arrives.
    fn on_readable(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// `stream` can take more data after a write was blocked by flow control.
    fn on_writable(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// Everything written to `stream`, and its end, was acknowledged by the peer.
    fn on_finished(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId) {}
    /// The peer asked us to stop sending on `stream`.
    fn on_stopped(&mut self, _conn: &mut ConnRef<'_>, _stream: StreamId, _code: VarInt) {}
    /// The connection ended (closed by either side, timed out, or failed its handshake).
    fn on_closed(&mut self, _id: ConnId, _tag: u64, _reason: &ConnectionError) {}
    /// A connection requested with `NodeHandle::connect` could not even be started.
    fn on_connect_failed(&mut self, _tag: u64, _error: &quinn_proto::ConnectError) {}
    /// Unreliable datagrams arrived (RFC 9221): take them with `conn.quic().datagrams().recv()`.
    /// Those not taken wait in quinn-proto's bounded receive buffer, oldest dropped first.
    fn on_datagram(&mut self, _conn: &mut ConnRef<'_>) {}
    /// The peer allows more streams to be opened (after `open_bi`/`open_uni` returned `None`).
    fn on_streams_available(&mut self, _conn: &mut ConnRef<'_>) {}
    /// A message sent with `Messenger::send_message`, with this core's connections at hand.
    fn on_message(&mut self, _conns: &mut Connections<'_>, _message: M) {}
}

/// Creates one [`Application`] per core, on that core's thread.
pub trait AppFactory<M = ()>: Send + Sync + 'static {
    /// The application for `core`.
    fn create(&self, core: usize) -> Box<dyn Application<M>>;
}

impl<M, F> AppFactory<M> for F
where
    F: Fn(usize) -> Box<dyn Application<M>> + Send + Sync + 'static,
{
    fn create(&self, core: usize) -> Box<dyn Application<M>> {
        self(core)
    }
}
