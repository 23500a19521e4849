//! Peers reached by peer ID through the bootstraps: the endpoint's NAT traversal (the node's
//! driver, [`crate::nat::Nat`], run for the endpoint's cores), [`Endpoint::connect_peer`], and
//! what the bootstraps see of this endpoint.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ant_quic_control::nat::agent::{BootstrapSpec, PeerConnection};
use ant_quic_control::nat::coordinator::CoordinatorConfig;
use ant_quic_control::nat::traversal::TraversalConfig;
use ant_quic_dataplane::Node;
use crossbeam_channel::Receiver;

use super::bridge::Command;
use super::handle::{ask, Awaited};
use super::{Connection, Endpoint, Error};
use crate::identity::{Identity, PeerId};
use crate::nat::link::{CoreRequest, NatEvent};
use crate::nat::{Nat, NatOptions};

/// How long [`Endpoint::connect_peer`] tries by default: registration, coordination, punching
/// and the relay fallback all fit in it on a slow path.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the NAT driver of an endpoint is started with.
pub(crate) struct NatStart {
    pub(crate) bootstraps: Vec<BootstrapSpec>,
    pub(crate) traversal: TraversalConfig,
    pub(crate) events: Receiver<NatEvent>,
    pub(crate) datagrams: Receiver<ant_quic_dataplane::ControlDatagram>,
}

/// Start the NAT driver for the endpoint's `node`, as a node does: it registers with the
/// bootstraps; connections it makes to peers offer `alpns`.
pub(crate) fn start_nat(
    node: &Node<Command>,
    identity: &Identity,
    alpns: &[Vec<u8>],
    start: NatStart,
) -> Result<Nat, Error> {
    let options = NatOptions {
        bootstraps: start.bootstraps,
        // Relay channels carry the generation, as on a node (nobody registers here anyway).
        coordinator: CoordinatorConfig { channel_prefix: node.handle().generation(), ..CoordinatorConfig::default() },
        traversal: start.traversal,
        alternate: None,
        peer_alpns: alpns.to_vec(),
        registry: crate::registry::RegistryOptions::default(),
    };
    Nat::start(node.messenger(), identity, options, start.events, start.datagrams, false)
        .map_err(|e| Error::Setup(e.to_string()))
}

impl Endpoint {
    /// Connect to the peer with ID `peer`, found through the bootstraps: straight to it when it
    /// is reachable, through a hole punched in both NATs, or through a bootstrap's relay
    /// ([`Connection::path`] tells which; a relayed connection may move to a direct path later).
    /// The connection offers the endpoint's ALPNs and authenticates the peer by its ID; the peer
    /// (another endpoint registered with a bootstrap in common) gets it from
    /// [`Endpoint::accept`]. Gives up after the builder's
    /// [`super::EndpointBuilder::peer_timeout`]; dropping the future abandons the attempt.
    pub async fn connect_peer(&self, peer: PeerId) -> Result<Connection, Error> {
        let Some(nat) = &self.inner.nat else { return Err(Error::NoBootstrap) };
        if self.inner.shared.closing.load(Ordering::Acquire) {
            return Err(Error::EndpointClosed);
        }
        let unreachable = |reason: String| Error::PeerUnreachable { peer, reason };
        let messenger = self.inner.messenger.clone();
        // A connection that comes after the task left is closed (by the NAT thread, or here).
        let undo = move |found: Result<PeerConnection, String>| {
            if let Ok(found) = found {
                let close = CoreRequest::Close { conn: found.conn, reason: "nobody waits for the connection" };
                let _ = messenger.send_message(found.conn.core, Command::Nat(close));
            }
        };
        let awaited = Awaited::new(undo);
        let reply = Arc::clone(&awaited.reply);
        let answer = Box::new(move |found| reply.put(found).is_none());
        nat.request_connect(peer, self.inner.peer_timeout, answer).map_err(|_| Error::EndpointClosed)?;
        let found = awaited.wait().await.map_err(unreachable)?;
        let messenger = &self.inner.messenger;
        let undo_messenger = messenger.clone();
        let claim = |reply| Command::Claim { conn: found.conn, reply };
        let undo = move |claimed: Result<Arc<super::shared::ConnShared>, Error>| {
            if let Ok(conn) = claimed {
                drop(Connection::new(conn, undo_messenger.clone()));
            }
        };
        let conn = ask(messenger, found.conn.core, claim, undo).await?.map_err(|e| unreachable(e.to_string()))?;
        Ok(Connection::new(conn, messenger.clone()))
    }

    /// This endpoint's address as a bootstrap sees it (its NAT's public mapping): the first
    /// bootstrap that told it; `None` before any did, or without bootstraps.
    pub fn observed_address(&self) -> Option<SocketAddr> {
        let nat = self.inner.nat.as_ref()?;
        nat.status().bootstraps.iter().find_map(|b| b.observed)
    }

    /// Wait until a bootstrap has registered this endpoint (told it its observed address), and
    /// return that address: from then on peers find it by [`Endpoint::local_peer_id`]. Waits
    /// as long as it takes (bootstraps are retried): wrap it in the runtime's timeout.
    pub async fn registered(&self) -> Result<SocketAddr, Error> {
        let Some(nat) = &self.inner.nat else { return Err(Error::NoBootstrap) };
        poll_fn(|cx| {
            for attempt in 0..2 {
                if let Some(observed) = self.observed_address() {
                    return Poll::Ready(Ok(observed));
                }
                if self.inner.shared.closing.load(Ordering::Acquire) {
                    return Poll::Ready(Err(Error::EndpointClosed));
                }
                if attempt == 0 {
                    nat.watch_status(cx.waker());
                }
            }
            Poll::Pending
        })
        .await
    }
}
