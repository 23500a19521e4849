//! Zero-downtime takeover of the UDP port (`docs/takeover.md`): a new process joins the running
//! one's reuseport group, takes every new connection from the moment it is ready, and the old
//! process drains its own connections and exits.
//!
//! The two processes meet on an abstract Unix socket named after the listen address, which the
//! process serving new connections holds. They speak one JSON object per line:
//!
//! ```text
//! successor                         incumbent
//!   Hello {pid, version}      →
//!                             ←     Accept {generation, key, members, drain_timeout}
//!                                   (or Busy {pid} while another takeover runs, or Refused {reason})
//!   joins the group, steers, checks the layout with probes
//!   Ready {pid, generation}   →     stops accepting, drains
//!                             ←     Status {connections, relay_allocations} … Left {generation} …
//!                             ←     Leaving (its sockets close next)
//! ```
//!
//! The protocol logic is here; the drain itself (stop accepting, wait, close) is the binary's.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_dataplane::cid::{next_generation, CidKey, Generation};
use ant_quic_dataplane::probe::{probe_group, probe_target, SocketOwner};
use ant_quic_dataplane::steering::{GenerationSockets, SteeringTable};
use ant_quic_dataplane::sys::process::current_uid;
use ant_quic_dataplane::sys::socket::peer_credentials;
use ant_quic_dataplane::NodeHandle;
use serde::{Deserialize, Serialize};

/// Longest wait for the other side's next line during the handshake.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a successor may take from Hello to Ready (start its cores, steer, probe).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the socket name may stay taken (the predecessor releases it at the switch) or the port
/// may be held without the name (between that release and the successor's bind).
const NAME_WAIT: Duration = Duration::from_secs(5);
/// How long probes wait for answers in one round.
const PROBE_LIMIT: Duration = Duration::from_millis(500);
/// How long the layout may stay unsettled after a member left (its sockets still closing).
const SETTLE_LIMIT: Duration = Duration::from_secs(3);
/// Re-check the layout this often while older members still share the port.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Why a takeover cannot go ahead: one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TakeoverError(pub String);

/// One process sharing the port: its generation, pid, and where its sockets sit in the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its generation.
    pub generation: Generation,
    /// Its process ID.
    pub pid: u32,
    /// `indices[core]`: its sockets' places in the reuseport group.
    pub indices: Vec<u32>,
}

/// Every process sharing the port, oldest first; the last serves new connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// Oldest first.
    pub members: Vec<Member>,
}

impl Lineage {
    /// A process alone on the port with `cores` sockets in core order.
    pub fn alone(generation: Generation, cores: usize) -> Self {
        let indices = (0..cores as u32).collect();
        Self { members: vec![Member { generation, pid: std::process::id(), indices }] }
    }

    /// The steering table: new connections to the last member, by the kernel's hash when it is
    /// alone.
    pub fn table(&self) -> SteeringTable {
        SteeringTable {
            generations: self
                .members
                .iter()
                .map(|m| GenerationSockets { generation: m.generation, indices: m.indices.clone() })
                .collect(),
            hash_new_connections: self.members.len() == 1,
        }
    }

    /// The table while a successor joins: every datagram explicitly to a member, never to the
    /// hash (which would pick the successor's sockets before it is ready).
    fn pinned_table(&self) -> SteeringTable {
        SteeringTable { hash_new_connections: false, ..self.table() }
    }

    fn sockets(&self) -> usize {
        self.members.iter().map(|m| m.indices.len()).sum()
    }
}

/// What the processes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    Hello { pid: u32, version: String },
    Accept { pid: u32, version: String, key: String, members: Vec<Member>, drain_timeout: u64, connections: u64 },
    Busy { pid: u32 },
    Refused { reason: String },
    Ready { pid: u32, generation: Generation },
    Status { connections: u64, relay_allocations: u64 },
    Left { generation: Generation },
    Leaving,
}

/// One side of the conversation: lines in, lines out.
#[derive(Debug)]
pub struct Channel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Channel {
    fn new(stream: UnixStream) -> io::Result<Self> {
        let writer = stream.try_clone()?;
        writer.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Self { reader: BufReader::new(stream), writer })
    }

    fn send(&mut self, message: &Message) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)
    }

    /// The next message, waiting at most `limit` (`None`: as long as it takes). `Ok(None)`: the
    /// other side closed.
    fn receive(&mut self, limit: Option<Duration>) -> io::Result<Option<Message>> {
        self.reader.get_ref().set_read_timeout(limit)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// The name both processes meet at, for a node listening on `listen`.
fn rendezvous(listen: SocketAddr) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(format!("ant-quic/takeover/udp/{listen}"))
}

// ---------------------------------------------------------------------------------------------
// The incumbent: the process serving new connections, waiting for a successor.

/// A successor that is ready: from now on it takes every new connection.
#[derive(Debug)]
pub struct Successor {
    /// Its process ID.
    pub pid: u32,
    /// Its generation.
    pub generation: Generation,
    /// Where this process reports its drain.
    pub channel: Channel,
}

impl Successor {
    /// Tell the successor how many connections and relay allocations are left; false when it
    /// is gone (it holds the connection for as long as it lives).
    pub fn report(&mut self, connections: u64, relay_allocations: u64) -> bool {
        self.channel.send(&Message::Status { connections, relay_allocations }).is_ok()
    }

    /// Tell the successor that this process's sockets close now.
    pub fn leaving(&mut self) {
        let _ = self.channel.send(&Message::Leaving);
    }

    fn forward_left(&mut self, generation: Generation) {
        let _ = self.channel.send(&Message::Left { generation });
    }
}

/// Waits for a successor on the rendezvous socket, one at a time.
#[derive(Debug)]
pub struct Incumbent {
    successors: mpsc::Receiver<Successor>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Incumbent {
    /// Listen for successors of the node `node` (whose generations sharing the port are
    /// `lineage`). Waits a few seconds for the name when a predecessor still holds it.
    pub fn start(node: NodeHandle, lineage: Arc<Mutex<Lineage>>, drain_timeout: Duration) -> io::Result<Self> {
        let name = rendezvous(node.local_addr())?;
        let deadline = Instant::now() + NAME_WAIT;
        let listener = loop {
            match UnixListener::bind_addr(&name) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        listener.set_nonblocking(true)?;
        let (tx, successors) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ant-quic-takeover".into())
            .spawn(move || serve_successors(listener, node, lineage, drain_timeout, tx, flag))?;
        Ok(Self { successors, stop, thread: Some(thread) })
    }

    /// A successor that became ready, if one did.
    pub fn ready_successor(&self) -> Option<Successor> {
        self.successors.try_recv().ok()
    }
}

impl Drop for Incumbent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_successors(
    listener: UnixListener,
    node: NodeHandle,
    lineage: Arc<Mutex<Lineage>>,
    drain_timeout: Duration,
    ready: mpsc::Sender<Successor>,
    stop: Arc<AtomicBool>,
) {
    // The pid of the successor being served, and its thread.
    let busy: Arc<Mutex<Option<u32>>> = Arc::default();
    let mut current: Option<JoinHandle<bool>> = None;
    while !stop.load(Ordering::Relaxed) {
        if current.as_ref().is_some_and(|t| t.is_finished()) {
            // A successor that became ready ends this listener: the name is its now.
            if current.take().and_then(|t| t.join().ok()).unwrap_or(false) {
                return;
            }
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "takeover socket: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let Ok(mut channel) = Channel::new(stream) else { continue };
        let caller = match same_user(&channel, node.local_addr()) {
            Ok(pid) => pid,
            Err(reason) => {
                let _ = channel.send(&Message::Refused { reason });
                continue;
            }
        };
        // One takeover at a time: taken here, before the caller's thread starts, so that two
        // callers arriving together cannot both be served.
        let Ok(mut slot) = busy.lock() else { continue };
        if let Some(pid) = *slot {
            let _ = channel.send(&Message::Busy { pid });
            continue;
        }
        *slot = Some(caller);
        drop(slot);
        let (node, lineage, ready, busy) = (node.clone(), Arc::clone(&lineage), ready.clone(), Arc::clone(&busy));
        current = std::thread::Builder::new()
            .name("ant-quic-takeover-peer".into())
            .spawn(move || serve_one(channel, &node, &lineage, drain_timeout, &ready, &busy))
            .ok();
    }
}

/// The successor must run as this process's user: the kernel would refuse it the port anyway.
/// Its process ID when it does.
fn same_user(channel: &Channel, listen: SocketAddr) -> Result<u32, String> {
    let ours = current_uid();
    match peer_credentials(channel.reader.get_ref()) {
        Ok((theirs, pid)) if theirs == ours => Ok(pid),
        Ok((theirs, _)) => Err(other_user_message(listen, ours, theirs)),
        Err(error) => Err(format!("cannot tell which user asks for the takeover: {error}")),
    }
}

fn other_user_message(listen: SocketAddr, holder: u32, taker: u32) -> String {
    format!(
        "cannot take over UDP {listen}: it is held by uid {holder} and this process runs as uid {taker}; \
         the kernel shares a port only between processes of the same user"
    )
}

/// Serve one successor from Hello to Ready; true once it is ready.
fn serve_one(
    mut channel: Channel,
    node: &NodeHandle,
    lineage: &Mutex<Lineage>,
    drain_timeout: Duration,
    ready: &mpsc::Sender<Successor>,
    busy: &Mutex<Option<u32>>,
) -> bool {
    let pid = match channel.receive(Some(REPLY_TIMEOUT)) {
        Ok(Some(Message::Hello { pid, version })) => {
            tracing::info!(pid, %version, "a successor asks to take over");
            pid
        }
        _ => {
            if let Ok(mut slot) = busy.lock() {
                *slot = None;
            }
            return false;
        }
    };
    let ready_successor = hand_over(channel, pid, node, lineage, drain_timeout, ready);
    if let Ok(mut slot) = busy.lock() {
        *slot = None;
    }
    ready_successor
}

fn hand_over(
    mut channel: Channel,
    pid: u32,
    node: &NodeHandle,
    lineage: &Mutex<Lineage>,
    drain_timeout: Duration,
    ready: &mpsc::Sender<Successor>,
) -> bool {
    let members = match lineage.lock() {
        Ok(lineage) => lineage.clone(),
        Err(_) => return false,
    };
    // New connections stay here, by explicit index, while the successor's sockets join.
    if let Err(error) = node.steer(&members.pinned_table()) {
        let _ = channel.send(&Message::Refused { reason: format!("the running node cannot steer its port: {error}") });
        return false;
    }
    let accept = Message::Accept {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        key: hex::encode(node.cid_key().to_bytes()),
        members: members.members.clone(),
        drain_timeout: drain_timeout.as_secs(),
        connections: node.active_connections(),
    };
    let outcome = channel.send(&accept).and_then(|()| channel.receive(Some(READY_TIMEOUT)));
    match outcome {
        Ok(Some(Message::Ready { pid, generation })) => {
            let _ = ready.send(Successor { pid, generation, channel });
            true
        }
        other => {
            // The successor failed before it was ready: everything stays here.
            let why = match other {
                Ok(None) => "it exited".to_owned(),
                Ok(Some(message)) => format!("it said {message:?}"),
                Err(error) => error.to_string(),
            };
            tracing::warn!(pid, why, "takeover abandoned before the successor was ready; serving on");
            if let Err(error) = node.steer(&members.table()) {
                tracing::error!(%error, "cannot restore the steering program after an abandoned takeover");
            }
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The successor.

/// What the incumbent handed over: it waits for [`Takeover::complete`].
#[derive(Debug)]
pub struct Takeover {
    channel: Channel,
    /// The incumbent's process ID.
    pub predecessor_pid: u32,
    /// The processes sharing the port now, oldest first.
    pub lineage: Lineage,
    /// The connection-ID key every process on the port shares.
    pub cid_key: CidKey,
    /// The generation this process takes.
    pub generation: Generation,
    /// The incumbent's drain timeout.
    pub drain_timeout: Duration,
    /// The incumbent's live connections when it accepted.
    pub predecessor_connections: u64,
}

/// Reach the process serving `listen`, if any, and ask it to hand over. `Ok(None)`: nothing runs
/// there (start as usual).
pub fn reach_incumbent(listen: SocketAddr) -> Result<Option<Takeover>, TakeoverError> {
    let fail = |what: String| TakeoverError(format!("cannot take over UDP {listen}: {what}"));
    if listen.port() == 0 {
        return Ok(None);
    }
    let name = rendezvous(listen).map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + NAME_WAIT;
    let stream = loop {
        match UnixStream::connect_addr(&name) {
            Ok(stream) => break stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
                if !udp_port_in_use(listen) {
                    return Ok(None);
                }
                // Held without the name: a takeover between the old process's release and the new
                // one's bind, or a process that does not take part.
                if Instant::now() >= deadline {
                    return Err(fail(holder_description(listen)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let mut channel = Channel::new(stream).map_err(|e| fail(e.to_string()))?;
    let hello = Message::Hello { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into() };
    channel.send(&hello).map_err(|e| fail(format!("the running process did not listen: {e}")))?;
    match channel.receive(Some(REPLY_TIMEOUT)) {
        Ok(Some(Message::Accept { pid, key, members, drain_timeout, connections, .. })) => {
            let key = hex::decode(&key)
                .ok()
                .and_then(|k| <[u8; 16]>::try_from(k).ok())
                .ok_or_else(|| fail("the running process sent a malformed key".into()))?;
            let lineage = Lineage { members };
            let newest = lineage.members.iter().map(|m| m.generation).max().unwrap_or(0);
            let mut generation = next_generation(newest);
            while lineage.members.iter().any(|m| m.generation == generation) {
                generation = next_generation(generation);
            }
            Ok(Some(Takeover {
                channel,
                predecessor_pid: pid,
                lineage,
                cid_key: CidKey::from_bytes(key),
                generation,
                drain_timeout: Duration::from_secs(drain_timeout),
                predecessor_connections: connections,
            }))
        }
        Ok(Some(Message::Busy { pid })) => Err(TakeoverError(format!(
            "another takeover of UDP {listen} is in progress (pid {pid}); try again when it is done"
        ))),
        Ok(Some(Message::Refused { reason })) => Err(TakeoverError(reason)),
        Ok(Some(other)) => Err(fail(format!("unexpected answer {other:?}"))),
        Ok(None) => Err(fail("the running process closed the takeover socket".into())),
        Err(e) => Err(fail(format!("no answer from the running process: {e}"))),
    }
}

fn udp_port_in_use(listen: SocketAddr) -> bool {
    std::net::UdpSocket::bind(listen).is_err()
}

/// Who holds a UDP port, from /proc/net/udp{,6}, in words.
fn holder_description(listen: SocketAddr) -> String {
    let ours = current_uid();
    match udp_port_owner(listen.port()) {
        Some(uid) if uid != ours => other_user_message(listen, uid, ours),
        _ => "the port is in use by a process that does not offer a takeover (not an ant-quic node of \
              this version, or another program); stop it or use another port"
            .into(),
    }
}

/// The uid of a socket bound to UDP port `port`, if /proc/net says.
fn udp_port_owner(port: u16) -> Option<u32> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port).then(|| fields.get(7)?.parse().ok()).flatten()
        })
    })
}

impl Takeover {
    /// With this process's node bound into the group (`node`, generation [`Takeover::generation`]):
    /// steer every generation to its sockets and new connections to ours, check the layout with
    /// probes, and tell the incumbent we are ready. From the moment this returns `Ok`, new
    /// connections come here.
    pub fn complete(mut self, node: &NodeHandle) -> Result<Predecessor, TakeoverError> {
        let fail = |what: String| TakeoverError(format!("takeover of UDP {} failed: {what}", node.local_addr()));
        let cores = node.cores();
        // Joining sockets go to the end of the group, in bind (core) order.
        let first = self.lineage.sockets() as u32;
        let mut lineage = self.lineage.clone();
        lineage.members.push(Member {
            generation: self.generation,
            pid: std::process::id(),
            indices: (first..first + cores as u32).collect(),
        });
        node.steer(&lineage.table()).map_err(|e| fail(format!("cannot attach the steering program: {e}")))?;
        let found = check_layout(node, &lineage).map_err(|e| fail(e.to_string()))?;
        if found != lineage {
            // Leave the incumbent's program as it was; it serves on when we exit.
            let _ = node.steer(&self.lineage.pinned_table());
            return Err(fail(format!(
                "the port's sockets are not where they should be (expected {:?}, found {:?}); is another \
                 process of this user bound to the port?",
                lineage.members, found.members
            )));
        }
        let ready = Message::Ready { pid: std::process::id(), generation: self.generation };
        self.channel.send(&ready).map_err(|e| fail(format!("the running process went away: {e}")))?;
        Ok(Predecessor {
            channel: self.channel,
            pid: self.predecessor_pid,
            lineage: Arc::new(Mutex::new(lineage)),
            drain_timeout: self.drain_timeout,
            connections: self.predecessor_connections,
            generation: self.lineage.members.last().map_or(0, |m| m.generation),
        })
    }
}

/// Probe every index of the group `lineage` describes; the lineage as found (members in the same
/// order, each with the indices its cores answered from).
fn check_layout(node: &NodeHandle, lineage: &Lineage) -> io::Result<Lineage> {
    let total = u16::try_from(lineage.sockets()).map_err(|_| io::Error::other("too many sockets to probe"))?;
    let answers = probe_group(probe_target(node.local_addr()), node.cid_key(), total, PROBE_LIMIT)?;
    let mut found = lineage.clone();
    for member in &mut found.members {
        let cores = member.indices.len();
        member.indices = (0..cores)
            .map(|core| {
                let owner = SocketOwner { generation: member.generation, core: core as u8 };
                answers.iter().position(|a| *a == Some(owner)).map_or(u32::MAX, |i| i as u32)
            })
            .collect();
    }
    Ok(found)
}

/// The process this one took over, draining: its reports, and what changes when it leaves.
#[derive(Debug)]
pub struct Predecessor {
    channel: Channel,
    /// Its process ID.
    pub pid: u32,
    /// Every process sharing the port, oldest first (this one last).
    pub lineage: Arc<Mutex<Lineage>>,
    /// Its drain timeout.
    pub drain_timeout: Duration,
    /// Its live connections when the takeover began.
    pub connections: u64,
    /// Its generation.
    pub generation: Generation,
}

/// What the predecessor last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections left.
    pub connections: u64,
    /// Relay allocations left.
    pub relay_allocations: u64,
}

impl Predecessor {
    /// Follow the predecessor's drain on a thread: `report` gets each status (and `None` once it
    /// is gone); when it or an older member leaves, the layout is probed again and the steering
    /// program re-attached, so that the sockets the kernel moved are found. `successor` is where
    /// departures are passed on once this process is taken over in turn.
    pub fn follow(
        self,
        node: NodeHandle,
        report: impl Fn(Option<DrainReport>) + Send + 'static,
        successor: Arc<Mutex<Option<Successor>>>,
    ) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("ant-quic-predecessor".into()).spawn(move || {
            let Predecessor { mut channel, pid, lineage, .. } = self;
            let predecessor_generation =
                lineage.lock().ok().and_then(|l| l.members.iter().rev().nth(1).map(|m| m.generation));
            loop {
                let message = channel.receive(Some(RECHECK_INTERVAL));
                let departed = match message {
                    Ok(Some(Message::Status { connections, relay_allocations })) => {
                        report(Some(DrainReport { connections, relay_allocations }));
                        continue;
                    }
                    Ok(Some(Message::Left { generation })) => vec![generation],
                    Ok(Some(Message::Leaving)) => {
                        // Its sockets close as it exits: wait for that before probing.
                        let _ = channel.receive(Some(SETTLE_LIMIT));
                        report(None);
                        tracing::info!(pid, "the predecessor has left the port");
                        predecessor_generation.into_iter().collect()
                    }
                    Ok(None) => {
                        report(None);
                        tracing::info!(pid, "the predecessor has left the port");
                        predecessor_generation.into_iter().collect()
                    }
                    Ok(Some(_)) => continue,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Vec::new(),
                    Err(_) => {
                        report(None);
                        predecessor_generation.into_iter().collect()
                    }
                };
                let gone = !departed.is_empty() && departed.iter().any(|g| Some(*g) == predecessor_generation);
                settle(&node, &lineage, &departed, &successor);
                if gone {
                    // Keep re-checking while older members may still share the port.
                    while lineage.lock().map(|l| l.members.len() > 1).unwrap_or(false) {
                        std::thread::sleep(RECHECK_INTERVAL);
                        settle(&node, &lineage, &[], &successor);
                    }
                    return;
                }
            }
        })
    }
}

/// Probe the port's layout for the members of `lineage` and steer by what answers: a process that
/// serves new connections again after its successor died.
pub fn steer_by_probes(node: &NodeHandle, lineage: &Mutex<Lineage>) {
    settle(node, lineage, &[], &Mutex::new(None));
}

/// Members `departed` left (or none, for a periodic check): probe until the layout of those that
/// remain is whole, steer by it, and pass departures on to a successor.
fn settle(node: &NodeHandle, lineage: &Mutex<Lineage>, departed: &[Generation], successor: &Mutex<Option<Successor>>) {
    // A process taken over does not steer: it passes departures on at once rather than probe
    // first, because until the newest process re-steers, its table points at the sockets the
    // kernel moved into the leaver's places, and new connections go astray.
    if successor.lock().is_ok_and(|s| s.is_some()) {
        if let Ok(mut shared) = lineage.lock() {
            shared.members.retain(|m| !departed.contains(&m.generation));
        }
        if let Some(successor) = successor.lock().ok().as_mut().and_then(|s| s.as_mut()) {
            departed.iter().for_each(|g| successor.forward_left(*g));
        }
        return;
    }
    let Ok(mut expected) = lineage.lock().map(|l| l.clone()) else { return };
    expected.members.retain(|m| !departed.contains(&m.generation));
    let deadline = Instant::now() + SETTLE_LIMIT;
    let own = std::process::id();
    let found = loop {
        let found = match check_layout(node, &expected) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "cannot probe the port's layout");
                return;
            }
        };
        // Another member none of whose sockets answer has left too: probe again without it.
        let silent = |m: &&Member| m.pid != own && m.indices.iter().all(|&i| i == u32::MAX);
        let gone: Vec<Generation> = found.members.iter().filter(silent).map(|m| m.generation).collect();
        if !gone.is_empty() {
            expected.members.retain(|m| !gone.contains(&m.generation));
            continue;
        }
        let whole = found.members.iter().all(|m| m.indices.iter().all(|&i| i != u32::MAX));
        if whole {
            break found;
        }
        if Instant::now() >= deadline {
            tracing::warn!("the port's layout did not settle (sockets still closing?); steering by what answered");
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Our own sockets must all be found; otherwise keep the program (hand-offs cover it).
    if !found.members.iter().any(|m| m.pid == own && m.indices.iter().all(|&i| i != u32::MAX)) {
        tracing::warn!("this process's sockets did not all answer the probes; steering left as it was");
        return;
    }
    let left: Vec<Generation> = match lineage.lock() {
        Ok(mut shared) => {
            let left = shared
                .members
                .iter()
                .map(|m| m.generation)
                .filter(|g| !found.members.iter().any(|m| m.generation == *g))
                .collect();
            *shared = found.clone();
            left
        }
        Err(_) => return,
    };
    let mut successor = successor.lock().ok();
    match successor.as_mut().and_then(|s| s.as_mut()) {
        // Only the newest process steers; once taken over, it tells the successor instead.
        Some(successor) => left.iter().for_each(|g| successor.forward_left(*g)),
        None => match node.steer(&found.table()) {
            Ok(()) => tracing::info!(members = found.members.len(), "steering follows the port's new layout"),
            Err(error) => tracing::error!(%error, "cannot re-attach the steering program"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_line_each() {
        let message = Message::Accept {
            pid: 7,
            version: "0.1.0".into(),
            key: "00".repeat(16),
            members: vec![Member { generation: 3, pid: 7, indices: vec![0, 1] }],
            drain_timeout: 60,
            connections: 3,
        };
        let line = serde_json::to_string(&message).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"type":"accept""#), "{line}");
        assert_eq!(serde_json::from_str::<Message>(&line).unwrap(), message);
    }

    #[test]
    fn a_lineage_steers_new_connections_to_its_newest_member() {
        let mut lineage = Lineage::alone(1, 2);
        assert!(lineage.table().hash_new_connections, "alone: the kernel's hash");
        assert!(!lineage.pinned_table().hash_new_connections);
        lineage.members.push(Member { generation: 2, pid: 9, indices: vec![2, 3] });
        let table = lineage.table();
        assert!(!table.hash_new_connections, "two processes: never the hash, which would pick either");
        assert_eq!(table.generations.last().map(|g| g.generation), Some(2));
        assert_eq!(lineage.sockets(), 4);
    }

    #[test]
    fn the_rendezvous_name_is_the_listen_address() {
        let name = rendezvous("0.0.0.0:9000".parse().unwrap()).unwrap();
        assert_eq!(name.as_abstract_name(), Some(&b"ant-quic/takeover/udp/0.0.0.0:9000"[..]));
    }
}
