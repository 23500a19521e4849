//! The bootstrap's peer registry at run time: the shared state of
//! [`ant_quic_control::registry`], and with `[registry] backend = "etcd"` the thread that keeps
//! it in step with etcd (`etcd`, built with the `etcd` feature). See docs/federation.md.

#[cfg(feature = "etcd")]
mod etcd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ant_quic_control::registry::{Registry, RegistryConfig, SharedRegistry};
use ant_quic_control::PeerId;

use crate::config::{RegistryBackend, RegistrySection};
use crate::Error;

/// How a node keeps its registry (from `[registry]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// `memory` or `etcd`.
    pub backend: RegistryBackend,
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// The lease's time to live.
    pub lease_ttl: Duration,
    /// CA of the etcd servers (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for etcd (PEM).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self::from(&RegistrySection::default())
    }
}

impl From<&RegistrySection> for RegistryOptions {
    fn from(section: &RegistrySection) -> Self {
        Self {
            backend: section.backend,
            endpoints: section.endpoints.clone(),
            prefix: section.prefix.clone(),
            lease_ttl: Duration::from_secs(section.lease_ttl),
            ca_file: section.ca_file.clone(),
            client_identity: section.cert_file.clone().zip(section.key_file.clone()),
        }
    }
}

/// The running registry: the shared state, and the thread that keeps it in etcd if any.
#[derive(Debug)]
pub struct RegistryService {
    shared: SharedRegistry,
    #[cfg(feature = "etcd")]
    store: Option<etcd::EtcdDriver>,
}

impl RegistryService {
    /// Start the registry of the bootstrap `identity` reachable at `address`. With etcd: waits
    /// for the first answer (a few seconds at most); an unreachable etcd starts degraded (with
    /// one warning), a refused certificate or login is an error.
    pub fn start(options: &RegistryOptions, identity: PeerId, address: SocketAddr) -> Result<Self, Error> {
        let config = RegistryConfig { prefix: options.prefix.clone(), identity, address, lease_ttl: options.lease_ttl };
        match options.backend {
            RegistryBackend::Memory => Ok(Self {
                shared: SharedRegistry::new(Registry::new(config), "memory"),
                #[cfg(feature = "etcd")]
                store: None,
            }),
            #[cfg(feature = "etcd")]
            RegistryBackend::Etcd => {
                let shared = SharedRegistry::new(Registry::new(config), "etcd");
                let store = etcd::EtcdDriver::start(options, shared.clone())?;
                Ok(Self { shared, store: Some(store) })
            }
            #[cfg(not(feature = "etcd"))]
            RegistryBackend::Etcd => Err(Error::Invalid(crate::config::NO_ETCD_FEATURE.to_owned())),
        }
    }

    /// The shared state (for lookups, `/health`, metrics and the admin endpoint).
    pub fn shared(&self) -> SharedRegistry {
        self.shared.clone()
    }

    /// `peer` registered here or moved.
    pub fn register(&self, peer: PeerId, observed: SocketAddr, candidates: Vec<SocketAddr>) {
        self.shared.lock().register(peer, observed, candidates);
        self.wake();
    }

    /// `peer` is no longer registered here.
    pub fn unregister(&self, peer: PeerId) {
        self.shared.lock().unregister(peer);
        self.wake();
    }

    /// Where `peer` is registered, here or at another bootstrap (the seam for forwarding a
    /// connection request); counted in `ant_quic_registry_lookups_total`.
    pub fn lookup(&self, peer: PeerId) -> Option<ant_quic_control::registry::PeerRecord> {
        self.shared.lookup(peer)
    }

    /// Tells the store's thread that there is something to write.
    fn wake(&self) {
        #[cfg(feature = "etcd")]
        if let Some(store) = &self.store {
            store.wake();
        }
    }

    /// Stop the store's thread (its lease is revoked: this bootstrap's peers leave etcd at once).
    pub fn stop(&mut self) {
        #[cfg(feature = "etcd")]
        if let Some(mut store) = self.store.take() {
            store.stop();
        }
    }
}

impl Drop for RegistryService {
    fn drop(&mut self) {
        self.stop();
    }
}
