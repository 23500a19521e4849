//! The load workloads with ant-quic (see `load.rs`).
//!
//! The server is an ordinary ant-quic server node. The client is a client node whose cores each
//! run a [`LoadApp`]: connection `j` lives on core `j % cores` as that core's slot `j / cores`.
//! Cores open their own connections (through the node handle, so they can keep a number in
//! flight without the main thread) and count into shared atomics; the main thread paces
//! requests, watches the counts and, at the end, collects each core's histograms.
//!
//! - bulk: connections set up (64 handshakes in flight at most), then every transfer starts on
//!   one signal; `seconds` runs from it to the last transfer done.
//! - rr: the main thread sleeps to each request's due time and hands it to the owning core, so
//!   a core wakes when it has work and never spins; latency counts from the due time.
//! - handshakes: each core keeps its share of `--concurrency` attempts going, closing each
//!   connection (code 0) as soon as it is established.
//! - idle: `seconds` is the time to establish every connection (`per_second` their rate).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ant_quic::dataplane::quinn_proto::crypto::rustls::QuicClientConfig;
use ant_quic::dataplane::quinn_proto::{ClientConfig, TransportConfig};
use ant_quic::dataplane::{AppFactory, Application, BackendKind, Node};
use ant_quic::identity::PeerId;
use ant_quic::node::{start_client_on, start_server, NodeOptions};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};
use anyhow::{anyhow, Context, Result};

use crate::load::{latency_histogram, ClientArgs, LoadResult, Progress, ServerArgs, ServerInfo, Workload};

mod client_core;

use client_core::{get, CoreReport, Counters, LoadApp, Spec, Template, ToCore};

/// Handshakes in flight while bulk and rr set up their connections.
const SETUP_IN_FLIGHT: usize = 64;
/// rr: how long after the last request was due its answer may still arrive.
const RR_GRACE: Duration = Duration::from_secs(2);
/// Keep-alive of idle connections: well inside the 30 s idle timeout both ends announce.
const IDLE_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How often the main thread looks at the counters while it waits.
const POLL: Duration = Duration::from_millis(2);

/// `ant-quic-perf server --impl ant-quic`.
pub fn serve(args: &ServerArgs) -> Result<()> {
    // Before any thread starts, so that all of them inherit the blocked signals.
    let signals = crate::shutdown::ShutdownSignals::block()?;
    let backend = parse_backend(args.backend.as_deref())?;
    let server =
        start_server(&NodeOptions { listen: args.listen, cores: Some(args.cores), backend, ..NodeOptions::default() })
            .context("starting the ant-quic server node")?;
    let info = ServerInfo {
        implementation: crate::load::Implementation::AntQuic.name().into(),
        addr: server.node.local_addr(),
        pid: std::process::id(),
        peer_id: Some(server.identity.peer_id().to_string()),
        cert_der_hex: None,
    };
    let printed = serde_json::to_string(&info).map_err(anyhow::Error::from).and_then(|line| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    });
    if printed.is_ok() {
        signals.wait();
    }
    let mut nat = server.nat;
    nat.stop();
    server.node.shutdown();
    let joined = server.node.join();
    printed?;
    Ok(joined?)
}

fn parse_backend(backend: Option<&str>) -> Result<Option<BackendKind>> {
    backend.map(|b| b.parse::<BackendKind>().map_err(|e| anyhow!("--backend: {e}"))).transpose()
}

/// Client TLS and transport settings shared by every connection of a run. Each connection is a
/// full 1-RTT handshake: rustls keeps session tickets by default (and a shared configuration
/// would resume from them), so resumption is turned off; early data is off too (and the server
/// refuses it). Idle connections send keep-alives so that the idle timeout never closes them.
pub(crate) fn client_config(peer: PeerId, keep_alive: bool) -> Result<ClientConfig> {
    let mut tls = ant_quic::tls::rustls_client_config(ServerAuth::PeerId(peer), &[ALPN_ANT_QUIC])?;
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| anyhow!("client TLS: {e}"))?;
    let mut config = ClientConfig::new(Arc::new(quic));
    if keep_alive {
        let mut transport = TransportConfig::default();
        transport.keep_alive_interval(Some(IDLE_KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
    }
    Ok(config)
}

/// `ant-quic-perf client --impl ant-quic`.
pub fn run(args: &ClientArgs) -> Result<LoadResult> {
    let info = args.server_info()?;
    let peer: PeerId = info
        .peer_id
        .as_deref()
        .ok_or_else(|| anyhow!("--server has no peer_id: pass the line of an ant-quic server"))?
        .parse()
        .map_err(|e| anyhow!("--server peer_id: {e}"))?;
    let backend = parse_backend(args.backend.as_deref())?;
    let template = Template {
        remote: info.addr,
        server_name: ant_quic::tls::default_server_name().to_owned(),
        config: client_config(peer, args.workload == Workload::Idle)?,
    };
    let spec =
        Spec { workload: args.workload, bytes: args.bytes, upload: args.upload, response_bytes: args.response_bytes };
    let counters = Arc::new(Counters::default());
    let histogram = latency_histogram()?;
    let factory: Arc<dyn AppFactory<ToCore>> = {
        let counters = Arc::clone(&counters);
        Arc::new(move |core: usize| -> Box<dyn Application<ToCore>> {
            Box::new(LoadApp::new(core, spec, Arc::clone(&counters), histogram.clone()))
        })
    };
    let any: IpAddr = if info.addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    // The server's cores take the allowed CPUs from the first; the client's take them from the
    // last, as the in-process bulk transfer places them. Unpinned, the scheduler tends to wake
    // the client on the server's CPU (it is woken from there), and both then share one CPU.
    let cpus: Vec<usize> =
        ant_quic::dataplane::sys::thread::allowed_cpus().into_iter().rev().take(args.cores).collect();
    let cpus = (!cpus.is_empty()).then_some(cpus);
    let node = start_client_on(SocketAddr::new(any, 0), args.cores, backend, cpus, factory)
        .context("starting the ant-quic client node")?;
    let mut driver = Driver {
        node: &node,
        args,
        template,
        counters: &counters,
        deadline: Instant::now() + Duration::from_secs_f64(args.timeout),
        progress: Progress::new(),
    };
    let measured = driver.run();
    let reports = driver.finish();
    let cores = node.cores();
    node.shutdown();
    let joined = node.join();
    let measured = measured?;
    joined?;
    let reports = reports?;

    let mut latency = latency_histogram()?;
    for report in &reports {
        let h = if matches!(args.workload, Workload::Handshakes | Workload::Idle) {
            &report.handshakes
        } else {
            &report.operations
        };
        latency.add(h).map_err(|e| anyhow!("merging latency histograms: {e:?}"))?;
    }
    let seconds = match (args.workload, measured.started) {
        // From the common start to the last transfer done.
        (Workload::Bulk, Some(start)) => reports
            .iter()
            .filter_map(|r| r.last_done)
            .max()
            .map_or(0.0, |last| last.saturating_duration_since(start).as_secs_f64()),
        _ => measured.seconds,
    };
    let completed = if args.workload == Workload::Idle { get(&counters.established) } else { get(&counters.completed) };
    let bytes = get(&counters.bytes);
    let per_second = if seconds > 0.0 { completed as f64 / seconds } else { 0.0 };
    let first_error = counters.first_error.lock().ok().and_then(|e| e.clone());
    Ok(LoadResult {
        implementation: crate::load::Implementation::AntQuic.name().into(),
        workload: args.workload,
        connections: if args.workload == Workload::Handshakes { args.concurrency } else { args.connections },
        cores,
        seconds,
        bytes,
        gbps: crate::harness::BulkResult::gbps(bytes, seconds),
        completed,
        per_second,
        errors: get(&counters.errors),
        latency_us: crate::load::Latency::of(&latency),
        cipher: ant_quic::tls::preferred_cipher_suite(),
        backend: Some(measured.backend),
        first_error,
    })
}

/// What the main thread measured of a run.
struct Measured {
    /// Length of the measured phase (bulk: computed from the cores' reports instead).
    seconds: f64,
    /// bulk: the common start of the transfers.
    started: Option<Instant>,
    backend: String,
}

/// The main thread's side of a run.
struct Driver<'a> {
    node: &'a Node<ToCore>,
    args: &'a ClientArgs,
    template: Template,
    counters: &'a Counters,
    deadline: Instant,
    progress: Progress,
}

impl Driver<'_> {
    fn run(&mut self) -> Result<Measured> {
        let backend = self.node.backend().to_string();
        let args = self.args;
        let (seconds, started) = match args.workload {
            Workload::Bulk => {
                self.establish(args.connections, SETUP_IN_FLIGHT)?;
                let at = Instant::now();
                self.broadcast(|| ToCore::Go { at })?;
                let total = args.connections as u64;
                let counters = self.counters;
                let done = self.wait_until(self.deadline, || get(&counters.completed) + get(&counters.errors) >= total);
                if !done {
                    self.timed_out("bulk transfers", total - get(&counters.completed) - get(&counters.errors));
                }
                (at.elapsed().as_secs_f64(), Some(at))
            }
            Workload::Rr => {
                self.establish(args.connections, SETUP_IN_FLIGHT)?;
                (self.requests()?, None)
            }
            Workload::Handshakes => (self.handshakes()?, None),
            Workload::Idle => {
                let started = Instant::now();
                self.establish(args.connections, args.concurrency)?;
                let seconds = started.elapsed().as_secs_f64();
                if let Some(file) = &args.ready_file {
                    std::fs::File::create(file).with_context(|| format!("--ready-file {}", file.display()))?;
                }
                let end = (Instant::now() + Duration::from_secs_f64(args.hold)).min(self.deadline);
                self.wait_until(end, || false);
                (seconds, None)
            }
        };
        Ok(Measured { seconds, started, backend })
    }

    /// Open `connections` spread over the cores, `in_flight` handshakes at most, and wait for
    /// every one to be established or to fail.
    fn establish(&mut self, connections: usize, in_flight: usize) -> Result<()> {
        let cores = self.node.cores();
        for core in 0..cores {
            let count = share(connections, cores, core);
            if count == 0 {
                continue;
            }
            let message = || ToCore::Start {
                handle: self.node.handle(),
                template: Box::new(self.template.clone()),
                count,
                in_flight: in_flight.div_ceil(cores),
                until: None,
            };
            self.send(core, message)?;
        }
        let total = connections as u64;
        let counters = self.counters;
        let done =
            self.wait_until(self.deadline, || get(&counters.established) + get(&counters.connect_failed) >= total);
        if !done {
            let missing = total.saturating_sub(get(&counters.established) + get(&counters.connect_failed));
            self.timed_out("establishing connections", missing);
        }
        Ok(())
    }

    /// rr: issue requests at the aggregate rate, round robin over the connections, each marked
    /// with the time it was due; then wait for the answers. Returns the issuing time.
    fn requests(&mut self) -> Result<f64> {
        let args = self.args;
        let cores = self.node.cores();
        let connections = args.connections;
        let errors_before = get(&self.counters.errors);
        crate::load::fine_timer_slack();
        let start = Instant::now();
        let end = (start + Duration::from_secs_f64(args.seconds)).min(self.deadline);
        let due = |i: u64| start + Duration::from_secs_f64(i as f64 / args.rate as f64);
        let mut next = 0u64;
        let mut batches: Vec<Vec<(usize, Instant)>> = vec![Vec::new(); cores];
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            loop {
                let at = due(next);
                if at > now || at >= end {
                    break;
                }
                let connection = (next % connections as u64) as usize;
                if let Some(batch) = batches.get_mut(connection % cores) {
                    batch.push((connection / cores, at));
                }
                next += 1;
            }
            for (core, batch) in batches.iter_mut().enumerate() {
                if batch.is_empty() {
                    continue;
                }
                let batch = std::mem::take(batch);
                let n = batch.len() as u64;
                if let Err(e) = self.node.send_message(core, ToCore::Requests(batch)) {
                    self.counters.error(n, || format!("rr: requests not handed to core {core}: {e}"));
                }
            }
            let counters = self.counters;
            self.progress.tick(|| format!("issued {next}, answered {}", get(&counters.completed)));
            // Sleep to the next due time: the core wakes when its requests arrive, never earlier.
            let wake = due(next).min(end);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        let seconds = start.elapsed().as_secs_f64().min(args.seconds);
        let counters = self.counters;
        let settled = || get(&counters.completed) + get(&counters.errors).saturating_sub(errors_before) >= next;
        let answered = self.wait_until((end + RR_GRACE).min(self.deadline), settled);
        if !answered {
            let missing =
                next.saturating_sub(get(&counters.completed) + get(&counters.errors).saturating_sub(errors_before));
            self.counters.error(missing, || format!("rr: {missing} requests not answered within 2 s of the end"));
        }
        Ok(seconds)
    }

    /// handshakes: `concurrency` attempts in flight, spread over the cores, for `seconds`.
    fn handshakes(&mut self) -> Result<f64> {
        let args = self.args;
        let cores = self.node.cores();
        let start = Instant::now();
        let until = (start + Duration::from_secs_f64(args.seconds)).min(self.deadline);
        for core in 0..cores {
            let in_flight = share(args.concurrency, cores, core);
            if in_flight == 0 {
                continue;
            }
            let message = || ToCore::Start {
                handle: self.node.handle(),
                template: Box::new(self.template.clone()),
                count: 0,
                in_flight,
                until: Some(until),
            };
            self.send(core, message)?;
        }
        self.wait_until(until, || false);
        Ok(start.elapsed().as_secs_f64().min(args.seconds))
    }

    /// Wait (sleeping, with progress lines) until `done` holds or `end` passes; false then.
    fn wait_until(&mut self, end: Instant, mut done: impl FnMut() -> bool) -> bool {
        let counters = self.counters;
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            self.progress.tick(|| {
                format!(
                    "established {}  completed {}  errors {}",
                    get(&counters.established),
                    get(&counters.completed),
                    get(&counters.errors)
                )
            });
            std::thread::sleep(POLL.min(end - now));
        }
    }

    fn timed_out(&self, what: &str, missing: u64) {
        let timeout = self.args.timeout;
        self.counters.error(missing, || format!("timed out after {timeout} s {what}"));
    }

    /// Deliver a message to a core, retrying for a second while its queue is full.
    fn send(&self, core: usize, message: impl Fn() -> ToCore) -> Result<()> {
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            match self.node.send_message(core, message()) {
                Ok(()) => return Ok(()),
                Err(ant_quic::dataplane::NodeError::Busy(_)) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("handing work to a client core"),
            }
        }
    }

    fn broadcast(&self, message: impl Fn() -> ToCore) -> Result<()> {
        (0..self.node.cores()).try_for_each(|core| self.send(core, &message))
    }

    /// Ask every core to close its connections and hand over what it measured.
    fn finish(&self) -> Result<Vec<CoreReport>> {
        let (tx, rx) = mpsc::channel();
        self.broadcast(|| ToCore::Finish(tx.clone()))?;
        drop(tx);
        let mut reports = Vec::new();
        for _ in 0..self.node.cores() {
            reports.push(rx.recv_timeout(Duration::from_secs(10)).context("a client core did not report")?);
        }
        Ok(reports)
    }
}

/// The part of `total` that `index` of `parts` takes (the first ones take the remainder).
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts.max(1) + usize::from(index < total % parts.max(1))
}
