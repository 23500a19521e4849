//! A node's bootstrap connections: connecting and reconnecting with backoff, a pinned
//! bootstrap that proves another peer ID, and re-registration when a bootstrap hands over.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ant_quic_dataplane::ConnId;

use super::{
    session_of, AgentAction, Handover, NatAgent, FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, REREGISTER_RETRY,
};

impl NatAgent {
    pub(super) fn connect_bootstrap(&mut self, index: usize) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        bootstrap.reconnect_at = None;
        let (remote, peer) = (bootstrap.address, bootstrap.peer);
        self.actions.push_back(AgentAction::OpenBootstrap { index, remote, peer });
        // Host candidates: the address this host would use toward each bootstrap, with our port.
        let bootstraps = self.bootstraps.iter().map(|b| b.address).collect();
        self.actions.push_back(AgentAction::DiscoverHostCandidates { bootstraps });
    }

    /// Opens the new connection of a re-registration with bootstrap `index`. Same purpose as the
    /// old one: the events of both are told apart by connection.
    pub(super) fn open_replacement(&mut self, index: usize) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        bootstrap.handover = Some(Handover::Connecting);
        let (remote, peer) = (bootstrap.address, bootstrap.peer);
        self.actions.push_back(AgentAction::OpenBootstrap { index, remote, peer });
    }

    pub(super) fn bootstrap_connected(&mut self, index: usize, conn: ConnId, remote: SocketAddr, rtt: Duration) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        if bootstrap.handover == Some(Handover::Connecting) && bootstrap.conn.is_some() {
            tracing::debug!(bootstrap = %remote, "new bootstrap connection up; registering");
            bootstrap.handover = Some(Handover::Registering { new: conn });
            return;
        }
        bootstrap.conn = Some(conn);
        bootstrap.delay = FIRST_RECONNECT_DELAY;
        self.update_bootstrap_status(index, |entry| {
            entry.registered = true;
            entry.wrong_peer = false;
            entry.rtt = Some(rtt);
            entry.last_error = None;
        });
        tracing::info!(bootstrap = %remote, "connected to bootstrap");
    }

    /// Bootstrap `conn` asked this node to re-register (its process is being taken over).
    pub(super) fn on_reregister_requested(&mut self, now: Instant, conn: ConnId, delay: Duration) {
        let Some(bootstrap) = self.bootstraps.iter_mut().find(|b| b.conn == Some(conn)) else { return };
        if bootstrap.handover.is_some() {
            return;
        }
        tracing::info!(bootstrap = %bootstrap.address, ?delay, "bootstrap is being taken over: re-registering");
        bootstrap.handover = Some(Handover::Waiting { until: now + delay });
    }

    /// The new connection of a handover got its OBSERVED_ADDRESS: it replaces the old one, which
    /// is closed without error.
    pub(super) fn confirm_replacement(&mut self, now: Instant, conn: ConnId) {
        let Some(bootstrap) =
            self.bootstraps.iter_mut().find(|b| b.handover == Some(Handover::Registering { new: conn }))
        else {
            return;
        };
        bootstrap.handover = None;
        let old = bootstrap.conn.replace(conn);
        tracing::info!(bootstrap = %bootstrap.address, "re-registered with bootstrap; closing the old connection");
        if let Some(old) = old {
            self.traversal.bootstrap_handed_over(now, session_of(old), session_of(conn));
            self.retired.insert(old);
            self.actions.push_back(AgentAction::Close { conn: old, reason: "re-registered" });
        }
    }

    /// A connection for bootstrap `index` ended (`conn`: `None` when it never started).
    pub(super) fn bootstrap_closed(&mut self, now: Instant, index: usize, conn: Option<ConnId>, reason: String) {
        if conn.is_some_and(|c| self.retired.remove(&c)) {
            return;
        }
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        let current = conn.is_some() && conn == bootstrap.conn;
        match bootstrap.handover {
            Some(Handover::Registering { new }) if current => {
                // The old process went first: the new connection is registered, or about to be.
                tracing::info!(bootstrap = %bootstrap.address, %reason, "old bootstrap connection ended during re-registration");
                bootstrap.conn = Some(new);
                bootstrap.handover = None;
            }
            Some(Handover::Registering { new }) if conn == Some(new) => {
                tracing::warn!(bootstrap = %bootstrap.address, %reason, "new bootstrap connection failed; retrying");
                bootstrap.handover = Some(Handover::Waiting { until: now + REREGISTER_RETRY });
            }
            Some(Handover::Connecting) if !current => {
                tracing::warn!(bootstrap = %bootstrap.address, %reason, "new bootstrap connection failed; retrying");
                bootstrap.handover = Some(Handover::Waiting { until: now + REREGISTER_RETRY });
            }
            Some(Handover::Connecting) => {
                // The old connection ended while the new one is being opened: that one becomes
                // the ordinary connection (no reconnect of our own).
                bootstrap.conn = None;
                bootstrap.handover = None;
                self.update_bootstrap_status(index, |entry| entry.registered = false);
            }
            _ => {
                bootstrap.handover = None;
                self.bootstrap_failed(now, index, reason);
            }
        }
    }

    /// A connection to pinned bootstrap `index` was refused: its certificate proves another peer.
    /// Handled as any failure (reconnect with backoff), with a reason that names the pin.
    pub(super) fn bootstrap_wrong_peer(&mut self, now: Instant, index: usize, conn: Option<ConnId>, reason: String) {
        let Some(bootstrap) = self.bootstraps.get(index) else { return };
        let (address, pin) = (bootstrap.address, bootstrap.peer);
        let message = match pin {
            Some(pin) => format!("the bootstrap at {address} is not peer {pin}"),
            None => reason.clone(),
        };
        tracing::warn!(bootstrap = %address, %reason, "{message}");
        self.bootstrap_closed(now, index, conn, message.clone());
        self.update_bootstrap_status(index, |entry| {
            if !entry.registered {
                entry.wrong_peer = true;
                entry.last_error = Some(message);
            }
        });
    }

    pub(super) fn bootstrap_failed(&mut self, now: Instant, index: usize, reason: String) {
        let Some(bootstrap) = self.bootstraps.get_mut(index) else { return };
        if bootstrap.extra {
            self.extra_failed(now, index, &reason);
            return;
        }
        tracing::warn!(bootstrap = %bootstrap.address, %reason, "bootstrap unreachable; retrying in {:?}", bootstrap.delay);
        bootstrap.conn = None;
        bootstrap.reconnect_at = Some(now + bootstrap.delay);
        bootstrap.delay = (bootstrap.delay * 2).min(MAX_RECONNECT_DELAY);
        self.update_bootstrap_status(index, |entry| {
            entry.registered = false;
            entry.last_error = Some(reason);
        });
    }
}
