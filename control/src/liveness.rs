//! Liveness of the cores: the control thread wakes every core about once a second (an idle core
//! sleeps in the kernel) and watches its loop-turn counter move. A core whose counter stands still
//! for [`STALL_AFTER`] is stalled; a core whose thread ended with an error or a panic is failed.
//! Each transition is logged once and counted.

use std::time::{Duration, Instant};

use ant_quic_dataplane::stats::{read, CoreStatus};
use ant_quic_dataplane::NodeHandle;

/// How often every core is woken so that an idle but healthy core still turns.
pub const WAKE_INTERVAL: Duration = Duration::from_secs(1);
/// A running core whose loop has not turned for this long is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// What the control thread knows about one core.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoreHealth {
    /// Not yet running.
    Starting,
    /// Its loop turns.
    Alive,
    /// Running, but its loop has not turned for this long.
    Stalled(Duration),
    /// Ended normally (shutdown).
    Stopped,
    /// Ended with an error or a panic.
    Failed(String),
}

impl CoreHealth {
    /// True only for [`CoreHealth::Alive`].
    pub fn is_alive(&self) -> bool {
        matches!(self, Self::Alive)
    }
}

#[derive(Debug)]
struct Watch {
    turns: u64,
    last_progress: Instant,
    health: CoreHealth,
    stalls: u64,
    failures: u64,
}

/// The liveness watch over every core of a node.
#[derive(Debug)]
pub struct Liveness {
    cores: Vec<Watch>,
    last_wake: Option<Instant>,
}

impl Liveness {
    /// Start watching `node`'s cores at `now`.
    pub fn new(node: &NodeHandle, now: Instant) -> Self {
        let cores = node
            .all_stats()
            .map(|s| Watch {
                turns: read(&s.loop_turns),
                last_progress: now,
                health: CoreHealth::Starting,
                stalls: 0,
                failures: 0,
            })
            .collect();
        let mut liveness = Self { cores, last_wake: None };
        liveness.tick(node, now);
        liveness
    }

    /// Wake the cores when due and update each core's health. Cheap; call every few ms.
    pub fn tick(&mut self, node: &NodeHandle, now: Instant) {
        if self.last_wake.is_none_or(|at| now.duration_since(at) >= WAKE_INTERVAL) {
            self.last_wake = Some(now);
            for core in 0..node.cores() {
                node.wake(core);
            }
        }
        for (core, (watch, stats)) in self.cores.iter_mut().zip(node.all_stats()).enumerate() {
            let turns = read(&stats.loop_turns);
            if turns != watch.turns {
                watch.turns = turns;
                watch.last_progress = now;
            }
            let health = match stats.status() {
                CoreStatus::Starting => CoreHealth::Starting,
                CoreStatus::Stopped => CoreHealth::Stopped,
                CoreStatus::Failed => {
                    CoreHealth::Failed(stats.failure.get().cloned().unwrap_or_else(|| "unknown failure".into()))
                }
                // Running (and any future state): judged by its heartbeat.
                _ => {
                    let still = now.saturating_duration_since(watch.last_progress);
                    if still >= STALL_AFTER {
                        CoreHealth::Stalled(still)
                    } else {
                        CoreHealth::Alive
                    }
                }
            };
            let changed = std::mem::discriminant(&health) != std::mem::discriminant(&watch.health);
            if changed {
                match &health {
                    CoreHealth::Stalled(still) => {
                        watch.stalls += 1;
                        tracing::error!(core, stalled_for = ?still, "core stalled: its loop does not turn");
                    }
                    CoreHealth::Failed(reason) => {
                        watch.failures += 1;
                        tracing::error!(core, %reason, "core failed");
                    }
                    CoreHealth::Alive if matches!(watch.health, CoreHealth::Stalled(_)) => {
                        tracing::warn!(core, "core turns again after a stall");
                    }
                    _ => {}
                }
            }
            watch.health = health;
        }
    }

    /// Health of each core, by index.
    pub fn health(&self) -> impl Iterator<Item = &CoreHealth> {
        self.cores.iter().map(|w| &w.health)
    }

    /// Stalls (transitions into stalled) seen on each core.
    pub fn stalls(&self) -> impl Iterator<Item = u64> + '_ {
        self.cores.iter().map(|w| w.stalls)
    }

    /// Failures (error or panic) seen on each core.
    pub fn failures(&self) -> impl Iterator<Item = u64> + '_ {
        self.cores.iter().map(|w| w.failures)
    }

    /// Why the node is not healthy, or `None` when every core is alive.
    pub fn unhealthy_reason(&self) -> Option<String> {
        self.cores.iter().enumerate().find_map(|(core, w)| match &w.health {
            CoreHealth::Alive => None,
            CoreHealth::Starting => Some(format!("core {core} is starting")),
            CoreHealth::Stalled(d) => Some(format!("core {core} stalled: no loop turn for {:.1} s", d.as_secs_f64())),
            CoreHealth::Stopped => Some(format!("core {core} stopped")),
            CoreHealth::Failed(reason) => Some(format!("core {core} failed: {reason}")),
        })
    }

    /// Why the node is not ready (a core not running), or `None`.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.cores.iter().enumerate().find_map(|(core, w)| match &w.health {
            CoreHealth::Alive | CoreHealth::Stalled(_) => None,
            CoreHealth::Starting => Some(format!("core {core} is not running yet")),
            CoreHealth::Stopped => Some(format!("core {core} stopped")),
            CoreHealth::Failed(reason) => Some(format!("core {core} failed: {reason}")),
        })
    }
}
