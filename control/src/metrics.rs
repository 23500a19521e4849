//! The node's metrics in the Prometheus text exposition format (version 0.0.4).
//!
//! At each scrape the per-core counters are read (relaxed loads; the cores never wait) and the
//! latency histograms the cores handed over are added into running totals.
//!
//! Format choice: the classic text format, not OpenMetrics. In OpenMetrics a counter family
//! `quic_bytes_transmitted` is exposed as `quic_bytes_transmitted_total`, and the runbook's
//! `rate(quic_bytes_transmitted[5m])` would find nothing. Here the series is named exactly
//! `quic_bytes_transmitted`; it is declared `untyped` (it only ever grows, so `rate()` is correct)
//! because `promtool check metrics` rejects a counter whose name lacks `_total`.
//!
//! Histograms (seconds) are converted from hdrhistogram data into cumulative `le` buckets, so
//! `histogram_quantile(0.99, rate(quic_handshake_duration_bucket[5m]))` works; the precise
//! percentiles since start (p50, p90, p99, p99.9 and max as quantile "1") are exported beside
//! them as a summary named `<histogram>_quantiles`. `_sum` comes from hdrhistogram's mean, exact to
//! its 1 % resolution.

use std::fmt::{Display, Write as _};
use std::sync::Arc;

use ant_quic_dataplane::admission::RefuseReason;
use ant_quic_dataplane::latency::LatencySet;
use ant_quic_dataplane::stats::{read, CloseClass, CoreStats, BATCH_BUCKETS};
use ant_quic_dataplane::{NodeHandle, RelayDrop};
use hdrhistogram::Histogram;

use crate::liveness::Liveness;
use crate::nat::NatMetrics;
use crate::registry::SharedRegistry;

/// A counter the binary provides (e.g. log lines dropped by the non-blocking writer).
pub type CounterFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Bucket bounds (seconds) for handshake durations.
const HANDSHAKE_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds (seconds) for RTT samples.
const RTT_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Bucket bounds (seconds) for the time to a direct connection.
const CONNECT_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Bucket bounds (seconds) for loop turns.
const LOOP_BUCKETS: [f64; 12] =
    [0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.01, 0.1];
/// Precise percentiles exported next to each histogram; 1.0 is the maximum.
const QUANTILES: [(f64, &str); 5] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999"), (1.0, "1")];

/// One core's samples of a family: (label name, label value, value); an empty name: no label.
type PerCore = dyn Fn(&CoreStats) -> Vec<(&'static str, &'static str, u64)>;

/// Merges what the cores recorded and encodes it. Owned by the control thread.
pub struct Metrics {
    node: NodeHandle,
    nat: Option<Arc<NatMetrics>>,
    registry: Option<SharedRegistry>,
    latency: Option<LatencySet>,
    log_lines_dropped: Option<CounterFn>,
    /// This process's generation on its port (1 unless it took over from a predecessor).
    generation: u16,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of `node`; `log_lines_dropped` reports lines the logger dropped under pressure.
    pub fn new(node: NodeHandle, log_lines_dropped: Option<CounterFn>) -> Self {
        Self { node, nat: None, registry: None, latency: LatencySet::new(), log_lines_dropped, generation: 1 }
    }

    /// Export `generation` as this process's generation (`ant_quic_generation`).
    pub fn with_generation(mut self, generation: u16) -> Self {
        self.generation = generation;
        self
    }

    /// Include the NAT traversal series of `nat`.
    pub fn with_nat(mut self, nat: Option<Arc<NatMetrics>>) -> Self {
        self.nat = nat;
        self
    }

    /// Include the peer registry's series (`ant_quic_registry_*`).
    pub fn with_registry(mut self, registry: Option<SharedRegistry>) -> Self {
        self.registry = registry;
        self
    }

    fn encode_registry(&self, out: &mut Text) {
        let Some(registry) = &self.registry else { return };
        let s = registry.stats();
        out.family(
            "ant_quic_registry_peers",
            "gauge",
            "Peers registered here (local) and across the federation (global).",
        );
        out.sample("ant_quic_registry_peers", &[("scope", "local")], s.local);
        out.sample("ant_quic_registry_peers", &[("scope", "global")], s.global);
        out.family(
            "ant_quic_registry_lookups_total",
            "counter",
            "Registry lookups by result: a peer registered here, at another bootstrap, or unknown.",
        );
        out.sample("ant_quic_registry_lookups_total", &[("result", "local")], s.lookups_local);
        out.sample("ant_quic_registry_lookups_total", &[("result", "remote")], s.lookups_remote);
        out.sample("ant_quic_registry_lookups_total", &[("result", "miss")], s.lookups_miss);
        out.family("ant_quic_registry_writes_total", "counter", "Writes to the shared registry's store, by operation.");
        out.sample("ant_quic_registry_writes_total", &[("op", "put")], s.puts);
        out.sample("ant_quic_registry_writes_total", &[("op", "delete")], s.deletes);
        out.family("ant_quic_registry_errors_total", "counter", "Failures of the shared registry's store.");
        out.sample("ant_quic_registry_errors_total", &[], s.errors);
        out.family(
            "ant_quic_registry_degraded",
            "gauge",
            "1 while the store is unreachable (own peers served from memory only), else 0.",
        );
        out.sample("ant_quic_registry_degraded", &[], u8::from(s.degraded));
    }

    fn encode_nat(&self, out: &mut Text) {
        let snapshot = self.nat.as_ref().map(|n| n.snapshot());
        let attempts = snapshot.as_ref().map(|s| s.attempts).unwrap_or_default();
        out.family(
            "nat_traversal_success_rate",
            "gauge",
            "Share of NAT traversal attempts that connected (direct or relayed): this node's own and those peers reported to it as their bootstrap. NaN before the first attempt.",
        );
        let rate = snapshot.as_ref().and_then(|s| s.success_rate());
        out.sample("nat_traversal_success_rate", &[], rate.map_or_else(|| "NaN".to_owned(), |r| r.to_string()));
        out.family("nat_traversal_attempts_total", "counter", "NAT traversal attempts by outcome and path.");
        let [direct, relayed, failed] = attempts;
        out.sample("nat_traversal_attempts_total", &[("outcome", "connected"), ("path", "direct")], direct);
        out.sample("nat_traversal_attempts_total", &[("outcome", "connected"), ("path", "relayed")], relayed);
        out.sample("nat_traversal_attempts_total", &[("outcome", "failed"), ("path", "none")], failed);
        out.family("nat_traversal_upgrades_total", "counter", "Relayed connections moved to a direct path.");
        out.sample("nat_traversal_upgrades_total", &[], snapshot.as_ref().map_or(0, |s| s.upgrades));
        let coordinator = snapshot.as_ref().map(|s| s.coordinator).unwrap_or_default();
        out.family("nat_registered_peers", "gauge", "Peers registered with this node as their bootstrap.");
        out.sample("nat_registered_peers", &[], coordinator.registered_peers);
        out.family(
            "nat_punches_coordinated_total",
            "counter",
            "Hole punches this node coordinated (PUNCH_ME_NOW pairs).",
        );
        out.sample("nat_punches_coordinated_total", &[], coordinator.punches);
        out.family("nat_relay_grants_total", "counter", "Relay allocations this node granted.");
        out.sample("nat_relay_grants_total", &[], coordinator.relay_grants);
        out.family("nat_signalling_rejected_total", "counter", "Signalling messages refused, by reason.");
        out.sample("nat_signalling_rejected_total", &[("reason", "rate_limited")], coordinator.rate_limited);
        out.sample("nat_signalling_rejected_total", &[("reason", "malformed")], coordinator.malformed);
        out.family("nat_relay_renewals_total", "counter", "Relay allocations this node renewed for live connections.");
        out.sample("nat_relay_renewals_total", &[], snapshot.as_ref().map_or(0, |s| s.relays_renewed));
        let [punched, failed] = snapshot.as_ref().map(|s| s.forwards).unwrap_or_default();
        out.family(
            "nat_forwards_total",
            "counter",
            "Connection requests for peers registered at another bootstrap that this node forwarded there, by result: punched (that bootstrap coordinated the punch) or failed (no link, an error, or no answer in time).",
        );
        out.sample("nat_forwards_total", &[("result", "punched")], punched);
        out.sample("nat_forwards_total", &[("result", "failed")], failed);
        out.family(
            "nat_forwards_received_total",
            "counter",
            "Connection requests other bootstraps forwarded to this one: coordinated, or refused (the sender is not on the allow-list).",
        );
        out.sample("nat_forwards_received_total", &[("result", "coordinated")], coordinator.forwards_received);
        out.sample("nat_forwards_received_total", &[("result", "refused")], coordinator.forwards_refused);
        out.family(
            "nat_relays_across_total",
            "counter",
            "Relays handed across bootstraps: peers this node sent to the bootstrap their target is registered at, to be relayed there (RELAY_AT).",
        );
        out.sample("nat_relays_across_total", &[], coordinator.relays_across);
        let traversal = snapshot.as_ref().map(|s| s.traversal).unwrap_or_default();
        out.family(
            "nat_probes_total",
            "counter",
            "Connectivity-check datagrams of this node's hole punching: probes sent (from the node socket, from extra sockets of many-probe rounds, to guessed ports), probes answered, acks received, and datagrams with an unknown token (ignored).",
        );
        out.sample("nat_probes_total", &[("kind", "sent")], traversal.probes_sent);
        out.sample("nat_probes_total", &[("kind", "sent_extra_socket")], traversal.spray_probes_sent);
        out.sample("nat_probes_total", &[("kind", "sent_guessed_port")], traversal.guesses_sent);
        out.sample("nat_probes_total", &[("kind", "answered")], traversal.probes_received);
        out.sample("nat_probes_total", &[("kind", "acked")], traversal.probes_acked);
        out.sample("nat_probes_total", &[("kind", "unknown_token")], traversal.unknown_token);
        out.family(
            "nat_many_probe_rounds_total",
            "counter",
            "Many-probe (birthday) rounds this node sprayed from extra sockets, those an extra socket won, and two-sided rounds (both peers behind endpoint-dependent mapping) it guessed in.",
        );
        out.sample("nat_many_probe_rounds_total", &[("outcome", "sprayed")], traversal.spray_rounds);
        out.sample("nat_many_probe_rounds_total", &[("outcome", "won")], traversal.spray_wins);
        out.sample("nat_many_probe_rounds_total", &[("outcome", "two_sided")], traversal.birthday_rounds);
        out.family(
            "nat_relay_at_received_total",
            "counter",
            "RELAY_ATs this node received as a peer: followed (it asked the relay at its target's bootstrap) or ignored (they answered no request of its own).",
        );
        out.sample("nat_relay_at_received_total", &[("outcome", "followed")], traversal.relay_at_followed);
        out.sample("nat_relay_at_received_total", &[("outcome", "ignored")], traversal.relay_at_ignored);
        let [answered, rate_limited] = snapshot.as_ref().map(|s| s.discovery).unwrap_or_default();
        out.family(
            "nat_discovery_answers_total",
            "counter",
            "Mapping discovery datagrams this node's alternate addresses answered, and refused past the rate cap.",
        );
        out.sample("nat_discovery_answers_total", &[("outcome", "answered")], answered);
        out.sample("nat_discovery_answers_total", &[("outcome", "rate_limited")], rate_limited);
        if let Some(histogram) = snapshot.as_ref().and_then(|s| s.time_to_direct.as_ref()) {
            out.histogram(
                "nat_traversal_time_to_direct_seconds",
                "Time from a connect request to a direct path: a direct connection, or a relayed one moved to a direct path, in seconds.",
                histogram,
                &CONNECT_BUCKETS,
            );
        }
        if let Some(histogram) = snapshot.as_ref().and_then(|s| s.forward_time.as_ref()) {
            out.histogram(
                "nat_forward_seconds",
                "Time from a connection request forwarded to another bootstrap to that bootstrap's answer, in seconds.",
                histogram,
                &CONNECT_BUCKETS,
            );
        }
        if let Some(histogram) = snapshot.as_ref().and_then(|s| s.first_byte.as_ref()) {
            out.histogram(
                "nat_traversal_first_byte_seconds",
                "Time from a connect request to the connection that carries the application's first byte (direct, or through the relay), in seconds.",
                histogram,
                &CONNECT_BUCKETS,
            );
        }
    }

    /// Add up the histograms the cores handed over, and ask them for fresh ones (they arrive by
    /// the next call; a busy core hands over every 250 ms anyway).
    pub fn merge_latency(&mut self) {
        for core in 0..self.node.cores() {
            let total = &mut self.latency;
            self.node.take_latency(core, |set| {
                if let Some(total) = total.as_mut() {
                    total.add(set);
                }
            });
        }
        self.node.request_latency();
    }

    /// The merged latency histograms since start.
    pub fn latency(&self) -> Option<&LatencySet> {
        self.latency.as_ref()
    }

    /// Merge and encode everything in the Prometheus text format.
    pub fn encode(&mut self, liveness: Option<&Liveness>) -> String {
        self.merge_latency();
        let mut out = Text(String::with_capacity(16 * 1024));
        let cores: Vec<&CoreStats> = self.node.all_stats().collect();
        let sum = |f: &dyn Fn(&CoreStats) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();

        // The runbook's names.
        out.family("quic_connections_total", "counter", "QUIC connections established (handshake completed).");
        out.sample("quic_connections_total", &[], sum(&|c| read(&c.handshakes_completed)));
        out.family("quic_connections_active", "gauge", "QUIC connections currently open.");
        out.sample("quic_connections_active", &[], sum(&|c| read(&c.connections_active)));
        out.family(
            "quic_peer_address_changes_total",
            "counter",
            "Times a connection's peer address changed (migration, NAT rebinding).",
        );
        out.sample("quic_peer_address_changes_total", &[], sum(&|c| read(&c.peer_address_changes)));
        out.family(
            "quic_preferred_address_migrations_total",
            "counter",
            "Connections whose client moved to the node's preferred address ([node] preferred_address).",
        );
        out.sample("quic_preferred_address_migrations_total", &[], sum(&|c| read(&c.preferred_address_migrations)));
        out.family(
            "quic_bytes_transmitted",
            "untyped",
            "UDP payload bytes sent and received by the node (monotonic; use rate()).",
        );
        out.sample("quic_bytes_transmitted", &[("direction", "sent")], sum(&|c| read(&c.tx_bytes)));
        out.sample("quic_bytes_transmitted", &[("direction", "received")], sum(&|c| read(&c.rx_bytes)));
        self.encode_nat(&mut out);
        self.encode_registry(&mut out);

        out.family("quic_errors_total", "counter", "Errors by kind: connection ends other than graceful closes, handshake and connect failures, failed UDP sends.");
        for class in CloseClass::ALL.into_iter().filter(|c| c.is_error()) {
            out.sample("quic_errors_total", &[("kind", class.name())], sum(&|c| c.closes(class)));
        }
        out.sample("quic_errors_total", &[("kind", "handshake_failed")], sum(&|c| read(&c.handshake_failures)));
        out.sample("quic_errors_total", &[("kind", "connect_failed")], sum(&|c| read(&c.connect_failures)));
        out.sample("quic_errors_total", &[("kind", "send_failed")], sum(&|c| read(&c.tx_errors)));
        // Admission under load (dataplane::admission): Retry, the half-open cap, handshake timeouts.
        out.family("quic_handshakes_in_flight", "gauge", "Accepted connections whose handshake has not completed.");
        out.sample("quic_handshakes_in_flight", &[], sum(&|c| read(&c.handshakes_in_flight)));
        out.family("quic_retry_sent_total", "counter", "Retry packets sent to make clients prove their address.");
        out.sample("quic_retry_sent_total", &[], sum(&|c| read(&c.retry_sent)));
        out.family("quic_handshakes_refused_total", "counter", "Connection attempts refused, by reason.");
        for reason in RefuseReason::ALL {
            out.sample(
                "quic_handshakes_refused_total",
                &[("reason", reason.label())],
                sum(&|c| c.handshakes_refused(reason)),
            );
        }
        out.family(
            "quic_handshakes_timed_out_total",
            "counter",
            "Accepted connections dropped because their handshake did not complete within the handshake timeout.",
        );
        out.sample("quic_handshakes_timed_out_total", &[], sum(&|c| read(&c.handshakes_timed_out)));
        out.family("quic_connection_closes_total", "counter", "Connections ended, by how they ended.");
        for class in CloseClass::ALL {
            out.sample("quic_connection_closes_total", &[("reason", class.name())], sum(&|c| c.closes(class)));
        }

        // Relaying (bootstrap role): frames forwarded between the two ends of an allocation.
        out.family("relay_packets_total", "counter", "Relay frames forwarded between the two ends of an allocation.");
        out.sample("relay_packets_total", &[], sum(&|c| read(&c.relay_forwarded)));
        out.family("relay_bytes_total", "counter", "Bytes of relay frames forwarded (5-byte relay header included).");
        out.sample("relay_bytes_total", &[], sum(&|c| read(&c.relay_forwarded_bytes)));
        out.family(
            "relay_xdp_packets_total",
            "counter",
            "Of relay_packets_total, the frames the XDP program forwarded itself (af-xdp backend), counted when a core reads the channel map (about once a second).",
        );
        out.sample("relay_xdp_packets_total", &[], sum(&|c| read(&c.relay_xdp_forwarded)));
        out.family("relay_dropped_total", "counter", "Relay frames not forwarded, by reason.");
        for reason in RelayDrop::ALL {
            out.sample("relay_dropped_total", &[("reason", reason.name())], sum(&|c| c.relay_drops(reason)));
        }
        out.family(
            "relay_allocations_active",
            "gauge",
            "Relay allocations installed (every core holds the same table; the largest is shown).",
        );
        let allocations = cores.iter().map(|c| read(&c.relay_allocations)).max().unwrap_or(0);
        out.sample("relay_allocations_active", &[], allocations);

        if let Some(latency) = &self.latency {
            out.histogram(
                "quic_handshake_duration",
                "QUIC handshake duration in seconds, from connection creation to handshake completion.",
                &latency.handshake,
                &HANDSHAKE_BUCKETS,
            );
            out.histogram(
                "quic_rtt_seconds",
                "Smoothed RTT samples of connections, in seconds.",
                &latency.rtt,
                &RTT_BUCKETS,
            );
            out.histogram(
                "ant_quic_core_loop_turn_seconds",
                "Time cores spend on one event-loop turn (sleep excluded), in seconds.",
                &latency.loop_turn,
                &LOOP_BUCKETS,
            );
        }

        // The data plane's own.
        out.family("ant_quic_backend_info", "gauge", "The I/O backend the cores run (value 1).");
        out.sample("ant_quic_backend_info", &[("backend", self.node.backend().name())], 1);
        out.family("ant_quic_cores", "gauge", "Data-plane cores.");
        out.sample("ant_quic_cores", &[], cores.len());
        out.family(
            "ant_quic_generation",
            "gauge",
            "This process's generation on its port: 1 when started alone, its predecessor's + 1 after a takeover.",
        );
        out.sample("ant_quic_generation", &[], self.generation);
        let per_core = |out: &mut Text, name: &str, kind: &str, help: &str, f: &PerCore| {
            out.family(name, kind, help);
            for (index, c) in cores.iter().enumerate() {
                let core = index.to_string();
                for (label, value, n) in f(c) {
                    if label.is_empty() {
                        out.sample(name, &[("core", &core)], n);
                    } else {
                        out.sample(name, &[("core", &core), (label, value)], n);
                    }
                }
            }
        };
        per_core(&mut out, "ant_quic_core_packets_total", "counter", "UDP datagrams per core and direction.", &|c| {
            vec![("direction", "sent", read(&c.tx_datagrams)), ("direction", "received", read(&c.rx_datagrams))]
        });
        per_core(&mut out, "ant_quic_core_bytes_total", "counter", "UDP payload bytes per core and direction.", &|c| {
            vec![("direction", "sent", read(&c.tx_bytes)), ("direction", "received", read(&c.rx_bytes))]
        });
        per_core(&mut out, "ant_quic_core_drops_total", "counter", "Received datagrams dropped, by reason.", &|c| {
            vec![
                ("reason", "handoff_queue_full", read(&c.drops_handoff_full)),
                ("reason", "malformed", read(&c.drops_malformed)),
                ("reason", "refused", read(&c.drops_refused)),
                ("reason", "no_receive_buffers", read(&c.rx_no_buffers)),
                ("reason", "truncated", read(&c.rx_truncated)),
                ("reason", "not_quic", read(&c.drops_not_quic)),
            ]
        });
        per_core(
            &mut out,
            "ant_quic_core_control_datagrams_total",
            "counter",
            "Control datagrams (NAT traversal probes): received and delivered to the control thread or dropped, or dropped before sending (too many waiting for a congested socket).",
            &|c| {
                vec![
                    ("outcome", "delivered", read(&c.control_datagrams_in)),
                    ("outcome", "dropped", read(&c.control_datagrams_dropped)),
                    ("outcome", "send_dropped", read(&c.send_datagrams_dropped)),
                ]
            },
        );
        out.family(
            "ant_quic_path_alias_datagrams_total",
            "counter",
            "Datagrams of connections to path aliases, by direction and route (relay or direct).",
        );
        let alias = "ant_quic_path_alias_datagrams_total";
        out.sample(alias, &[("direction", "sent"), ("route", "relay")], sum(&|c| read(&c.alias_sent_relay)));
        out.sample(alias, &[("direction", "sent"), ("route", "direct")], sum(&|c| read(&c.alias_sent_direct)));
        out.sample(alias, &[("direction", "received"), ("route", "relay")], sum(&|c| read(&c.alias_received_relay)));
        out.sample(alias, &[("direction", "received"), ("route", "direct")], sum(&|c| read(&c.alias_received_direct)));
        out.family(
            "ant_quic_path_alias_dropped_total",
            "counter",
            "Datagrams to a path alias dropped because the alias had no route.",
        );
        out.sample("ant_quic_path_alias_dropped_total", &[], sum(&|c| read(&c.alias_dropped_no_route)));
        out.family(
            "ant_quic_foreign_generation_datagrams_total",
            "counter",
            "Datagrams whose connection ID or relay channel names another generation of this node (a predecessor or successor sharing the port during a takeover); dropped.",
        );
        out.sample("ant_quic_foreign_generation_datagrams_total", &[], sum(&|c| read(&c.foreign_generation)));
        per_core(
            &mut out,
            "ant_quic_core_handoffs_total",
            "counter",
            "Datagrams handed between cores (out: to the owning core; in: from another core).",
            &|c| vec![("direction", "out", read(&c.handoffs_out)), ("direction", "in", read(&c.handoffs_in))],
        );
        per_core(
            &mut out,
            "ant_quic_core_gso_fallbacks_total",
            "counter",
            "GSO sends refused by the kernel and resent one datagram at a time.",
            &|c| vec![("", "", read(&c.gso_fallbacks))],
        );
        per_core(
            &mut out,
            "ant_quic_core_af_xdp_datagrams_total",
            "counter",
            "With the af-xdp backend: datagrams received and sent through the AF_XDP socket or the UDP socket beside it, and frames in the AF_XDP socket that were not for the node (dropped).",
            &|c| {
                vec![
                    ("path", "received_af_xdp", read(&c.xdp_rx_datagrams)),
                    ("path", "received_udp_socket", read(&c.xdp_socket_rx_datagrams)),
                    ("path", "sent_af_xdp", read(&c.xdp_tx_datagrams)),
                    ("path", "sent_udp_socket", read(&c.xdp_socket_tx_datagrams)),
                    ("path", "not_ours", read(&c.xdp_frames_not_ours)),
                ]
            },
        );
        let program = self.node.xdp_program_frames();
        if !program.is_empty() {
            let name = "ant_quic_xdp_program_frames_total";
            out.family(
                name,
                "counter",
                "With the af-xdp backend: frames the XDP program saw on the interface, by verdict: redirected (the node's datagram, to its AF_XDP socket), passed_not_ours (to the kernel), passed_no_socket (the node's, but no socket on its RX queue: to the kernel), relayed (a relay frame sent back out).",
            );
            for (verdict, frames) in program {
                out.sample(name, &[("verdict", verdict)], frames);
            }
        }
        per_core(
            &mut out,
            "ant_quic_core_loop_turns_total",
            "counter",
            "Event-loop turns (the liveness heartbeat).",
            &|c| vec![("", "", read(&c.loop_turns))],
        );
        let busy = "ant_quic_core_busy_seconds_total";
        out.family(
            busy,
            "counter",
            "Seconds the core's loop spent working, sleep excluded (its rate is the core's busy share).",
        );
        for (index, c) in cores.iter().enumerate() {
            out.sample(busy, &[("core", &index.to_string())], read(&c.busy_nanos) as f64 / 1e9);
        }
        per_core(&mut out, "ant_quic_core_connections_active", "gauge", "Connections open on the core.", &|c| {
            vec![("", "", read(&c.connections_active))]
        });
        per_core(
            &mut out,
            "ant_quic_core_connections_accepted_total",
            "counter",
            "Connections accepted from peers.",
            &|c| vec![("", "", read(&c.connections_accepted))],
        );
        per_core(&mut out, "ant_quic_core_connections_opened_total", "counter", "Connections opened to peers.", &|c| {
            vec![("", "", read(&c.connections_opened))]
        });
        out.family(
            "ant_quic_core_batch_datagrams",
            "histogram",
            "Datagrams per receive completion (GRO) or send (GSO); _sum is the datagrams counted.",
        );
        for (index, c) in cores.iter().enumerate() {
            let core = index.to_string();
            for (direction, buckets, datagrams) in [
                ("received", c.rx_batch.snapshot(), read(&c.rx_datagrams)),
                ("sent", c.tx_batch.snapshot(), read(&c.tx_datagrams)),
            ] {
                let mut cumulative = 0;
                for (bound, n) in BATCH_BUCKETS.iter().zip(buckets) {
                    cumulative += n;
                    let le = if *bound == u64::MAX { "+Inf".to_owned() } else { bound.to_string() };
                    out.sample(
                        "ant_quic_core_batch_datagrams_bucket",
                        &[("core", &core), ("direction", direction), ("le", &le)],
                        cumulative,
                    );
                }
                out.sample(
                    "ant_quic_core_batch_datagrams_sum",
                    &[("core", &core), ("direction", direction)],
                    datagrams,
                );
                out.sample(
                    "ant_quic_core_batch_datagrams_count",
                    &[("core", &core), ("direction", direction)],
                    cumulative,
                );
            }
        }

        if let Some(liveness) = liveness {
            out.family(
                "ant_quic_core_alive",
                "gauge",
                "1 while the core's loop turns, 0 when stalled, stopped or failed.",
            );
            for (core, health) in liveness.health().enumerate() {
                out.sample("ant_quic_core_alive", &[("core", &core.to_string())], u8::from(health.is_alive()));
            }
            out.family("ant_quic_core_stalls_total", "counter", "Times a core's loop stopped turning for 2 s or more.");
            for (core, n) in liveness.stalls().enumerate() {
                out.sample("ant_quic_core_stalls_total", &[("core", &core.to_string())], n);
            }
            out.family("ant_quic_core_failures_total", "counter", "Core threads that ended with an error or a panic.");
            for (core, n) in liveness.failures().enumerate() {
                out.sample("ant_quic_core_failures_total", &[("core", &core.to_string())], n);
            }
        }
        if let Some(dropped) = &self.log_lines_dropped {
            out.family(
                "ant_quic_log_lines_dropped_total",
                "counter",
                "Log lines dropped because the log writer was behind or its output refused them (a full disk).",
            );
            out.sample("ant_quic_log_lines_dropped_total", &[], dropped());
        }
        out.0
    }
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here are our own names and numbers: nothing to escape.
                let _ = write!(self.0, "{key}=\"{value}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram (nanosecond data, exported in seconds) and its precise percentiles.
    fn histogram(&mut self, name: &str, help: &str, hist: &Histogram<u64>, bounds: &[f64]) {
        self.family(name, "histogram", help);
        let mut counts = vec![0u64; bounds.len()];
        let mut beyond = 0u64;
        for step in hist.iter_recorded() {
            let seconds = step.value_iterated_to() as f64 / 1e9;
            match bounds.iter().position(|&b| seconds <= b) {
                Some(i) => {
                    if let Some(c) = counts.get_mut(i) {
                        *c += step.count_since_last_iteration();
                    }
                }
                None => beyond += step.count_since_last_iteration(),
            }
        }
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(&counts) {
            cumulative += n;
            self.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], cumulative);
        }
        cumulative += beyond;
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], cumulative);
        let sum = hist.mean() * hist.len() as f64 / 1e9;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], hist.len());

        let summary = format!("{name}_quantiles");
        self.family(
            &summary,
            "summary",
            &format!("Precise percentiles since start of {name} (quantile 1 is the maximum), in seconds."),
        );
        for (q, label) in QUANTILES {
            let value = if hist.is_empty() {
                0.0
            } else if q >= 1.0 {
                hist.max() as f64 / 1e9
            } else {
                hist.value_at_quantile(q) as f64 / 1e9
            };
            self.sample(&summary, &[("quantile", label)], value);
        }
        self.sample(&format!("{summary}_sum"), &[], sum);
        self.sample(&format!("{summary}_count"), &[], hist.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(f64::NAN, |v| v.parse().unwrap())
    }

    #[test]
    fn histogram_buckets_are_cumulative_seconds_and_percentiles_precise() {
        let mut hist = ant_quic_dataplane::latency::new_histogram().unwrap();
        // 90 handshakes of 2 ms, 9 of 20 ms, one of 3 s.
        hist.record_n(2_000_000, 90).unwrap();
        hist.record_n(20_000_000, 9).unwrap();
        hist.record(3_000_000_000).unwrap();
        let mut out = Text(String::new());
        out.histogram("h", "test", &hist, &HANDSHAKE_BUCKETS);
        let text = out.0;
        assert_eq!(value(&text, "h_bucket{le=\"0.001\"}"), 0.0);
        assert_eq!(value(&text, "h_bucket{le=\"0.0025\"}"), 90.0);
        assert_eq!(value(&text, "h_bucket{le=\"0.025\"}"), 99.0);
        assert_eq!(value(&text, "h_bucket{le=\"2.5\"}"), 99.0);
        assert_eq!(value(&text, "h_bucket{le=\"5\"}"), 100.0);
        assert_eq!(value(&text, "h_bucket{le=\"+Inf\"}"), 100.0);
        assert_eq!(value(&text, "h_count"), 100.0);
        let sum = value(&text, "h_sum");
        assert!((sum - 3.36).abs() < 0.05, "sum {sum}");
        let p50 = value(&text, "h_quantiles{quantile=\"0.5\"}");
        assert!((p50 - 0.002).abs() < 0.00005, "p50 {p50}");
        let p99 = value(&text, "h_quantiles{quantile=\"0.99\"}");
        assert!((p99 - 0.020).abs() < 0.0005, "p99 {p99}");
        let max = value(&text, "h_quantiles{quantile=\"1\"}");
        assert!((max - 3.0).abs() < 0.05, "max {max}");
    }

    #[test]
    fn empty_histogram_encodes_zeros() {
        let hist = ant_quic_dataplane::latency::new_histogram().unwrap();
        let mut out = Text(String::new());
        out.histogram("h", "test", &hist, &RTT_BUCKETS);
        assert_eq!(value(&out.0, "h_bucket{le=\"+Inf\"}"), 0.0);
        assert_eq!(value(&out.0, "h_count"), 0.0);
        assert_eq!(value(&out.0, "h_quantiles{quantile=\"0.99\"}"), 0.0);
    }
}
