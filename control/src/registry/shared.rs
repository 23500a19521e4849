//! The registry shared by the threads that use it: the NAT thread registers and looks up, the
//! store's driver thread carries out its actions, the admin thread shows it.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use super::{Lookup, PeerRecord, Registry, RegistryStats, Status};
use crate::PeerId;

/// A [`Registry`] behind a lock, with the name of its backend (`memory`, `etcd`).
#[derive(Debug, Clone)]
pub struct SharedRegistry {
    inner: Arc<Mutex<Registry>>,
    backend: &'static str,
}

impl SharedRegistry {
    /// `registry`, kept by `backend`.
    pub fn new(registry: Registry, backend: &'static str) -> Self {
        Self { inner: Arc::new(Mutex::new(registry)), backend }
    }

    /// The registry, locked (a poisoned lock still holds a consistent registry: every change is
    /// one call).
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether a store backs the registry (`false`: memory only).
    pub fn is_shared(&self) -> bool {
        self.backend != "memory"
    }

    /// Where `peer` is registered, here or at another bootstrap (the seam for forwarding a
    /// connection request to the bootstrap that holds the peer); counted by result.
    pub fn lookup(&self, peer: PeerId) -> Option<PeerRecord> {
        self.lock().lookup(peer).record()
    }

    /// [`SharedRegistry::lookup`] as the admin endpoint shows it, with where it was found.
    pub fn lookup_json(&self, peer: PeerId) -> Option<Value> {
        let (scope, record) = match self.lock().lookup(peer) {
            Lookup::Local(record) => ("local", record),
            Lookup::Remote(record) => ("global", record),
            Lookup::Miss => return None,
        };
        let mut value = record.to_json(peer);
        if let Some(object) = value.as_object_mut() {
            object.insert("scope".into(), scope.into());
        }
        Some(value)
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        self.lock().stats()
    }

    /// `"ok"`, `"degraded"`, `"connecting"`, or `"memory"` without a store.
    pub fn status_name(&self) -> &'static str {
        if !self.is_shared() {
            return "memory";
        }
        match self.lock().status() {
            Status::Connecting => "connecting",
            Status::Ok => "ok",
            Status::Degraded { .. } => "degraded",
        }
    }

    /// The `registry` object of `/health`. Its state is `state`, not `status`: tools that read
    /// `/health` line by line (scripts/deploy-do.sh) take the first `"status"` as the node's.
    pub fn health_json(&self) -> Value {
        let stats = self.stats();
        json!({
            "backend": self.backend,
            "state": self.status_name(),
            "local": stats.local,
            "global": stats.global,
        })
    }
}
