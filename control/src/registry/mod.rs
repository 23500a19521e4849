//! The shared peer registry of a federation of bootstraps, sans-IO (see `docs/federation.md`).
//!
//! Each bootstrap holds one lease in the store (etcd) and writes, under it, the entry of every
//! peer registered with it; when the bootstrap dies the lease expires and its entries vanish
//! together. Entries of peers registered elsewhere reach a local cache through a full read and a
//! watch. [`Registry`] decides what is written and when; the driver runs its
//! [`RegistryAction`]s against the store and reports back. It owns no socket and reads no clock.
//!
//! Writes happen on register, address change and unregister only, and when the entry of a peer
//! registered here and at another bootstrap vanishes with that bootstrap (its lease expired, or
//! the peer left it): this bootstrap writes it again. While the store is
//! unreachable the registry keeps its own peers (lookups of them still answer), says so in its
//! [`Status`], and on reconnection puts every local entry again (under a new lease if the old one
//! expired), deletes what was unregistered meanwhile, reloads the cache and watches from there.

mod record;
mod shared;

pub use record::{Keys, PeerRecord};
pub use shared::SharedRegistry;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::PeerId;

#[cfg(test)]
mod tests;

/// A lease ID of the store.
pub type LeaseId = i64;

/// Who this bootstrap is and how long its lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Key prefix, e.g. `/ant-quic`.
    pub prefix: String,
    /// This bootstrap's peer ID.
    pub identity: PeerId,
    /// This bootstrap's UDP address, as peers reach it.
    pub address: SocketAddr,
    /// Lease TTL: how long entries outlive a bootstrap that stopped keeping its lease alive.
    pub lease_ttl: Duration,
}

/// Whether the registry is in step with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not synchronised yet since start.
    Connecting,
    /// Local entries written, cache loaded, watch running.
    Ok,
    /// The store failed at `since`: own peers are served from memory only.
    Degraded {
        /// When the outage began.
        since: Instant,
    },
}

/// Something the driver must do against the store, in order. Any failure is reported with
/// [`Registry::failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAction {
    /// Grant a lease of `ttl` and keep it alive (every third of it); answer
    /// [`Registry::lease_granted`].
    GrantLease {
        /// The lease's time to live.
        ttl: Duration,
    },
    /// Check that `lease` still lives (one keep-alive); answer [`Registry::lease_granted`] with it,
    /// or [`Registry::lease_expired`].
    RenewLease {
        /// The lease held before the outage.
        lease: LeaseId,
    },
    /// Write `value` at `key`, attached to `lease`.
    Put {
        /// The key.
        key: String,
        /// JSON text.
        value: String,
        /// The bootstrap's lease.
        lease: LeaseId,
    },
    /// Delete `key` if it is still attached to `lease` (a peer that moved to another bootstrap
    /// has its key under that bootstrap's lease: it is not ours to delete).
    Delete {
        /// The key.
        key: String,
        /// The bootstrap's lease.
        lease: LeaseId,
    },
    /// Read every key under `prefix`; answer [`Registry::loaded`].
    Load {
        /// [`Keys::peers`].
        prefix: String,
    },
    /// Watch `prefix` from `from_revision` on (replacing any earlier watch); feed each event to
    /// [`Registry::watched`].
    Watch {
        /// [`Keys::peers`].
        prefix: String,
        /// The read's revision + 1.
        from_revision: i64,
    },
}

/// A change seen by the watch (or one entry of a full read, as a put).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// `key` now holds `value` (as of `revision`, its modification revision).
    Put {
        /// The key.
        key: String,
        /// The value's bytes.
        value: Vec<u8>,
        /// Its modification revision.
        revision: i64,
    },
    /// `key` was deleted (or its lease expired) at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: i64,
    },
}

/// Where a lookup found a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Registered here.
    Local(PeerRecord),
    /// Registered at another bootstrap (from the cache).
    Remote(PeerRecord),
    /// Unknown.
    Miss,
}

impl Lookup {
    /// The record, wherever it was found.
    pub fn record(self) -> Option<PeerRecord> {
        match self {
            Self::Local(record) | Self::Remote(record) => Some(record),
            Self::Miss => None,
        }
    }
}

/// Counters of a registry, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Peers registered here.
    pub local: usize,
    /// Peers known across the federation (here and in the cache).
    pub global: usize,
    /// Lookups answered from this bootstrap's own peers.
    pub lookups_local: u64,
    /// Lookups answered from the cache of other bootstraps' peers.
    pub lookups_remote: u64,
    /// Lookups of unknown peers.
    pub lookups_miss: u64,
    /// Puts issued (peer entries and the bootstrap's own).
    pub puts: u64,
    /// Deletes issued.
    pub deletes: u64,
    /// Store failures reported.
    pub errors: u64,
    /// Whether the registry is degraded now.
    pub degraded: bool,
}

#[derive(Debug, Clone)]
struct Cached {
    record: PeerRecord,
    revision: i64,
}

/// The shared registry's state (see the module documentation).
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    keys: Keys,
    status: Status,
    /// The lease granted last (it may have expired during an outage).
    lease: Option<LeaseId>,
    /// The lease is live in the current connection: writes go out at once.
    connected: bool,
    /// What this node must have in the store.
    local: BTreeMap<PeerId, PeerRecord>,
    /// Peers whose key was put under the current lease and not deleted since.
    written: BTreeSet<PeerId>,
    /// Peers registered at other bootstraps.
    remote: HashMap<PeerId, Cached>,
    actions: VecDeque<RegistryAction>,
    stats: RegistryStats,
}

impl Registry {
    /// A registry with no peers, asking for a lease first.
    pub fn new(config: RegistryConfig) -> Self {
        let keys = Keys::new(&config.prefix);
        let mut actions = VecDeque::new();
        actions.push_back(RegistryAction::GrantLease { ttl: config.lease_ttl });
        Self {
            config,
            keys,
            status: Status::Connecting,
            lease: None,
            connected: false,
            local: BTreeMap::new(),
            written: BTreeSet::new(),
            remote: HashMap::new(),
            actions,
            stats: RegistryStats::default(),
        }
    }

    /// `peer` registered here, or its observed address or candidates changed: one put when the
    /// record changed and the store is reachable; none otherwise (a resync puts it later).
    pub fn register(&mut self, peer: PeerId, observed: SocketAddr, candidates: Vec<SocketAddr>) {
        let record = PeerRecord {
            bootstrap: self.config.identity,
            bootstrap_address: self.config.address,
            observed,
            candidates,
        };
        if self.local.get(&peer) == Some(&record) {
            return;
        }
        self.local.insert(peer, record.clone());
        if self.connected {
            self.put_peer(peer, &record);
        }
    }

    /// `peer` is no longer registered here.
    pub fn unregister(&mut self, peer: PeerId) {
        if self.local.remove(&peer).is_none() {
            return;
        }
        if self.connected {
            self.delete_peer(peer);
        }
    }

    /// The lease (new, or the old one still alive) is granted: writes every local entry (and
    /// deletes those unregistered meanwhile), then reloads the cache.
    pub fn lease_granted(&mut self, lease: LeaseId) {
        if self.lease != Some(lease) {
            // Entries under an older lease are gone with it.
            self.written.clear();
        }
        self.lease = Some(lease);
        self.connected = true;
        self.actions.clear();
        let own = serde_json::json!({ "address": self.config.address.to_string() }).to_string();
        self.actions.push_back(RegistryAction::Put {
            key: self.keys.bootstrap(self.config.identity),
            value: own,
            lease,
        });
        self.stats.puts += 1;
        let gone: Vec<PeerId> = self.written.iter().filter(|p| !self.local.contains_key(p)).copied().collect();
        for peer in gone {
            self.delete_peer(peer);
        }
        for (peer, record) in self.local.clone() {
            self.put_peer(peer, &record);
        }
        self.actions.push_back(RegistryAction::Load { prefix: self.keys.peers() });
    }

    /// The lease held before an outage expired: asks for a new one.
    pub fn lease_expired(&mut self) {
        self.lease = None;
        self.written.clear();
        self.actions.push_back(RegistryAction::GrantLease { ttl: self.config.lease_ttl });
    }

    /// The full read of [`RegistryAction::Load`] at store revision `revision`: replaces the cache,
    /// watches from the next revision on, and the registry is in step.
    pub fn loaded(&mut self, revision: i64, entries: Vec<(String, Vec<u8>, i64)>) {
        self.remote.clear();
        for (key, value, modified) in entries {
            self.apply_put(&key, &value, modified);
        }
        self.actions.push_back(RegistryAction::Watch { prefix: self.keys.peers(), from_revision: revision + 1 });
        self.status = Status::Ok;
    }

    /// An event of the watch.
    pub fn watched(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Put { key, value, revision } => self.apply_put(&key, &value, revision),
            WatchEvent::Delete { key, revision } => {
                let Some(peer) = self.keys.peer_of(&key) else { return };
                if self.remote.get(&peer).is_some_and(|c| c.revision < revision) {
                    self.remote.remove(&peer);
                }
                // A peer registered here and at another bootstrap, whose entry that bootstrap
                // held: it died (lease expired) or the peer left it. The peer is still here, so
                // its entry is ours to write again, or the federation loses it.
                if self.connected {
                    if let Some(record) = self.local.get(&peer).cloned() {
                        self.put_peer(peer, &record);
                    }
                }
            }
        }
    }

    /// The store failed (an action, the keep-alive or the watch). Returns true when this begins
    /// an outage (the driver warns once).
    pub fn failed(&mut self, now: Instant) -> bool {
        self.stats.errors += 1;
        self.connected = false;
        self.actions.clear();
        if matches!(self.status, Status::Degraded { .. }) {
            return false;
        }
        self.status = Status::Degraded { since: now };
        true
    }

    /// The connection to the store broke while in step (e.g. the member it used died): resync
    /// at once over another, without reporting an outage yet ([`Registry::failed`] follows if
    /// that fails too). Counted as an error.
    pub fn interrupted(&mut self) {
        self.stats.errors += 1;
        self.connected = false;
        self.reconnect();
    }

    /// Try the store again after a failure: keep the old lease if it lives, else a new one.
    pub fn reconnect(&mut self) {
        self.actions.clear();
        self.actions.push_back(match self.lease {
            Some(lease) => RegistryAction::RenewLease { lease },
            None => RegistryAction::GrantLease { ttl: self.config.lease_ttl },
        });
    }

    /// Where `peer` is registered, counting the lookup by its result.
    pub fn lookup(&mut self, peer: PeerId) -> Lookup {
        if let Some(record) = self.local.get(&peer) {
            self.stats.lookups_local += 1;
            return Lookup::Local(record.clone());
        }
        if let Some(cached) = self.remote.get(&peer) {
            self.stats.lookups_remote += 1;
            return Lookup::Remote(cached.record.clone());
        }
        self.stats.lookups_miss += 1;
        Lookup::Miss
    }

    /// The next thing to do against the store.
    pub fn poll_action(&mut self) -> Option<RegistryAction> {
        self.actions.pop_front()
    }

    /// Whether the registry is in step with the store.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        let elsewhere = self.remote.keys().filter(|p| !self.local.contains_key(p)).count();
        RegistryStats {
            local: self.local.len(),
            global: self.local.len() + elsewhere,
            degraded: matches!(self.status, Status::Degraded { .. }),
            ..self.stats
        }
    }

    fn put_peer(&mut self, peer: PeerId, record: &PeerRecord) {
        let Some(lease) = self.lease else { return };
        let value = record.to_json(peer).to_string();
        self.actions.push_back(RegistryAction::Put { key: self.keys.peer(peer), value, lease });
        self.written.insert(peer);
        self.stats.puts += 1;
    }

    fn delete_peer(&mut self, peer: PeerId) {
        let Some(lease) = self.lease else { return };
        self.actions.push_back(RegistryAction::Delete { key: self.keys.peer(peer), lease });
        self.written.remove(&peer);
        self.stats.deletes += 1;
    }

    fn apply_put(&mut self, key: &str, value: &[u8], revision: i64) {
        let Some(peer) = self.keys.peer_of(key) else { return };
        let record = serde_json::from_slice(value).ok().and_then(|v| PeerRecord::from_json(&v));
        let Some(record) = record else {
            tracing::debug!(key, "registry entry that is not a peer record: skipped");
            return;
        };
        if record.bootstrap == self.config.identity {
            // Our own write (or the peer moved here): the local map is the truth for it.
            self.remote.remove(&peer);
            return;
        }
        if self.remote.get(&peer).is_some_and(|c| c.revision >= revision) {
            return;
        }
        self.remote.insert(peer, Cached { record, revision });
    }
}
