//! Many-probe rounds (the birthday technique, `docs/nat-traversal.md`, "Many-probe rounds"): the
//! endpoint-dependent side probes from extra sockets, the other side guesses its ports.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::Traversal;
use crate::nat::candidate::{self, Mapping};
use crate::nat::coordinator::SplitMix64;
use crate::nat::message::{Candidate, CandidateKind};

/// Server-reflexive addresses of the other peer an extra socket probes (normally one: an
/// endpoint-independent mapping looks the same from every bootstrap).
const MAX_SPRAY_TARGETS: usize = 2;
/// Guessable ports: the range Linux and most NATs allocate mappings from.
pub(super) const GUESS_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// Where a many-probe round's extra sockets stand (EDM side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SprayState {
    /// Not opened yet (the round has not started probing).
    Idle,
    Open,
    /// This socket found the path; the others are closed.
    Kept {
        socket: u16,
        remote: SocketAddr,
    },
    Closed,
}

/// The many-probe part of a round.
#[derive(Debug)]
pub(super) enum Spray {
    /// This peer is behind endpoint-dependent mapping: extra sockets probe `targets`.
    Sockets { targets: Vec<SocketAddr>, first_transaction: u64, state: SprayState },
    /// The other peer is: probes from the node socket to guessed ports of `ip`, `batch` per probe
    /// interval.
    Guesses { ip: IpAddr, transaction: u64, guesser: PortGuesser, next_batch: Instant, batch: usize },
}

/// Random ports to guess, never the same one twice in a round.
#[derive(Debug)]
pub(super) struct PortGuesser {
    pub(super) random: SplitMix64,
    /// One bit per port.
    pub(super) guessed: Box<[u64; 1024]>,
    pub(super) count: usize,
}

impl PortGuesser {
    pub(super) fn new(seed: u64) -> Self {
        Self { random: SplitMix64::new(seed), guessed: Box::new([0; 1024]), count: 0 }
    }

    pub(super) fn contains(&self, port: u16) -> bool {
        self.guessed.get(usize::from(port / 64)).is_some_and(|word| word & (1 << (port % 64)) != 0)
    }

    /// Up to `n` ports in [`GUESS_PORTS`] not guessed before (fewer only once nearly all were).
    pub(super) fn next_batch(&mut self, n: usize) -> Vec<u16> {
        let (low, high) = (*GUESS_PORTS.start(), *GUESS_PORTS.end());
        let span = u64::from(high - low) + 1;
        let mut batch = Vec::with_capacity(n);
        // Rejection sampling, bounded: draws only repeat often once most ports were guessed.
        for _ in 0..n.saturating_mul(8) {
            if batch.len() == n {
                break;
            }
            let port = low + u16::try_from(self.random.next_u64() % span).unwrap_or(0);
            if self.contains(port) {
                continue;
            }
            if let Some(word) = self.guessed.get_mut(usize::from(port / 64)) {
                *word |= 1 << (port % 64);
            }
            self.count += 1;
            batch.push(port);
        }
        batch
    }
}

impl Traversal {
    /// The many-probe part of a round whose PUNCH_ME_NOW carried `flags` and the other peer's
    /// `candidates`: when exactly one side is behind endpoint-dependent mapping and the other is
    /// known to be endpoint-independent, extra sockets against guesses; when both are EDM, both
    /// guess (two-sided: a guess gets through when the other side's guess made the mapping it
    /// hits, and the mapping it came from is the port the other side guessed). An unknown side
    /// may be either: no spray.
    pub(super) fn spray_for(&mut self, start: Instant, flags: u8, candidates: &[Candidate]) -> Option<Spray> {
        if self.config.spray_sockets == 0 {
            return None;
        }
        let reflexive: Vec<SocketAddr> =
            candidates.iter().filter(|c| c.kind == CandidateKind::ServerReflexive).map(|c| c.address).collect();
        match candidate::flag_mappings(flags) {
            (Mapping::EndpointDependent, Mapping::EndpointIndependent) => {
                let mut targets: Vec<SocketAddr> = Vec::new();
                for address in reflexive {
                    if !targets.contains(&address) && targets.len() < MAX_SPRAY_TARGETS {
                        targets.push(address);
                    }
                }
                if targets.is_empty() {
                    return None;
                }
                self.stats.spray_rounds += 1;
                let first_transaction = self.random.next_u64();
                Some(Spray::Sockets { targets, first_transaction, state: SprayState::Idle })
            }
            (Mapping::EndpointIndependent, Mapping::EndpointDependent) => {
                let ip = reflexive.first()?.ip();
                let transaction = self.random.next_u64();
                let guesser = PortGuesser::new(self.random.next_u64());
                // Half an interval after the start: the other side's extra sockets, opened at the
                // start, have their mappings by then; a guess that arrives first is dropped.
                let next_batch = start + self.config.probe_interval / 2;
                let batch = usize::from(self.config.spray_guesses);
                Some(Spray::Guesses { ip, transaction, guesser, next_batch, batch })
            }
            (Mapping::EndpointDependent, Mapping::EndpointDependent) if self.config.birthday_guesses > 0 => {
                let ip = reflexive.first()?.ip();
                let transaction = self.random.next_u64();
                let guesser = PortGuesser::new(self.random.next_u64());
                self.stats.birthday_rounds += 1;
                let batch = usize::from(self.config.birthday_guesses);
                Some(Spray::Guesses { ip, transaction, guesser, next_batch: start, batch })
            }
            _ => None,
        }
    }
}
