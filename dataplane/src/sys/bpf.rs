//! The bpf(2) system call: maps, loading an eBPF program (with the verifier's log when it is
//! refused), attaching an XDP program to an interface through a BPF link, and running a program
//! once over a frame (`BPF_PROG_TEST_RUN`).
//!
//! Every object is an [`OwnedFd`]: dropping a [`Map`] or [`Program`] releases our reference, and
//! dropping an [`XdpLink`] detaches the program (the link belongs to the process, so a process
//! killed with SIGKILL detaches it too: the kernel closes its descriptors).
//!
//! libc 0.2 has `SYS_bpf` and the AF_XDP structures but not the bpf(2) commands or attribute
//! layouts; they are defined here from include/uapi/linux/bpf.h and if_link.h (Linux 6.x), each
//! attribute structure holding only the leading fields we set (the kernel zero-fills the rest of
//! `union bpf_attr` up to the size we pass).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One eBPF instruction, `struct bpf_insn` (include/uapi/linux/bpf.h): opcode, destination
/// register (low nibble) and source register (high nibble), signed offset, signed immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class, size or operation, mode or source.
    pub code: u8,
    /// `dst_reg` in bits 0..4, `src_reg` in bits 4..8.
    pub regs: u8,
    /// Jump offset in instructions, or memory offset in bytes.
    pub off: i16,
    /// Immediate operand.
    pub imm: i32,
}

impl Insn {
    /// An instruction from its fields.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self { code, regs: (dst & 0x0f) | (src << 4), off, imm }
    }

    /// The destination register.
    pub const fn dst(self) -> u8 {
        self.regs & 0x0f
    }

    /// The source register.
    pub const fn src(self) -> u8 {
        self.regs >> 4
    }
}

// enum bpf_cmd.
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_LINK_CREATE: u32 = 28;
// enum bpf_map_type.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
// enum bpf_prog_type.
const BPF_PROG_TYPE_XDP: u32 = 6;
// enum bpf_attach_type.
const BPF_XDP: u32 = 37;
// include/uapi/linux/if_link.h: XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_ANY` for map updates: create or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: replace only.
const BPF_EXIST: u64 = 2;
/// The verifier's log, when a program is refused, is cut at this size.
const LOG_SIZE: usize = 1 << 20;

/// `union bpf_attr` for BPF_MAP_CREATE (leading fields).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for BPF_MAP_*_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_PROG_LOAD (leading fields).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (leading fields).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE (leading fields).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// The attribute structures above: plain `repr(C)` integers, valid for any bit pattern.
trait Attr {}
impl Attr for MapCreateAttr {}
impl Attr for MapElemAttr {}
impl Attr for ProgLoadAttr {}
impl Attr for TestRunAttr {}
impl Attr for LinkCreateAttr {}

/// bpf(cmd, attr, sizeof attr). Any pointer the caller put in `attr` must be valid for what
/// `cmd` does with it until this returns (each caller says why it is).
fn bpf<A: Attr>(cmd: u32, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a live, exclusively borrowed attribute structure of exactly the size
    // passed; the kernel reads it and may write into it (test run results) within that size. The
    // addresses inside it are the caller's responsibility, as documented above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            (attr as *mut A).cast::<libc::c_void>(),
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A descriptor the kernel just returned, now ours alone.
fn owned(fd: i64) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new descriptor that nothing else in the process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The name the kernel shows for a map or program (at most 15 bytes, NUL-terminated).
fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out.iter_mut().zip(name.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'_').take(15)) {
        *slot = byte;
    }
    out
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: u32,
    value_size: u32,
    per_cpu: bool,
}

impl Map {
    fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32, name: &str) -> io::Result<Self> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_name: object_name(name),
            ..Default::default()
        };
        let fd = owned(bpf(BPF_MAP_CREATE, &mut attr)?)?;
        Ok(Self { fd, key_size, value_size, per_cpu: map_type == BPF_MAP_TYPE_PERCPU_ARRAY })
    }

    /// An XSKMAP of `entries` AF_XDP sockets, keyed by RX queue index.
    pub fn xsk(entries: u32, name: &str) -> io::Result<Self> {
        Self::create(BPF_MAP_TYPE_XSKMAP, 4, 4, entries, name)
    }

    /// A per-CPU array of `entries` 64-bit counters (no atomics on the packet path; reading sums
    /// the CPUs).
    pub fn counters(entries: u32, name: &str) -> io::Result<Self> {
        Self::create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, entries, name)
    }

    /// A hash map of up to `entries` values of `value_size` bytes under keys of `key_size` bytes
    /// (one copy shared by every CPU: the program updates counters in it with atomic adds).
    pub fn hash(key_size: u32, value_size: u32, entries: u32, name: &str) -> io::Result<Self> {
        Self::create(BPF_MAP_TYPE_HASH, key_size, value_size, entries, name)
    }

    /// Create or replace the value under `key` (both of the map's sizes).
    pub fn insert(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.update(key, value, BPF_ANY)
    }

    /// Create the value under `key` unless there is one; `false` when there was (nothing changed).
    pub fn insert_new(&self, key: &[u8], value: &[u8]) -> io::Result<bool> {
        match self.update(key, value, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replace the value under `key` if there is one; `false` when there was none (nothing changed).
    pub fn replace(&self, key: &[u8], value: &[u8]) -> io::Result<bool> {
        match self.update(key, value, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The value under `key`, or `None` when there is none.
    pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if key.len() != self.key_size as usize || self.per_cpu {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut value = vec![0u8; self.value_size as usize];
        let mut attr = MapElemAttr {
            map_fd: self.raw_fd_u32(),
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        // `key` is a live slice of the map's key size, only read; `value` is an exclusively
        // owned buffer of the map's value size (not per-CPU), which the kernel writes.
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the value under `key`; `false` when there was none.
    pub fn remove(&self, key: &[u8]) -> io::Result<bool> {
        if key.len() != self.key_size as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut attr = MapElemAttr { map_fd: self.raw_fd_u32(), key: key.as_ptr() as u64, ..Default::default() };
        // `key` is a live slice of the map's key size, which the kernel only reads.
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Put the AF_XDP socket `socket` at `index` of an XSKMAP (it receives what the program
    /// redirects to that index).
    pub fn set_socket(&self, index: u32, socket: &impl AsRawFd) -> io::Result<()> {
        let value = u32::try_from(socket.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        self.update(&index.to_ne_bytes(), &value.to_ne_bytes(), BPF_ANY)
    }

    fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        if key.len() != self.key_size as usize || value.len() != self.value_size as usize || self.per_cpu {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut attr = MapElemAttr {
            map_fd: self.raw_fd_u32(),
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
            ..Default::default()
        };
        // `key` and `value` are live slices of exactly the map's key and value sizes, which the
        // kernel only reads.
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Counter `index` of a [`Map::counters`] map, summed over every CPU.
    pub fn counter(&self, index: u32) -> io::Result<u64> {
        if !self.per_cpu {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let cpus = possible_cpus()?;
        // The kernel writes one value, rounded up to 8 bytes, per possible CPU.
        let mut values = vec![0u64; cpus * (self.value_size as usize).div_ceil(8)];
        let key = index.to_ne_bytes();
        let mut attr = MapElemAttr {
            map_fd: self.raw_fd_u32(),
            key: key.as_ptr() as u64,
            value: values.as_mut_ptr() as u64,
            ..Default::default()
        };
        // `key` is 4 live bytes (the key size); `values` has room for a value per possible CPU,
        // which is what the kernel writes for a per-CPU array.
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }

    fn raw_fd_u32(&self) -> u32 {
        self.fd.as_raw_fd() as u32
    }
}

impl AsRawFd for Map {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns()`, and of
/// `std::time::Instant` on Linux.
pub fn ktime_now_ns() -> io::Result<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a live, exclusively borrowed timespec that clock_gettime writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(now.tv_sec).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let nanos = u64::try_from(now.tv_nsec).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// How many CPUs the kernel may ever bring up (the per-CPU maps' width):
/// /sys/devices/system/cpu/possible, a list of ranges such as `0-3,8-11`.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim()).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cpu list '{text}'")))
}

/// The highest CPU of a list such as `0-3,8` plus one (per-CPU maps are indexed up to it).
fn parse_cpu_list(list: &str) -> Option<usize> {
    let mut highest = None;
    for part in list.split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        highest = highest.max(Some(last));
    }
    highest.map(|h| h + 1)
}

/// Why the kernel refused a program.
#[derive(Debug, thiserror::Error)]
#[error("the kernel refused the XDP program: {error}{}", if log.is_empty() { String::new() } else { format!("; verifier log:\n{log}") })]
pub struct LoadError {
    /// The error of BPF_PROG_LOAD.
    pub error: io::Error,
    /// The verifier's log (empty when the refusal came before the verifier).
    pub log: String,
}

/// A loaded eBPF program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Load `insns` as an XDP program named `name`. On refusal, loads again with the verifier's
    /// log on, and returns it in the error.
    pub fn load_xdp(insns: &[Insn], name: &str) -> Result<Self, LoadError> {
        match Self::load(insns, name, None) {
            Ok(program) => Ok(program),
            Err(first) => {
                let mut log = vec![0u8; LOG_SIZE];
                if let Ok(program) = Self::load(insns, name, Some(&mut log)) {
                    return Ok(program);
                }
                // The first error is the refusal's; the second may only say the log was cut.
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let log = String::from_utf8_lossy(&log[..end]).trim_end().to_owned();
                Err(LoadError { error: first, log })
            }
        }
    }

    fn load(insns: &[Insn], name: &str, log: Option<&mut [u8]>) -> io::Result<Self> {
        const LICENSE: &[u8] = b"Dual MIT/GPL\0";
        let insn_cnt = u32::try_from(insns.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, u32::try_from(buf.len()).unwrap_or(u32::MAX), buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            prog_name: object_name(name),
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        // `insns` is a live slice of `insn_cnt` instructions, `LICENSE` a NUL-terminated static
        // string, both only read; the log buffer, when given, is a live, exclusively borrowed
        // slice of `log_size` bytes the kernel may write.
        Ok(Self { fd: owned(bpf(BPF_PROG_LOAD, &mut attr)?)? })
    }

    /// Run the program once over `frame` (BPF_PROG_TEST_RUN, RX queue 0, no device): its return
    /// value (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, ...). Redirects are not carried out.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<u32> {
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        // `frame` is a live slice of `data_size_in` bytes the kernel copies in; no output buffer
        // is given (`data_out` null), so the kernel writes only into `attr`.
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(attr.retval)
    }

    /// [`Program::test_run`], also returning the frame as the program left it (rewritten
    /// headers included).
    pub fn test_run_with_output(&self, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        // Room for the frame grown by a program that adds headers in front (XDP headroom).
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            data_size_out: u32::try_from(out.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        // `frame` is a live slice of `data_size_in` bytes the kernel copies in; `out` is an
        // exclusively owned buffer of `data_size_out` bytes, which the kernel writes at most
        // that many bytes into (ENOSPC otherwise) and reports the length in `data_size_out`.
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        out.truncate(attr.data_size_out as usize);
        Ok((attr.retval, out))
    }
}

/// Where an XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before any socket buffer is allocated.
    Native,
    /// In the generic path, after the socket buffer is built (any driver; slower).
    Generic,
}

impl XdpMode {
    /// `native` or `generic`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// Why an XDP program could not be attached.
#[derive(Debug, thiserror::Error)]
#[error("cannot attach the XDP program to interface index {ifindex}: native mode: {native}; generic mode: {generic}")]
pub struct AttachError {
    /// The interface.
    pub ifindex: u32,
    /// Why native mode failed.
    pub native: io::Error,
    /// Why generic mode failed.
    pub generic: io::Error,
}

/// An XDP program attached to an interface through a BPF link; dropping it detaches the program.
#[derive(Debug)]
pub struct XdpLink {
    fd: OwnedFd,
    mode: XdpMode,
    /// Why native mode was refused, when the program runs in generic mode.
    native_refused: Option<io::Error>,
}

impl XdpLink {
    /// Attach `program` to interface `ifindex`, in native mode where the driver supports it and
    /// in generic mode otherwise.
    pub fn attach(program: &Program, ifindex: u32) -> Result<Self, AttachError> {
        let native = match Self::create(program, ifindex, XDP_FLAGS_DRV_MODE) {
            Ok(fd) => return Ok(Self { fd, mode: XdpMode::Native, native_refused: None }),
            Err(error) => error,
        };
        match Self::create(program, ifindex, XDP_FLAGS_SKB_MODE) {
            Ok(fd) => Ok(Self { fd, mode: XdpMode::Generic, native_refused: Some(native) }),
            Err(generic) => Err(AttachError { ifindex, native, generic }),
        }
    }

    /// Attach in one given mode only.
    pub fn attach_mode(program: &Program, ifindex: u32, mode: XdpMode) -> io::Result<Self> {
        let flags = match mode {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        };
        Ok(Self { fd: Self::create(program, ifindex, flags)?, mode, native_refused: None })
    }

    fn create(program: &Program, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
        let mut attr = LinkCreateAttr {
            prog_fd: program.fd.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags,
        };
        // The attributes hold no pointers.
        owned(bpf(BPF_LINK_CREATE, &mut attr)?)
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Why native mode was refused, when the program runs in generic mode.
    pub fn native_refused(&self) -> Option<&io::Error> {
        self.native_refused.as_ref()
    }
}

impl AsRawFd for XdpLink {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_give_the_highest_cpu_plus_one() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list("0,2"), Some(3));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn registers_share_one_byte_destination_low() {
        let insn = Insn::new(0xbf, 6, 1, 0, 0);
        assert_eq!(insn.regs, 0x16);
        assert_eq!((insn.dst(), insn.src()), (6, 1));
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}
