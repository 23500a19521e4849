use super::*;

fn config() -> RegistryConfig {
    RegistryConfig {
        prefix: "/ant-quic".into(),
        identity: PeerId([0xb1; 32]),
        address: "127.0.0.1:9000".parse().unwrap(),
        lease_ttl: Duration::from_secs(10),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn drain(registry: &mut Registry) -> Vec<RegistryAction> {
    std::iter::from_fn(|| registry.poll_action()).collect()
}

/// Puts and deletes of peer keys among `actions`, as ("put" | "delete", peer).
fn writes(actions: &[RegistryAction]) -> Vec<(&'static str, PeerId)> {
    let keys = Keys::new("/ant-quic");
    actions
        .iter()
        .filter_map(|a| match a {
            RegistryAction::Put { key, .. } => keys.peer_of(key).map(|p| ("put", p)),
            RegistryAction::Delete { key, .. } => keys.peer_of(key).map(|p| ("delete", p)),
            _ => None,
        })
        .collect()
}

/// A registry in step with an empty store under lease 7.
fn connected() -> Registry {
    let mut registry = Registry::new(config());
    assert_eq!(drain(&mut registry), vec![RegistryAction::GrantLease { ttl: Duration::from_secs(10) }]);
    registry.lease_granted(7);
    let actions = drain(&mut registry);
    assert!(
        matches!(&actions[0], RegistryAction::Put { key, lease: 7, .. } if key.starts_with("/ant-quic/bootstraps/"))
    );
    assert_eq!(actions[1], RegistryAction::Load { prefix: "/ant-quic/peers/".into() });
    registry.loaded(41, Vec::new());
    assert_eq!(
        drain(&mut registry),
        vec![RegistryAction::Watch { prefix: "/ant-quic/peers/".into(), from_revision: 42 }]
    );
    assert_eq!(registry.status(), Status::Ok);
    registry
}

fn remote_value(peer: PeerId, bootstrap: PeerId, observed: SocketAddr) -> Vec<u8> {
    let record = PeerRecord { bootstrap, bootstrap_address: addr(9100), observed, candidates: vec![] };
    record.to_json(peer).to_string().into_bytes()
}

#[test]
fn a_peer_that_changes_address_costs_one_put_and_keep_alive_none() {
    let mut registry = connected();
    let peer = PeerId([1; 32]);
    registry.register(peer, addr(5000), vec![]);
    assert_eq!(writes(&drain(&mut registry)), vec![("put", peer)]);
    // The same registration again (a refreshed candidate, a keep-alive): nothing to write.
    registry.register(peer, addr(5000), vec![]);
    assert!(drain(&mut registry).is_empty());
    registry.register(peer, addr(5001), vec![]);
    let actions = drain(&mut registry);
    assert_eq!(writes(&actions), vec![("put", peer)]);
    let RegistryAction::Put { value, lease, .. } = &actions[0] else { panic!("{actions:?}") };
    assert_eq!(*lease, 7);
    let record = PeerRecord::from_json(&serde_json::from_str(value).unwrap()).unwrap();
    assert_eq!((record.observed, record.bootstrap), (addr(5001), PeerId([0xb1; 32])));
    assert_eq!(registry.lookup(peer), Lookup::Local(record));
    assert_eq!(registry.stats().lookups_local, 1);
}

#[test]
fn a_peer_that_re_registers_is_deleted_then_put_under_the_same_lease() {
    let mut registry = connected();
    let peer = PeerId([1; 32]);
    registry.register(peer, addr(5000), vec![]);
    registry.unregister(peer);
    registry.unregister(peer);
    registry.register(peer, addr(5000), vec![addr(6000)]);
    let actions = drain(&mut registry);
    assert_eq!(writes(&actions), vec![("put", peer), ("delete", peer), ("put", peer)]);
    assert!(actions
        .iter()
        .all(|a| matches!(a, RegistryAction::Put { lease: 7, .. } | RegistryAction::Delete { lease: 7, .. })));
    let stats = registry.stats();
    assert_eq!((stats.local, stats.puts, stats.deletes), (1, 3, 1), "the bootstrap's own entry is a put too");
}

#[test]
fn other_bootstraps_peers_come_from_the_read_and_the_watch_by_revision() {
    let mut registry = Registry::new(config());
    registry.lease_granted(7);
    let (a, b, own) = (PeerId([0xa; 32]), PeerId([0xb; 32]), PeerId([0xc; 32]));
    let b2 = PeerId([0xb2; 32]);
    let keys = Keys::new("/ant-quic");
    registry.loaded(
        50,
        vec![
            (keys.peer(a), remote_value(a, b2, addr(1)), 10),
            (keys.peer(own), remote_value(own, PeerId([0xb1; 32]), addr(3)), 11),
            (keys.peer(b), b"not json".to_vec(), 12),
        ],
    );
    assert_eq!(registry.lookup(a).record().map(|r| r.bootstrap), Some(b2));
    assert_eq!(registry.lookup(own), Lookup::Miss, "own entries are not cached as remote");
    assert_eq!(registry.lookup(b), Lookup::Miss, "a malformed entry is skipped");
    registry.watched(WatchEvent::Put { key: keys.peer(b), value: remote_value(b, b2, addr(2)), revision: 51 });
    // An older event (replayed) does not overwrite a newer entry.
    registry.watched(WatchEvent::Put { key: keys.peer(b), value: remote_value(b, b2, addr(9)), revision: 30 });
    assert_eq!(registry.lookup(b).record().map(|r| r.observed), Some(addr(2)));
    assert_eq!(registry.stats().global, 2);
    // b2's lease expired: its peers' keys are deleted.
    registry.watched(WatchEvent::Delete { key: keys.peer(a), revision: 52 });
    registry.watched(WatchEvent::Delete { key: keys.peer(b), revision: 52 });
    assert_eq!(registry.lookup(a), Lookup::Miss);
    let stats = registry.stats();
    assert_eq!((stats.global, stats.lookups_remote, stats.lookups_miss), (0, 2, 3));
}

#[test]
fn a_peer_also_registered_here_is_written_again_when_the_other_bootstraps_entry_goes() {
    let mut registry = connected();
    let keys = Keys::new("/ant-quic");
    let (both, elsewhere) = (PeerId([0xd; 32]), PeerId([0xe; 32]));
    let b2 = PeerId([0xb2; 32]);
    registry.register(both, addr(1), vec![]);
    assert_eq!(writes(&drain(&mut registry)), vec![("put", both)]);
    // B2 wrote it last (the peer registered there too), and B2 holds `elsewhere` alone.
    registry.watched(WatchEvent::Put { key: keys.peer(both), value: remote_value(both, b2, addr(1)), revision: 60 });
    registry.watched(WatchEvent::Put {
        key: keys.peer(elsewhere),
        value: remote_value(elsewhere, b2, addr(2)),
        revision: 61,
    });
    assert!(drain(&mut registry).is_empty(), "another bootstrap's write costs nothing here");
    // B2's lease expired: the peer registered here too gets its entry back, the other does not.
    registry.watched(WatchEvent::Delete { key: keys.peer(both), revision: 62 });
    registry.watched(WatchEvent::Delete { key: keys.peer(elsewhere), revision: 62 });
    let actions = drain(&mut registry);
    assert_eq!(writes(&actions), vec![("put", both)]);
    assert!(matches!(&actions[0], RegistryAction::Put { lease: 7, value, .. } if value.contains(&addr(1).to_string())));
    assert!(matches!(registry.lookup(both), Lookup::Local(_)));
    assert_eq!(registry.lookup(elsewhere), Lookup::Miss);
    // Our own delete (the peer left here) is not undone.
    registry.unregister(both);
    assert_eq!(writes(&drain(&mut registry)), vec![("delete", both)]);
    registry.watched(WatchEvent::Delete { key: keys.peer(both), revision: 63 });
    assert!(drain(&mut registry).is_empty());
    // While the store is unreachable nothing is written; the resync puts every local entry.
    registry.register(both, addr(1), vec![]);
    drain(&mut registry);
    registry.failed(Instant::now());
    registry.watched(WatchEvent::Delete { key: keys.peer(both), revision: 64 });
    assert!(drain(&mut registry).is_empty());
}

#[test]
fn an_outage_keeps_local_peers_and_the_resync_writes_what_changed_meanwhile() {
    let mut registry = connected();
    let (kept, left, joined) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
    registry.register(kept, addr(5001), vec![]);
    registry.register(left, addr(5002), vec![]);
    let elsewhere = PeerId([4; 32]);
    let key = Keys::new("/ant-quic").peer(elsewhere);
    registry.watched(WatchEvent::Put {
        key,
        value: remote_value(elsewhere, PeerId([0xb2; 32]), addr(1)),
        revision: 45,
    });
    drain(&mut registry);
    let t0 = Instant::now();
    assert!(registry.failed(t0), "the first failure begins the outage");
    assert!(!registry.failed(t0 + Duration::from_secs(1)), "later ones do not warn again");
    assert_eq!(registry.status(), Status::Degraded { since: t0 });
    assert!(registry.stats().degraded);
    registry.unregister(left);
    registry.register(joined, addr(5003), vec![]);
    assert!(drain(&mut registry).is_empty(), "nothing is written while the store is away");
    assert!(matches!(registry.lookup(joined), Lookup::Local(_)), "own peers are still served");

    // The store is back and the lease outlived the outage: the left peer's key is deleted, every
    // local entry put again, the cache reloaded.
    registry.reconnect();
    assert_eq!(drain(&mut registry), vec![RegistryAction::RenewLease { lease: 7 }]);
    registry.lease_granted(7);
    let actions = drain(&mut registry);
    assert_eq!(writes(&actions), vec![("delete", left), ("put", kept), ("put", joined)]);
    assert_eq!(actions.last(), Some(&RegistryAction::Load { prefix: "/ant-quic/peers/".into() }));
    assert!(matches!(registry.lookup(elsewhere), Lookup::Remote(_)), "the cache serves until reloaded");
    // Its bootstrap died during the outage: the reload no longer has it.
    registry.loaded(90, Vec::new());
    assert_eq!(registry.lookup(elsewhere), Lookup::Miss);
    assert_eq!(registry.status(), Status::Ok);
    assert_eq!(
        drain(&mut registry),
        vec![RegistryAction::Watch { prefix: "/ant-quic/peers/".into(), from_revision: 91 }]
    );
}

#[test]
fn an_expired_lease_is_replaced_and_nothing_stale_is_deleted() {
    let mut registry = connected();
    let (kept, left) = (PeerId([1; 32]), PeerId([2; 32]));
    registry.register(kept, addr(5001), vec![]);
    registry.register(left, addr(5002), vec![]);
    registry.failed(Instant::now());
    registry.unregister(left);
    registry.reconnect();
    assert_eq!(drain(&mut registry), vec![RegistryAction::RenewLease { lease: 7 }]);
    registry.lease_expired();
    assert_eq!(drain(&mut registry), vec![RegistryAction::GrantLease { ttl: Duration::from_secs(10) }]);
    registry.lease_granted(8);
    let actions = drain(&mut registry);
    assert_eq!(writes(&actions), vec![("put", kept)], "the old lease took the left peer's key with it");
    assert!(actions.iter().all(|a| !matches!(a, RegistryAction::Put { lease, .. } if *lease != 8)));
}

#[test]
fn a_broken_connection_resyncs_without_reporting_an_outage() {
    let mut registry = connected();
    let peer = PeerId([1; 32]);
    registry.register(peer, addr(5001), vec![]);
    drain(&mut registry);
    registry.interrupted();
    assert_eq!(registry.status(), Status::Ok, "not degraded until the retry fails too");
    registry.register(PeerId([2; 32]), addr(5002), vec![]);
    assert_eq!(drain(&mut registry), vec![RegistryAction::RenewLease { lease: 7 }], "no write before the resync");
    registry.lease_granted(7);
    assert_eq!(writes(&drain(&mut registry)), vec![("put", peer), ("put", PeerId([2; 32]))]);
    assert_eq!(registry.stats().errors, 1);
}
