//! The ant-quic relay node of `relay-rate`: a `Node` with one allocation whose ends are the
//! sender's and the receiver's sockets, and its counters after a run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ant_quic_dataplane::relay::RelayDrop;
use ant_quic_dataplane::stats::{read, CoreStats};
use ant_quic_dataplane::{Application, BackendKind, Node, NodeConfig, RelayAllocation};
use anyhow::{anyhow, Result};
use serde::Serialize;

/// The relay node's counters after a run, summed over its cores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayCounters {
    /// Data-plane cores of the node.
    pub cores: usize,
    /// Datagrams the node received.
    pub rx_datagrams: u64,
    /// Receive completions or calls that carried more than one datagram (GRO).
    pub rx_batched: u64,
    /// Frames forwarded.
    pub forwarded: u64,
    /// Frame bytes forwarded.
    pub forwarded_bytes: u64,
    /// Sends that carried more than one datagram (GSO).
    pub tx_batched: u64,
    /// Frames not forwarded, by reason (every reason listed, zeros included).
    pub drops: Vec<(String, u64)>,
    /// Times the receive path ran out of buffers (io_uring).
    pub rx_no_buffers: u64,
    /// Send errors other than back-pressure.
    pub tx_errors: u64,
    /// Datagrams dropped as neither QUIC nor the node's own, or malformed (should stay 0).
    pub other_drops: u64,
    /// Loop turns of the core.
    pub loop_turns: u64,
}

struct Idle;
impl Application for Idle {}

/// A one-core relay node on `listen` with one allocation on `channel` between `a` and `b`,
/// installed.
pub(super) fn start_relay(
    listen: SocketAddr,
    backend: BackendKind,
    xdp_relay: bool,
    channel: u32,
    a: SocketAddr,
    b: SocketAddr,
    cpu: Option<usize>,
) -> Result<Node> {
    let mut config = NodeConfig::new(listen, None);
    // One flow from one source socket reaches one core whatever their number (SO_REUSEPORT
    // hashes the 4-tuple), so one core is what forwards it.
    config.cores = Some(1);
    config.pin_threads = cpu.is_some();
    config.cpus = cpu.map(|cpu| vec![cpu]);
    config.backend = Some(backend);
    config.xdp_relay = xdp_relay;
    let node = Node::start(config, Arc::new(|_core: usize| -> Box<dyn Application> { Box::new(Idle) }))
        .map_err(|e| anyhow!("starting the relay node: {e}"))?;
    let allocation = RelayAllocation {
        channel,
        a,
        b,
        expires: Instant::now() + Duration::from_secs(600),
        // Limits out of the way: the figure is the forwarding path, not the policy.
        byte_limit: u64::MAX,
        rate_limit: u32::MAX,
    };
    let installed = node.install_relay(allocation).map_err(|e| anyhow!("installing the allocation: {e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = installed.and_then(|()| loop {
        if node.stats().iter().all(|s| read(&s.relay_allocations) == 1) {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(anyhow!("the relay node did not install the allocation within 5 s"));
        }
        thread::sleep(Duration::from_millis(1));
    });
    if let Err(e) = ready {
        node.shutdown();
        let _ = node.join();
        return Err(e);
    }
    Ok(node)
}

/// The node's counters, summed over its cores.
pub(super) fn relay_counters(node: &Node) -> RelayCounters {
    let cores = node.stats();
    let sum = |counter: &dyn Fn(&CoreStats) -> u64| cores.iter().map(|c| counter(c)).sum::<u64>();
    RelayCounters {
        cores: cores.len(),
        rx_datagrams: sum(&|c| read(&c.rx_datagrams)),
        rx_batched: sum(&|c| c.rx_batch.multi()),
        forwarded: sum(&|c| read(&c.relay_forwarded)),
        forwarded_bytes: sum(&|c| read(&c.relay_forwarded_bytes)),
        tx_batched: sum(&|c| c.tx_batch.multi()),
        drops: RelayDrop::ALL
            .iter()
            .map(|&reason| (reason.name().to_owned(), sum(&|c| c.relay_drops(reason))))
            .collect(),
        rx_no_buffers: sum(&|c| read(&c.rx_no_buffers)),
        tx_errors: sum(&|c| read(&c.tx_errors)),
        other_drops: sum(&|c| read(&c.drops_not_quic) + read(&c.drops_malformed) + read(&c.drops_handoff_full)),
        loop_turns: sum(&|c| read(&c.loop_turns)),
    }
}
