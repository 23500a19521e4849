//! What `top` shows, computed from two scrapes of `/metrics` taken `interval` apart: gauges as
//! the second scrape has them, counters as per-second rates over the interval, histograms as
//! p50/p99 of the interval's observations. No I/O, no clock: the driver brings both.

use serde::Serialize;

use super::scrape::{Sample, Scrape};

/// One refresh of the view (also what `--once` prints as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Seconds between the two scrapes the rates are computed over.
    pub interval_seconds: f64,
    pub backend: Option<String>,
    pub generation: Option<f64>,
    pub cores: Vec<CoreRow>,
    /// Open QUIC connections (`quic_connections_active`).
    pub connections: f64,
    pub handshakes_in_flight: f64,
    pub handshakes_per_second: f64,
    pub handshake_seconds: Quantiles,
    pub rtt_seconds: Quantiles,
    /// UDP payload bytes per second, over all cores.
    pub rx_bytes_per_second: f64,
    pub tx_bytes_per_second: f64,
    pub nat: Nat,
    pub relay: Relay,
    /// `quic_errors_total` by kind, with the kinds that never happened left out.
    pub errors: Vec<ErrorKind>,
}

/// One data-plane core.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoreRow {
    pub core: u32,
    /// `running`, `stalled` (its loop stopped turning) or `failed`.
    pub state: &'static str,
    pub connections: f64,
    pub rx_packets_per_second: f64,
    pub tx_packets_per_second: f64,
    pub rx_bytes_per_second: f64,
    pub tx_bytes_per_second: f64,
    /// Share of the interval the core's loop was working (0-100); `None` from a node that does not
    /// export `ant_quic_core_busy_seconds_total`.
    pub busy_percent: Option<f64>,
    /// Datagrams handed to or from other cores, per second.
    pub handoffs_per_second: f64,
    /// Received datagrams dropped, per second (every reason).
    pub drops_per_second: f64,
}

/// p50 and p99 of a latency histogram, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Observations they come from: the interval's, or (when it had none) all since the start.
    pub observations: f64,
    /// `interval` or `since_start`.
    pub over: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nat {
    /// Traversal attempts since the start, and per second.
    pub attempts: f64,
    pub attempts_per_second: f64,
    /// Share of attempts that connected, since the start (`None` before the first one).
    pub success_rate: Option<f64>,
    /// Peers registered with this node as their bootstrap.
    pub registered_peers: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Relay {
    pub allocations: f64,
    pub forwarded_bytes_per_second: f64,
    pub forwarded_packets_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorKind {
    pub kind: String,
    pub total: f64,
    pub per_second: f64,
}

impl Snapshot {
    /// The view between scrape `before` and scrape `after`, taken `interval_seconds` later.
    pub fn between(before: &Scrape, after: &Scrape, interval_seconds: f64) -> Self {
        let rates = Rates { before, after, seconds: interval_seconds.max(f64::MIN_POSITIVE) };
        // A gauge as it is now, or a counter's total since the start.
        let now = |name: &str| after.sum(name, &[]).unwrap_or(0.0);
        let cores = core_numbers(after).into_iter().map(|core| rates.core(core)).collect();
        let attempts = now("nat_traversal_attempts_total");
        let connected = after.sum("nat_traversal_attempts_total", &[("outcome", "connected")]).unwrap_or(0.0);
        let errors = after
            .series("quic_errors_total", &[])
            .filter_map(|s| {
                let kind = s.label("kind")?;
                let labels = [("kind", kind)];
                Some(ErrorKind {
                    kind: kind.to_owned(),
                    total: s.value,
                    per_second: rates.rate("quic_errors_total", &labels),
                })
            })
            .filter(|e| e.total > 0.0)
            .collect();
        Self {
            interval_seconds,
            backend: after.series("ant_quic_backend_info", &[]).find_map(|s| s.label("backend")).map(str::to_owned),
            generation: after.value("ant_quic_generation", &[]),
            cores,
            connections: now("quic_connections_active"),
            handshakes_in_flight: now("quic_handshakes_in_flight"),
            handshakes_per_second: rates.rate("quic_connections_total", &[]),
            handshake_seconds: quantiles(before, after, "quic_handshake_duration"),
            rtt_seconds: quantiles(before, after, "quic_rtt_seconds"),
            rx_bytes_per_second: rates.rate("quic_bytes_transmitted", &[("direction", "received")]),
            tx_bytes_per_second: rates.rate("quic_bytes_transmitted", &[("direction", "sent")]),
            nat: Nat {
                attempts,
                attempts_per_second: rates.rate("nat_traversal_attempts_total", &[]),
                success_rate: (attempts > 0.0).then(|| connected / attempts),
                registered_peers: now("nat_registered_peers"),
            },
            relay: Relay {
                allocations: now("relay_allocations_active"),
                forwarded_bytes_per_second: rates.rate("relay_bytes_total", &[]),
                forwarded_packets_per_second: rates.rate("relay_packets_total", &[]),
            },
            errors,
        }
    }

    /// Sum of every error kind's rate.
    pub fn errors_per_second(&self) -> f64 {
        self.errors.iter().fold(0.0, |sum, e| sum + e.per_second)
    }
}

/// Counter rates between two scrapes.
struct Rates<'a> {
    before: &'a Scrape,
    after: &'a Scrape,
    seconds: f64,
}

impl Rates<'_> {
    /// Per-second increase of the sum of the series `name` with `labels`. A counter that went
    /// down was reset (the node restarted): its increase is its new value, as Prometheus' rate().
    fn rate(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let increase = self.after.series(name, labels).fold(0.0, |sum, s| sum + increase(self.before, s));
        increase / self.seconds
    }

    fn core(&self, core: u32) -> CoreRow {
        let id = core.to_string();
        let on = |extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![("core", id.as_str())];
            labels.extend(extra);
            labels
        };
        let rate = |name: &str, extra| self.rate(name, &on(extra));
        let busy = self.after.value("ant_quic_core_busy_seconds_total", &on(None)).map(|_| {
            // A share of the interval: at most all of it, whatever the clocks did.
            (rate("ant_quic_core_busy_seconds_total", None) * 100.0).clamp(0.0, 100.0)
        });
        let failed = self.after.value("ant_quic_core_failures_total", &on(None)).unwrap_or(0.0) > 0.0;
        let alive = self.after.value("ant_quic_core_alive", &on(None)).unwrap_or(1.0) > 0.0;
        CoreRow {
            core,
            state: if failed {
                "failed"
            } else if alive {
                "running"
            } else {
                "stalled"
            },
            connections: self.after.value("ant_quic_core_connections_active", &on(None)).unwrap_or(0.0),
            rx_packets_per_second: rate("ant_quic_core_packets_total", Some(("direction", "received"))),
            tx_packets_per_second: rate("ant_quic_core_packets_total", Some(("direction", "sent"))),
            rx_bytes_per_second: rate("ant_quic_core_bytes_total", Some(("direction", "received"))),
            tx_bytes_per_second: rate("ant_quic_core_bytes_total", Some(("direction", "sent"))),
            busy_percent: busy,
            handoffs_per_second: rate("ant_quic_core_handoffs_total", None),
            drops_per_second: rate("ant_quic_core_drops_total", None),
        }
    }
}

/// How much `sample` grew since the same series in `before` (its whole value when the series is
/// new there or went down).
fn increase(before: &Scrape, sample: &Sample) -> f64 {
    let labels: Vec<(&str, &str)> = sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let previous = before.series(&sample.name, &labels).find(|s| s.labels.len() == sample.labels.len());
    match previous {
        Some(previous) if previous.value <= sample.value => sample.value - previous.value,
        _ => sample.value,
    }
}

/// The cores the scrape has per-core series of, in order.
fn core_numbers(scrape: &Scrape) -> Vec<u32> {
    let mut cores: Vec<u32> =
        scrape.series("ant_quic_core_packets_total", &[]).filter_map(|s| s.label("core")?.parse().ok()).collect();
    cores.sort_unstable();
    cores.dedup();
    cores
}

/// p50 and p99 of histogram `name` over the interval's observations (bucket deltas), or over all
/// since the start when the interval had none.
fn quantiles(before: &Scrape, after: &Scrape, name: &str) -> Quantiles {
    let bucket = format!("{name}_bucket");
    let now = buckets(after, &bucket);
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, count)| {
            let was = buckets(before, &bucket).iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
            (le, if count >= was { count - was } else { count })
        })
        .collect();
    let (buckets, over) = match delta.last() {
        Some(&(_, n)) if n > 0.0 => (delta, "interval"),
        _ => (now, "since_start"),
    };
    Quantiles {
        p50: histogram_quantile(0.5, &buckets),
        p99: histogram_quantile(0.99, &buckets),
        observations: buckets.last().map_or(0.0, |(_, n)| *n),
        over,
    }
}

/// `(upper bound, cumulative count)` of a histogram's buckets, by bound (`+Inf` last).
fn buckets(scrape: &Scrape, bucket: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> =
        scrape.series(bucket, &[]).filter_map(|s| Some((s.label("le")?.parse().ok()?, s.value))).collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of cumulative `buckets`, as Prometheus' `histogram_quantile` estimates it:
/// linear interpolation inside the bucket the rank falls in (from 0 for the first bucket); a rank
/// in the `+Inf` bucket gives the highest finite bound. `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let index = buckets.iter().position(|&(_, count)| count >= rank)?;
    let (upper, count) = *buckets.get(index)?;
    let (lower, below) = index.checked_sub(1).and_then(|previous| buckets.get(previous)).copied().unwrap_or((0.0, 0.0));
    if upper.is_infinite() {
        return Some(lower);
    }
    if count <= below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-core node's scrape; `t` scales the counters, as if `t` seconds of steady traffic
    /// had passed. Histogram buckets: handshakes 0-1 ms, 1-5 ms and beyond 5 ms.
    fn scrape(t: f64, hs_fast: f64, hs_mid: f64, hs_slow: f64) -> Scrape {
        let hs_total = hs_fast + hs_mid + hs_slow;
        let text = format!(
            "ant_quic_backend_info{{backend=\"io-uring\"}} 1\nant_quic_cores 2\nant_quic_generation 1\n\
             quic_connections_active 7\nquic_handshakes_in_flight 1\nquic_connections_total {conns}\n\
             quic_bytes_transmitted{{direction=\"sent\"}} {tx}\nquic_bytes_transmitted{{direction=\"received\"}} {rx}\n\
             ant_quic_core_packets_total{{core=\"0\",direction=\"sent\"}} {p0}\n\
             ant_quic_core_packets_total{{core=\"0\",direction=\"received\"}} {p0}\n\
             ant_quic_core_packets_total{{core=\"1\",direction=\"sent\"}} {p1}\n\
             ant_quic_core_packets_total{{core=\"1\",direction=\"received\"}} 0\n\
             ant_quic_core_bytes_total{{core=\"0\",direction=\"received\"}} {b0}\n\
             ant_quic_core_handoffs_total{{core=\"1\",direction=\"in\"}} {h}\n\
             ant_quic_core_handoffs_total{{core=\"1\",direction=\"out\"}} {h}\n\
             ant_quic_core_busy_seconds_total{{core=\"0\"}} {busy}\nant_quic_core_busy_seconds_total{{core=\"1\"}} 0\n\
             ant_quic_core_connections_active{{core=\"0\"}} 4\nant_quic_core_connections_active{{core=\"1\"}} 3\n\
             ant_quic_core_alive{{core=\"0\"}} 1\nant_quic_core_alive{{core=\"1\"}} 0\n\
             ant_quic_core_failures_total{{core=\"0\"}} 0\nant_quic_core_failures_total{{core=\"1\"}} 0\n\
             quic_errors_total{{kind=\"timed_out\"}} {errors}\nquic_errors_total{{kind=\"reset\"}} 0\n\
             nat_traversal_attempts_total{{outcome=\"connected\",path=\"direct\"}} 3\n\
             nat_traversal_attempts_total{{outcome=\"connected\",path=\"relayed\"}} 1\n\
             nat_traversal_attempts_total{{outcome=\"failed\",path=\"none\"}} 1\n\
             nat_registered_peers 5\nrelay_allocations_active 2\nrelay_bytes_total {relay}\nrelay_packets_total {relay_p}\n\
             quic_handshake_duration_bucket{{le=\"0.001\"}} {hs_fast}\n\
             quic_handshake_duration_bucket{{le=\"0.005\"}} {hs_le5}\n\
             quic_handshake_duration_bucket{{le=\"+Inf\"}} {hs_total}\n",
            conns = 10.0 * t,
            tx = 1000.0 * t,
            rx = 2000.0 * t,
            p0 = 100.0 * t,
            p1 = 50.0 * t,
            b0 = 120_000.0 * t,
            h = 5.0 * t,
            busy = 0.25 * t,
            errors = 2.0 * t,
            relay = 300.0 * t,
            relay_p = 3.0 * t,
            hs_le5 = hs_fast + hs_mid,
        );
        Scrape::parse(&text).unwrap()
    }

    #[test]
    fn counters_become_rates_over_the_interval_and_gauges_stay_as_they_are() {
        let snapshot = Snapshot::between(&scrape(10.0, 0.0, 0.0, 0.0), &scrape(12.0, 0.0, 0.0, 0.0), 2.0);
        assert_eq!(snapshot.backend.as_deref(), Some("io-uring"));
        assert_eq!(snapshot.connections, 7.0);
        assert_eq!(snapshot.handshakes_in_flight, 1.0);
        assert_eq!(snapshot.handshakes_per_second, 10.0);
        assert_eq!((snapshot.rx_bytes_per_second, snapshot.tx_bytes_per_second), (2000.0, 1000.0));
        let [core0, core1] = &snapshot.cores[..] else { panic!("{:?}", snapshot.cores) };
        assert_eq!((core0.core, core0.state, core0.connections), (0, "running", 4.0));
        assert_eq!((core0.rx_packets_per_second, core0.tx_packets_per_second), (100.0, 100.0));
        assert_eq!(core0.rx_bytes_per_second, 120_000.0);
        assert_eq!(core0.busy_percent, Some(25.0));
        assert_eq!((core1.state, core1.connections, core1.tx_packets_per_second), ("stalled", 3.0, 50.0));
        assert_eq!(core1.handoffs_per_second, 10.0);
        assert_eq!(core1.busy_percent, Some(0.0));
        assert_eq!(
            snapshot.nat,
            Nat { attempts: 5.0, attempts_per_second: 0.0, success_rate: Some(0.8), registered_peers: 5.0 }
        );
        assert_eq!(
            snapshot.relay,
            Relay { allocations: 2.0, forwarded_bytes_per_second: 300.0, forwarded_packets_per_second: 3.0 }
        );
        // Kinds that never happened are left out.
        assert_eq!(snapshot.errors, vec![ErrorKind { kind: "timed_out".into(), total: 24.0, per_second: 2.0 }]);
    }

    #[test]
    fn a_counter_that_went_down_was_reset_and_counts_from_zero() {
        let snapshot = Snapshot::between(&scrape(100.0, 0.0, 0.0, 0.0), &scrape(1.0, 0.0, 0.0, 0.0), 1.0);
        assert_eq!(snapshot.handshakes_per_second, 10.0);
        assert_eq!(snapshot.cores[0].busy_percent, Some(25.0));
    }

    #[test]
    fn handshake_quantiles_come_from_the_interval_s_buckets() {
        // Before: 1000 fast handshakes. During the interval: 10 fast, 90 of 1-5 ms.
        let snapshot = Snapshot::between(&scrape(1.0, 1000.0, 0.0, 0.0), &scrape(2.0, 1010.0, 90.0, 0.0), 1.0);
        let hs = &snapshot.handshake_seconds;
        assert_eq!((hs.over, hs.observations), ("interval", 100.0));
        // Rank 50 of 100: 40 into the 90 of the 1-5 ms bucket.
        assert!((hs.p50.unwrap() - (0.001 + 0.004 * 40.0 / 90.0)).abs() < 1e-12, "{hs:?}");
        assert!((hs.p99.unwrap() - (0.001 + 0.004 * 89.0 / 90.0)).abs() < 1e-12, "{hs:?}");
    }

    #[test]
    fn quantiles_fall_back_to_all_observations_when_the_interval_had_none() {
        let snapshot = Snapshot::between(&scrape(1.0, 100.0, 0.0, 0.0), &scrape(2.0, 100.0, 0.0, 0.0), 1.0);
        let hs = &snapshot.handshake_seconds;
        assert_eq!((hs.over, hs.observations), ("since_start", 100.0));
        assert!((hs.p50.unwrap() - 0.0005).abs() < 1e-12, "{hs:?}");
        // A histogram with no observations at all has no quantiles; one the node does not export
        // (built without `metrics`) neither.
        let empty = Snapshot::between(&scrape(1.0, 0.0, 0.0, 0.0), &scrape(2.0, 0.0, 0.0, 0.0), 1.0);
        assert_eq!((empty.handshake_seconds.p50, empty.handshake_seconds.p99), (None, None));
        assert_eq!((empty.rtt_seconds.p50, empty.rtt_seconds.observations), (None, 0.0));
    }

    #[test]
    fn a_rank_in_the_inf_bucket_gives_the_highest_finite_bound() {
        let buckets = [(0.001, 1.0), (0.005, 2.0), (f64::INFINITY, 100.0)];
        assert_eq!(histogram_quantile(0.99, &buckets), Some(0.005));
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        // Without the +Inf bucket the histogram is incomplete: no estimate, as Prometheus.
        assert_eq!(histogram_quantile(0.5, &[(0.001, 4.0)]), None);
    }
}
