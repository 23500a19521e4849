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
    /// The peer's address as this connection knows it.
    pub remote: SocketAddr,
}

/// A connection's path as its core last saw it, with a version that moves on every change.
#[derive(Debug)]
pub(crate) struct PathState {
    kind: Mutex<PathKind>,
    version: AtomicU64,
    waiters: WakerList,
}

impl Default for PathState {
    fn default() -> Self {
        Self { kind: Mutex::new(PathKind::Direct), version: AtomicU64::new(0), waiters: WakerList::default() }
    }
}

impl PathState {
    pub(crate) fn kind(&self) -> PathKind {
        self.kind.lock().map(|k| *k).unwrap_or(PathKind::Direct)
    }

    /// Core side: the path is `kind` now; tasks waiting for a change are woken if it changed.
    pub(crate) fn set(&self, kind: PathKind) {
        let changed = match self.kind.lock() {
            Ok(mut current) => std::mem::replace(&mut *current, kind) != kind,
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

/// What a route says about the connections whose remote address is its alias.
pub(crate) fn kind_of(route: PathRoute) -> PathKind {
    match route {
        PathRoute::Relay { relay, .. } => PathKind::Relayed { relay },
        PathRoute::Direct(_) => PathKind::Direct,
    }
}

/// A core's path aliases (the remote addresses of relayed connections) and what they route by.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    kinds: HashMap<SocketAddr, PathKind>,
}

impl Routes {
    /// The path of a connection to `remote`: an alias's route, or straight to it.
    pub(crate) fn kind(&self, remote: SocketAddr) -> PathKind {
        self.kinds.get(&remote).copied().unwrap_or(PathKind::Direct)
    }

    /// `alias` routes by `route` now (`None`: gone); returns the new kind, for its connections.
    pub(crate) fn update(&mut self, alias: SocketAddr, route: Option<PathRoute>) -> Option<PathKind> {
        match route {
            Some(route) => {
                let kind = kind_of(route);
                self.kinds.insert(alias, kind);
                Some(kind)
            }
            None => {
                self.kinds.remove(&alias);
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
                    return Poll::Ready(Some(Path { kind: self.conn.path.kind(), remote: self.conn.remote }));
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
        let alias: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let relay: SocketAddr = "192.0.2.1:9000".parse().unwrap();
        let mut routes = Routes::default();
        assert_eq!(routes.kind(alias), PathKind::Direct, "an address that is no alias is direct");
        routes.update(alias, Some(PathRoute::Relay { relay, channel: 7 }));
        let conn = Arc::new(ConnShared::new(ConnId { core: 0, index: 0 }, alias, None, None));
        conn.path.set(routes.kind(alias));
        assert_eq!(conn.path.kind(), PathKind::Relayed { relay });

        let mut events = PathEvents::new(Arc::clone(&conn));
        let direct = routes.update(alias, Some(PathRoute::Direct("203.0.113.5:5000".parse().unwrap())));
        conn.path.set(direct.unwrap());
        let next = smol::block_on(events.next());
        assert_eq!(next, Some(Path { kind: PathKind::Direct, remote: alias }));

        // The same path again is no event; the connection's end is.
        conn.path.set(PathKind::Direct);
        let _ = conn.closed.set(Error::EndpointClosed);
        conn.path.ended();
        assert_eq!(smol::block_on(events.next()), None);
    }
}
