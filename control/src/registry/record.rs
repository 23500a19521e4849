//! One peer's entry in the shared registry and the keys it lives under.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::PeerId;

/// Where a peer is registered and how to reach it: the value of `{prefix}/peers/{peer_id_hex}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The bootstrap the peer is registered with (its peer ID).
    pub bootstrap: PeerId,
    /// That bootstrap's UDP address.
    pub bootstrap_address: SocketAddr,
    /// Where that bootstrap observes the peer.
    pub observed: SocketAddr,
    /// The candidates the peer added there, highest priority first.
    pub candidates: Vec<SocketAddr>,
}

impl PeerRecord {
    /// The record as JSON (what etcd stores and the admin endpoint serves).
    pub fn to_json(&self, peer: PeerId) -> Value {
        json!({
            "peer": peer.to_string(),
            "bootstrap": self.bootstrap.to_string(),
            "bootstrap_address": self.bootstrap_address.to_string(),
            "observed": self.observed.to_string(),
            "candidates": self.candidates.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    /// A record read back from JSON, `None` when a field is missing or malformed (an entry
    /// written by something else is skipped, not trusted).
    pub fn from_json(value: &Value) -> Option<Self> {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let candidates = value
            .get("candidates")?
            .as_array()?
            .iter()
            .map(|c| c.as_str().and_then(|s| s.parse().ok()))
            .collect::<Option<Vec<SocketAddr>>>()?;
        Some(Self {
            bootstrap: text("bootstrap")?.parse().ok()?,
            bootstrap_address: text("bootstrap_address")?.parse().ok()?,
            observed: text("observed")?.parse().ok()?,
            candidates,
        })
    }
}

/// The etcd keys of one registry, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    /// `{prefix}/peers/`: every peer entry starts with it (what the full read and the watch cover).
    pub fn peers(&self) -> String {
        format!("{}/peers/", self.prefix)
    }

    /// `{prefix}/peers/{peer_id_hex}`.
    pub fn peer(&self, peer: PeerId) -> String {
        format!("{}{peer}", self.peers())
    }

    /// `{prefix}/bootstraps/{id_hex}`: the bootstrap's own entry, under the same lease.
    pub fn bootstrap(&self, id: PeerId) -> String {
        format!("{}/bootstraps/{id}", self.prefix)
    }

    /// The peer a key under [`Keys::peers`] names.
    pub fn peer_of(&self, key: &str) -> Option<PeerId> {
        key.strip_prefix(&self.peers())?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_json_and_keys_name_their_peer() {
        let record = PeerRecord {
            bootstrap: PeerId([1; 32]),
            bootstrap_address: "127.0.0.1:9000".parse().unwrap(),
            observed: "[::1]:5000".parse().unwrap(),
            candidates: vec!["10.0.0.2:5000".parse().unwrap()],
        };
        let peer = PeerId([2; 32]);
        assert_eq!(PeerRecord::from_json(&record.to_json(peer)), Some(record));
        assert_eq!(PeerRecord::from_json(&json!({"bootstrap": "x"})), None);
        let keys = Keys::new("/ant-quic/");
        assert_eq!(keys.peer(peer), format!("/ant-quic/peers/{peer}"));
        assert_eq!(keys.peer_of(&keys.peer(peer)), Some(peer));
        assert_eq!(keys.peer_of("/ant-quic/bootstraps/zz"), None);
        assert!(keys.bootstrap(peer).starts_with("/ant-quic/bootstraps/"));
    }
}
