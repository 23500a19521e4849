//! Paths of connections to peers reached by peer ID: the state a core keeps current from the NAT
//! driver's route changes ([`crate::nat::link::CoreRequest::Route`]), and the [`PathEvents`]
//! tasks read it from.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use ant_quic_dataplane::relay::PathRoute;

use super::shared::{ConnShared, WakerList};

/// How a connection reaches its peer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathKind {
    /// Straight to the peer's address.
    Direct,
    /// Through a relay (a bootstrap forwarding the end-to-end encrypted packets).
    Relayed {
        /// The relay's address.
        relay: SocketAddr,
    },
}

/// A connection's current path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Path {
    /// Direct or relayed.
    pub kind: PathKind,
    /// Where the peer is reached: its address on a direct path (for a connection that moved off
    /// a relay, the address it moved to); through a relay, the connection's own remote address
    /// (a local alias the relay's frames arrive from).
    pub remote: SocketAddr,
}

/// The kind of a path, and where it leads when that is not the connection's remote address.
type PathNow = (PathKind, Option<SocketAddr>);

/// A connection's path as its core last saw it, with a version that moves on every change.
#[derive(Debug)]
pub(crate) struct PathState {
    now: Mutex<PathNow>,
    version: AtomicU64,
    waiters: WakerList,
}

impl Default for PathState {
    fn default() -> Self {
        Self { now: Mutex::new((PathKind::Direct, None)), version: AtomicU64::new(0), waiters: WakerList::default() }
    }
}

impl PathState {
    /// The path of the connection whose remote address is `remote`.
    pub(crate) fn path(&self, remote: SocketAddr) -> Path {
        let (kind, to) = self.now.lock().map(|now| *now).unwrap_or((PathKind::Direct, None));
        Path { kind, remote: to.unwrap_or(remote) }
    }

    /// Core side: the path is `now` from here on; tasks waiting for a change are woken if it
    /// changed.
    pub(crate) fn set(&self, now: PathNow) {
        let changed = match self.now.lock() {
            Ok(mut current) => std::mem::replace(&mut *current, now) != now,
            Err(_) => false,
        };
        if changed {
            self.version.fetch_add(1, Ordering::SeqCst);
            self.waiters.wake_all();
        }
    }

    /// Wake the tasks waiting for a change: the connection ended.
    pub(crate) fn ended(&self) {
        self.waiters.wake_all();
    }
}

/// What a route says about the connections whose remote address is its alias (none: a
/// connection straight to its remote address).
fn path_of(route: Option<PathRoute>) -> PathNow {
    match route {
        Some(PathRoute::Relay { relay, .. }) => (PathKind::Relayed { relay }, None),
        Some(PathRoute::Direct(address)) => (PathKind::Direct, Some(address)),
        None => (PathKind::Direct, None),
    }
}

/// A core's path aliases (the remote addresses of relayed connections) and what they route by.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    routes: HashMap<SocketAddr, PathRoute>,
}

impl Routes {
    /// The path of a connection to `remote`: an alias's route, or straight to it.
    pub(crate) fn path(&self, remote: SocketAddr) -> PathNow {
        path_of(self.routes.get(&remote).copied())
    }

    /// `alias` routes by `route` now (`None`: gone); returns the new path of its connections
    /// (`None` when the alias is gone: its connections have nowhere to go, and end).
    pub(crate) fn update(&mut self, alias: SocketAddr, route: Option<PathRoute>) -> Option<PathNow> {
        match route {
            Some(route) => {
                self.routes.insert(alias, route);
                Some(path_of(Some(route)))
            }
            None => {
                self.routes.remove(&alias);
                None
            }
        }
    }
}

/// The changes of one connection's path, in order (relayed, then direct after an upgrade), from
/// [`super::Connection::path_events`].
#[derive(Debug)]
pub struct PathEvents {
    conn: Arc<ConnShared>,
    seen: u64,
}

impl PathEvents {
    pub(crate) fn new(conn: Arc<ConnShared>) -> Self {
        let seen = conn.path.version.load(Ordering::SeqCst);
        Self { conn, seen }
    }

    /// The path once it changes from the one last returned (or current when this was made);
    /// `None` once the connection has ended. Changes in between are skipped: the latest counts.
    pub async fn next(&mut self) -> Option<Path> {
        poll_fn(|cx| {
            for attempt in 0..2 {
                let version = self.conn.path.version.load(Ordering::SeqCst);
                if version != self.seen {
                    self.seen = version;
                    return Poll::Ready(Some(self.conn.path.path(self.conn.remote)));
                }
                if self.conn.closed.get().is_some() {
                    return Poll::Ready(None);
                }
                if attempt == 0 {
                    self.conn.path.waiters.register(cx);
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Error;
    use ant_quic_dataplane::ConnId;

    #[test]
    fn a_relayed_connection_reports_its_move_to_a_direct_path_then_its_end() {
        let alias: SocketAddr = "240.0.0.1:1".parse().unwrap();
        let relay: SocketAddr = "192.0.2.1:9000".parse().unwrap();
        let direct: SocketAddr = "203.0.113.5:5000".parse().unwrap();
        let mut routes = Routes::default();
        assert_eq!(routes.path(direct), (PathKind::Direct, None), "an address that is no alias is direct");
        routes.update(alias, Some(PathRoute::Relay { relay, channel: 7 }));
        let conn = Arc::new(ConnShared::new(ConnId { core: 0, index: 0 }, alias, None, None));
        conn.path.set(routes.path(alias));
        assert_eq!(conn.path.path(alias), Path { kind: PathKind::Relayed { relay }, remote: alias });

        let mut events = PathEvents::new(Arc::clone(&conn));
        conn.path.set(routes.update(alias, Some(PathRoute::Direct(direct))).unwrap());
        let next = smol::block_on(events.next());
        assert_eq!(next, Some(Path { kind: PathKind::Direct, remote: direct }), "moved to the peer's address");

        // The same path again is no event; the connection's end is.
        conn.path.set(routes.path(alias));
        let _ = conn.closed.set(Error::EndpointClosed);
        conn.path.ended();
        assert_eq!(smol::block_on(events.next()), None);
    }
}
