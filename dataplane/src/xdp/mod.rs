//! The AF_XDP path (`--backend af-xdp`, issue 16): an XDP program on the interface sends the
//! node's UDP datagrams straight to per-queue AF_XDP sockets, bypassing the kernel's UDP stack,
//! forwards established relay channels itself, and passes everything else on. See
//! `docs/af-xdp.md`.
//!
//! - [`asm`]: an eBPF assembler with labels.
//! - [`program`]: the redirect program, written with it.
//! - [`relay`]: relay channels forwarded inside that program (its map's entries; IPv4), put
//!   there by the cores (`crate::relay::offload`).
//! - [`bench_programs`]: a minimal XDP_TX forwarder and a pass-all program, for benchmarks and tests.
//! - [`neighbour`]: the next hop's MAC address for each remote address, learned from received frames.
//! - [`Redirect`]: the program loaded, attached to an interface and its maps.
//!
//! The system calls (bpf(2), AF_XDP sockets) are in `sys::bpf` and `sys::xdp`.

pub mod asm;
pub mod bench_programs;
pub mod neighbour;
pub mod program;
pub mod relay;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

pub use program::{Counter, Destination, Filter};

use crate::sys::bpf::{AttachError, LoadError, Map, Program, XdpLink, XdpMode};
use crate::sys::xdp::{interface_index, rx_queues, XskSocket};

/// Why the XDP path could not be set up on an interface.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// No such interface in this network namespace.
    #[error("interface '{0}': {1}")]
    Interface(String, io::Error),
    /// A BPF map could not be created (no CAP_BPF, or a kernel without BPF maps).
    #[error("cannot create the XDP program's maps (needs CAP_BPF and CAP_NET_ADMIN, Linux 5.10+): {0}")]
    Map(io::Error),
    /// The program could not be assembled (a bug).
    #[error("the XDP program does not assemble: {0}")]
    Assemble(#[from] asm::AsmError),
    /// The kernel refused the program.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Neither native nor generic mode could attach it.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A socket could not be put in the socket map.
    #[error("cannot put the AF_XDP socket of queue {0} in the socket map: {1}")]
    Socket(u32, io::Error),
}

/// The redirect program attached to one interface, with its socket map, counters and relay
/// channel map. Dropping it detaches the program.
#[derive(Debug)]
pub struct Redirect {
    // Detached first, then the program and maps released.
    link: XdpLink,
    _program: Program,
    xsks: Map,
    counters: ProgramCounters,
    /// Relay channels the program forwards itself (`relay`), shared with the cores.
    relay_channels: Arc<Map>,
    ifindex: u32,
    queues: u32,
}

impl Redirect {
    /// Load the program for `filter` and attach it to `interface` (native mode where the driver
    /// supports it, generic otherwise; one log line says which). Datagrams are passed to the
    /// kernel until sockets are added with [`Redirect::add_socket`].
    pub fn attach(interface: &str, filter: &Filter) -> Result<Self, XdpError> {
        let ifindex = interface_index(interface).map_err(|e| XdpError::Interface(interface.to_owned(), e))?;
        let queues = rx_queues(interface).map_err(|e| XdpError::Interface(interface.to_owned(), e))?;
        let xsks = Map::xsk(queues, "aq_xsks").map_err(XdpError::Map)?;
        let counters = Map::counters(program::COUNTERS, "aq_counters").map_err(XdpError::Map)?;
        let relay_channels = Arc::new(
            Map::hash(relay::KEY_SIZE, relay::ENTRY_SIZE as u32, relay::CHANNELS, "aq_relays")
                .map_err(XdpError::Map)?,
        );
        let code = program::redirect_program(
            filter,
            xsks.as_raw_fd(),
            counters.as_raw_fd(),
            Some(relay_channels.as_raw_fd()),
        )?;
        let program = Program::load_xdp(&code, "aq_redirect")?;
        let link = XdpLink::attach(&program, ifindex)?;
        match link.native_refused() {
            None => tracing::info!(interface, mode = link.mode().name(), queues, "XDP program attached"),
            Some(why) => {
                tracing::info!(interface, mode = link.mode().name(), queues, native_refused = %why, "XDP program attached")
            }
        }
        Ok(Self {
            link,
            _program: program,
            xsks,
            counters: ProgramCounters(Arc::new(counters)),
            relay_channels,
            ifindex,
            queues,
        })
    }

    /// Native or generic.
    pub fn mode(&self) -> XdpMode {
        self.link.mode()
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's RX queues (one socket each).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// Redirect the datagrams arriving on RX queue `queue` to `socket` (bound to that queue).
    pub fn add_socket(&self, queue: u32, socket: &XskSocket) -> Result<(), XdpError> {
        self.xsks.set_socket(queue, socket).map_err(|e| XdpError::Socket(queue, e))
    }

    /// The relay channel map, for the cores to install channels in.
    pub fn relay_channels(&self) -> Arc<Map> {
        Arc::clone(&self.relay_channels)
    }

    /// Put (or replace) `channel` in the relay channel map by hand, as benchmarks and tests do;
    /// a node's cores install their channels themselves (`crate::relay::offload`).
    pub fn install_channel(&self, channel: u32, entry: &relay::RelayEntry) -> io::Result<()> {
        self.relay_channels.insert(&relay::key(channel), &entry.encode())
    }

    /// The map's entry for relay `channel`, if it has one.
    pub fn relay_entry(&self, channel: u32) -> io::Result<Option<relay::RelayEntry>> {
        let Some(bytes) = self.relay_channels.lookup(&relay::key(channel))? else { return Ok(None) };
        relay::RelayEntry::decode(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// One of the program's counters, summed over CPUs.
    pub fn count(&self, counter: Counter) -> io::Result<u64> {
        self.counters.count(counter)
    }

    /// The program's counters, for a reader that may outlive this attachment (the metrics).
    pub fn counters(&self) -> ProgramCounters {
        self.counters.clone()
    }
}

/// The redirect program's per-CPU counter map, shared: holding it keeps the map, not the program
/// or its attachment.
#[derive(Debug, Clone)]
pub struct ProgramCounters(Arc<Map>);

impl ProgramCounters {
    /// One counter, summed over CPUs.
    pub fn count(&self, counter: Counter) -> io::Result<u64> {
        self.0.counter(counter as u32)
    }
}
