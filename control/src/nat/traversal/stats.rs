//! What a traversal counts, for metrics.

/// Counters of a traversal, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraversalStats {
    /// Probes sent (acks not included).
    pub probes_sent: u64,
    /// Probes received with a known token (and answered).
    pub probes_received: u64,
    /// Acks received for probes this peer sent.
    pub probes_acked: u64,
    /// Probe datagrams whose token matches no current round (ignored).
    pub unknown_token: u64,
    /// Attempts that connected directly.
    pub attempts_direct: u64,
    /// Attempts that connected through the relay.
    pub attempts_relayed: u64,
    /// Attempts that failed.
    pub attempts_failed: u64,
    /// Relayed connections moved to a direct path.
    pub upgrades: u64,
    /// Rounds that sprayed from extra sockets (this side behind endpoint-dependent mapping).
    pub spray_rounds: u64,
    /// Probes sent from extra sockets.
    pub spray_probes_sent: u64,
    /// Probes sent to guessed ports (the other side behind endpoint-dependent mapping).
    pub guesses_sent: u64,
    /// Rounds whose path was found by an extra socket.
    pub spray_wins: u64,
    /// Two-sided rounds (both sides behind endpoint-dependent mapping) that guessed.
    pub birthday_rounds: u64,
    /// RELAY_ATs followed: the relay asked at the target's bootstrap.
    pub relay_at_followed: u64,
    /// RELAY_ATs that answered no request of ours (ignored).
    pub relay_at_ignored: u64,
}
