//! The wire encoding of signalling messages and frames (see `docs/nat-traversal.md`).
//!
//! [`MessageView`] reads a message in place and checks its length against its layout;
//! [`Message::parse`] and [`Message::emit`] convert between bytes and the decoded [`Message`].
//! On the signalling stream each message travels in a frame ([`encode_frame`]) that
//! [`FrameReader`] delimits again.
//!
//! Decoding never panics: every read goes through `get`, and every failure is a [`WireError`]
//! (the receiver answers ERROR `malformed` and carries on).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::message::{
    Candidate, CandidateKind, ErrorCode, Message, Outcome, PunchRole, MAX_CANDIDATES, MAX_MESSAGE, MAX_REASON, VERSION,
};
use crate::PeerId;

/// Why bytes did not decode as a signalling message, a frame or a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the fields need.
    #[error("truncated: fewer bytes than the fields need")]
    Truncated,
    /// More bytes than [`MAX_MESSAGE`].
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// A version this node does not speak.
    #[error("unknown encoding version {0} (this node speaks version {VERSION})")]
    UnknownVersion(u8),
    /// A message type this version does not define.
    #[error("unknown signalling message type {0:#04x}")]
    UnknownType(u8),
    /// An address whose family byte is neither 4 nor 6.
    #[error("bad address family {0} (expected 4 or 6)")]
    BadAddressFamily(u8),
    /// A field whose value its type does not define.
    #[error("bad value in field `{0}`")]
    BadField(&'static str),
    /// Bytes after the last field.
    #[error("trailing bytes after the last field")]
    TrailingBytes,
    /// A PUNCH_ME_NOW announcing more than [`MAX_CANDIDATES`] candidates.
    #[error("{0} candidates announced, at most {MAX_CANDIDATES} allowed")]
    TooManyCandidates(u8),
    /// An ERROR reason that is not UTF-8.
    #[error("ERROR reason is not UTF-8")]
    BadUtf8,
    /// A frame length outside `2..=MAX_MESSAGE`: the stream can no longer be delimited.
    #[error("frame length {0} outside 2..={MAX_MESSAGE}: the signalling stream is unusable, close it")]
    BadFrameLength(u16),
    /// A datagram that does not start with the probe marker.
    #[error("not a probe datagram (first byte {0:#04x})")]
    BadMarker(u8),
}

/// Message type numbers (the second byte of every message).
pub mod message_type {
    /// OBSERVED_ADDRESS (draft-ietf-quic-address-discovery).
    pub const OBSERVED_ADDRESS: u8 = 0x01;
    /// ADD_ADDRESS (draft-seemann-quic-nat-traversal).
    pub const ADD_ADDRESS: u8 = 0x02;
    /// REMOVE_ADDRESS (draft-seemann-quic-nat-traversal).
    pub const REMOVE_ADDRESS: u8 = 0x03;
    /// CONNECT_REQUEST.
    pub const CONNECT_REQUEST: u8 = 0x04;
    /// PUNCH_ME_NOW (draft-seemann-quic-nat-traversal).
    pub const PUNCH_ME_NOW: u8 = 0x05;
    /// RELAY_REQUEST.
    pub const RELAY_REQUEST: u8 = 0x06;
    /// RELAY_GRANT.
    pub const RELAY_GRANT: u8 = 0x07;
    /// ERROR.
    pub const ERROR: u8 = 0x08;
    /// REPORT.
    pub const REPORT: u8 = 0x09;
    /// REREGISTER (the bootstrap is being taken over by a new process).
    pub const REREGISTER: u8 = 0x0a;
}

/// Shortest message: version and type, no body.
pub const MIN_MESSAGE: usize = field::BODY;
/// Bytes of the frame length prefix.
pub const FRAME_HEADER: usize = 2;
/// Longest frame: the length prefix and a message of [`MAX_MESSAGE`] bytes.
pub const MAX_FRAME: usize = FRAME_HEADER + MAX_MESSAGE;

/// Byte offsets of the fields, from the start of the message (version byte).
mod field {
    use std::ops::Range;

    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const BODY: usize = 2;
    /// The u64 that opens every body: sequence, round or request.
    pub const LEADING: Range<usize> = 2..10;

    pub mod observed_address {
        pub const SEQUENCE: std::ops::Range<usize> = super::LEADING;
        pub const ADDRESS: usize = 10;
    }
    pub mod add_address {
        pub const SEQUENCE: std::ops::Range<usize> = super::LEADING;
        pub const CANDIDATE: usize = 10;
    }
    pub mod remove_address {
        pub const SEQUENCE: std::ops::Range<usize> = super::LEADING;
        pub const LEN: usize = 10;
    }
    /// CONNECT_REQUEST and RELAY_REQUEST.
    pub mod peer_request {
        pub const REQUEST: std::ops::Range<usize> = super::LEADING;
        pub const TARGET: std::ops::Range<usize> = 10..42;
        pub const LEN: usize = 42;
    }
    pub mod punch_me_now {
        pub const ROUND: std::ops::Range<usize> = super::LEADING;
        pub const REQUEST: std::ops::Range<usize> = 10..18;
        pub const PEER: std::ops::Range<usize> = 18..50;
        pub const ROLE: usize = 50;
        pub const FLAGS: usize = 51;
        pub const START_IN_MS: std::ops::Range<usize> = 52..56;
        pub const TOKEN: std::ops::Range<usize> = 56..72;
        pub const COUNT: usize = 72;
        pub const CANDIDATES: usize = 73;
    }
    pub mod relay_grant {
        pub const REQUEST: std::ops::Range<usize> = super::LEADING;
        pub const PEER: std::ops::Range<usize> = 10..42;
        pub const CHANNEL: std::ops::Range<usize> = 42..46;
        pub const LIFETIME_S: std::ops::Range<usize> = 46..50;
        pub const BYTE_LIMIT: std::ops::Range<usize> = 50..58;
        pub const RATE_LIMIT: std::ops::Range<usize> = 58..62;
        pub const LEN: usize = 62;
    }
    pub mod error {
        pub const REQUEST: std::ops::Range<usize> = super::LEADING;
        pub const CODE: std::ops::Range<usize> = 10..12;
        pub const REASON_LEN: usize = 12;
        pub const REASON: usize = 13;
    }
    pub mod report {
        pub const REQUEST: std::ops::Range<usize> = super::LEADING;
        pub const OUTCOME: usize = 10;
        pub const CONNECT_MS: std::ops::Range<usize> = 11..15;
        pub const LEN: usize = 15;
    }
    /// The one body without a leading u64: nothing to number, the delay is all it says.
    pub mod reregister {
        pub const DELAY_MS: std::ops::Range<usize> = super::BODY..6;
        pub const LEN: usize = 6;
    }
    /// Within a candidate: kind, priority, then the address.
    pub mod candidate {
        pub const KIND: usize = 0;
        pub const PRIORITY: std::ops::Range<usize> = 1..5;
        pub const ADDRESS: usize = 5;
    }
    /// Within an address: family, ip, then the port.
    pub mod address {
        pub const FAMILY: usize = 0;
        pub const IP: usize = 1;
        pub const V4_LEN: usize = 1 + 4 + 2;
        pub const V6_LEN: usize = 1 + 16 + 2;
    }
}

// ---------------------------------------------------------------------------------------------
// Primitive readers shared by the message and probe views. They never panic: bytes beyond the
// buffer read as zero, which only happens on a view that has not passed its length check.

/// `N` bytes at `at`, zero-filled where the buffer ends early.
pub(crate) fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(bytes) = buf.get(at..) {
        for (dst, src) in out.iter_mut().zip(bytes) {
            *dst = *src;
        }
    }
    out
}

pub(crate) fn u8_at(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array_at(buf, at))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array_at(buf, at))
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array_at(buf, at))
}

/// Encoded length of the address starting at `at`, from its family byte.
pub(crate) fn address_len_at(buf: &[u8], at: usize) -> Result<usize, WireError> {
    match buf.get(at + field::address::FAMILY) {
        None => Err(WireError::Truncated),
        Some(4) => Ok(field::address::V4_LEN),
        Some(6) => Ok(field::address::V6_LEN),
        Some(&family) => Err(WireError::BadAddressFamily(family)),
    }
}

/// The address starting at `at` (its length was checked with [`address_len_at`]).
pub(crate) fn address_at(buf: &[u8], at: usize) -> Result<SocketAddr, WireError> {
    let ip_at = at + field::address::IP;
    let (ip, port_at) = match address_len_at(buf, at)? {
        field::address::V4_LEN => (IpAddr::V4(Ipv4Addr::from(array_at::<4>(buf, ip_at))), ip_at + 4),
        _ => (IpAddr::V6(Ipv6Addr::from(array_at::<16>(buf, ip_at))), ip_at + 16),
    };
    Ok(SocketAddr::new(ip, u16_at(buf, port_at)))
}

/// Encoded length of `address`.
pub(crate) fn address_len(address: &SocketAddr) -> usize {
    match address {
        SocketAddr::V4(_) => field::address::V4_LEN,
        SocketAddr::V6(_) => field::address::V6_LEN,
    }
}

/// Append `address`. An IPv6 flow label and scope ID are local to the sender's host and are not
/// sent (they read back as 0); an IPv4-mapped IPv6 address stays family 6.
pub(crate) fn emit_address(out: &mut Vec<u8>, address: &SocketAddr) {
    match address.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&address.port().to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Small enums ↔ their wire numbers.

fn kind_to_wire(kind: CandidateKind) -> u8 {
    match kind {
        CandidateKind::Host => 0,
        CandidateKind::ServerReflexive => 1,
        CandidateKind::PeerReflexive => 2,
        CandidateKind::Relayed => 3,
    }
}

fn kind_from_wire(byte: u8) -> Result<CandidateKind, WireError> {
    match byte {
        0 => Ok(CandidateKind::Host),
        1 => Ok(CandidateKind::ServerReflexive),
        2 => Ok(CandidateKind::PeerReflexive),
        3 => Ok(CandidateKind::Relayed),
        _ => Err(WireError::BadField("candidate kind")),
    }
}

fn role_to_wire(role: PunchRole) -> u8 {
    match role {
        PunchRole::Initiator => 0,
        PunchRole::Responder => 1,
    }
}

fn role_from_wire(byte: u8) -> Result<PunchRole, WireError> {
    match byte {
        0 => Ok(PunchRole::Initiator),
        1 => Ok(PunchRole::Responder),
        _ => Err(WireError::BadField("role")),
    }
}

fn outcome_to_wire(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Direct => 0,
        Outcome::Relayed => 1,
        Outcome::Failed => 2,
    }
}

fn outcome_from_wire(byte: u8) -> Result<Outcome, WireError> {
    match byte {
        0 => Ok(Outcome::Direct),
        1 => Ok(Outcome::Relayed),
        2 => Ok(Outcome::Failed),
        _ => Err(WireError::BadField("outcome")),
    }
}

/// `Other(n)` with a code this version names (1..=6) goes out as that code and reads back as the
/// named variant.
fn code_to_wire(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Malformed => 1,
        ErrorCode::NotRegistered => 2,
        ErrorCode::UnknownPeer => 3,
        ErrorCode::RateLimited => 4,
        ErrorCode::RelayRefused => 5,
        ErrorCode::NotAuthenticated => 6,
        ErrorCode::Other(n) => n,
    }
}

/// Unknown codes are kept, not refused: a newer sender may define more.
fn code_from_wire(n: u16) -> ErrorCode {
    match n {
        1 => ErrorCode::Malformed,
        2 => ErrorCode::NotRegistered,
        3 => ErrorCode::UnknownPeer,
        4 => ErrorCode::RateLimited,
        5 => ErrorCode::RelayRefused,
        6 => ErrorCode::NotAuthenticated,
        n => ErrorCode::Other(n),
    }
}

// ---------------------------------------------------------------------------------------------
// The view.

/// A signalling message read in place: a zero-copy view over its bytes (version byte first, no
/// frame length).
///
/// [`MessageView::new_checked`] accepts only a buffer whose length is exactly what its type and
/// its variable parts (address families, candidate count, reason length) call for. Accessors
/// never panic: on a buffer that has not passed [`MessageView::check_len`], bytes beyond its end
/// read as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> MessageView<T> {
    /// A view over `buffer` without any check.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view over `buffer` that has passed [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let view = Self::new_unchecked(buffer);
        view.check_len()?;
        Ok(view)
    }

    /// Check the header (version, known type) and that the buffer holds exactly the message's
    /// layout: [`WireError::Truncated`] if shorter, [`WireError::TrailingBytes`] if longer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_MESSAGE {
            return Err(WireError::Truncated);
        }
        // Before anything else: no need to look into a buffer no valid message fills.
        if len > MAX_MESSAGE {
            return Err(WireError::TooLong);
        }
        if self.version() != VERSION {
            return Err(WireError::UnknownVersion(self.version()));
        }
        let needed = self.layout_len()?;
        match len.cmp(&needed) {
            std::cmp::Ordering::Less => Err(WireError::Truncated),
            std::cmp::Ordering::Greater => Err(WireError::TrailingBytes),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// The length the message's layout calls for, read from its type and variable parts.
    fn layout_len(&self) -> Result<usize, WireError> {
        use message_type as t;
        let buf = self.buffer.as_ref();
        match self.message_type() {
            t::OBSERVED_ADDRESS => {
                let at = field::observed_address::ADDRESS;
                Ok(at + address_len_at(buf, at)?)
            }
            t::ADD_ADDRESS => {
                let at = field::add_address::CANDIDATE + field::candidate::ADDRESS;
                Ok(at + address_len_at(buf, at)?)
            }
            t::REMOVE_ADDRESS => Ok(field::remove_address::LEN),
            t::CONNECT_REQUEST | t::RELAY_REQUEST => Ok(field::peer_request::LEN),
            t::PUNCH_ME_NOW => {
                let count = *buf.get(field::punch_me_now::COUNT).ok_or(WireError::Truncated)?;
                if usize::from(count) > MAX_CANDIDATES {
                    return Err(WireError::TooManyCandidates(count));
                }
                let mut at = field::punch_me_now::CANDIDATES;
                for _ in 0..count {
                    at += field::candidate::ADDRESS;
                    at += address_len_at(buf, at)?;
                }
                Ok(at)
            }
            t::RELAY_GRANT => Ok(field::relay_grant::LEN),
            t::ERROR => {
                let reason_len = *buf.get(field::error::REASON_LEN).ok_or(WireError::Truncated)?;
                Ok(field::error::REASON + usize::from(reason_len))
            }
            t::REPORT => Ok(field::report::LEN),
            t::REREGISTER => Ok(field::reregister::LEN),
            other => Err(WireError::UnknownType(other)),
        }
    }

    /// The bytes under the view.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The encoding version (1).
    pub fn version(&self) -> u8 {
        u8_at(self.buffer.as_ref(), field::VERSION)
    }

    /// The message type (see [`message_type`]).
    pub fn message_type(&self) -> u8 {
        u8_at(self.buffer.as_ref(), field::TYPE)
    }

    /// The bytes after version and type.
    pub fn body(&self) -> &[u8] {
        self.buffer.as_ref().get(field::BODY..).unwrap_or(&[])
    }

    /// The request number of a message type that carries one (CONNECT_REQUEST, PUNCH_ME_NOW,
    /// RELAY_REQUEST, RELAY_GRANT, ERROR, REPORT), if its bytes are there. Readable on an
    /// unchecked view, so that a receiver can answer a malformed request with an ERROR that
    /// names it.
    pub fn request(&self) -> Option<u64> {
        use message_type as t;
        let range = match self.message_type() {
            t::CONNECT_REQUEST | t::RELAY_REQUEST | t::RELAY_GRANT | t::ERROR | t::REPORT => field::LEADING,
            t::PUNCH_ME_NOW => field::punch_me_now::REQUEST,
            _ => return None,
        };
        let bytes = self.buffer.as_ref().get(range)?;
        Some(u64_at(bytes, 0))
    }

    /// The candidate starting at `at`.
    fn candidate_at(&self, at: usize) -> Result<Candidate, WireError> {
        let buf = self.buffer.as_ref();
        Ok(Candidate {
            kind: kind_from_wire(u8_at(buf, at + field::candidate::KIND))?,
            priority: u32_at(buf, at + field::candidate::PRIORITY.start),
            address: address_at(buf, at + field::candidate::ADDRESS)?,
        })
    }

    fn peer_at(&self, range: std::ops::Range<usize>) -> PeerId {
        PeerId(array_at(self.buffer.as_ref(), range.start))
    }

    /// Decode the message. Run on a checked view; on an unchecked one the result is only as
    /// good as the bytes (missing ones read as zero).
    pub fn to_message(&self) -> Result<Message, WireError> {
        use message_type as t;
        let buf = self.buffer.as_ref();
        let message = match self.message_type() {
            t::OBSERVED_ADDRESS => Message::ObservedAddress {
                sequence: u64_at(buf, field::observed_address::SEQUENCE.start),
                address: address_at(buf, field::observed_address::ADDRESS)?,
            },
            t::ADD_ADDRESS => Message::AddAddress {
                sequence: u64_at(buf, field::add_address::SEQUENCE.start),
                candidate: self.candidate_at(field::add_address::CANDIDATE)?,
            },
            t::REMOVE_ADDRESS => {
                Message::RemoveAddress { sequence: u64_at(buf, field::remove_address::SEQUENCE.start) }
            }
            t::CONNECT_REQUEST => Message::ConnectRequest {
                request: u64_at(buf, field::peer_request::REQUEST.start),
                target: self.peer_at(field::peer_request::TARGET),
            },
            t::RELAY_REQUEST => Message::RelayRequest {
                request: u64_at(buf, field::peer_request::REQUEST.start),
                target: self.peer_at(field::peer_request::TARGET),
            },
            t::PUNCH_ME_NOW => {
                use field::punch_me_now as f;
                let count = usize::from(u8_at(buf, f::COUNT));
                if count > MAX_CANDIDATES {
                    return Err(WireError::TooManyCandidates(u8_at(buf, f::COUNT)));
                }
                let mut candidates = Vec::with_capacity(count);
                let mut at = f::CANDIDATES;
                for _ in 0..count {
                    candidates.push(self.candidate_at(at)?);
                    at += field::candidate::ADDRESS + address_len_at(buf, at + field::candidate::ADDRESS)?;
                }
                Message::PunchMeNow {
                    round: u64_at(buf, f::ROUND.start),
                    request: u64_at(buf, f::REQUEST.start),
                    peer: self.peer_at(f::PEER),
                    role: role_from_wire(u8_at(buf, f::ROLE))?,
                    flags: u8_at(buf, f::FLAGS),
                    start_in_ms: u32_at(buf, f::START_IN_MS.start),
                    token: array_at(buf, f::TOKEN.start),
                    candidates,
                }
            }
            t::RELAY_GRANT => {
                use field::relay_grant as f;
                Message::RelayGrant {
                    request: u64_at(buf, f::REQUEST.start),
                    peer: self.peer_at(f::PEER),
                    channel: u32_at(buf, f::CHANNEL.start),
                    lifetime_s: u32_at(buf, f::LIFETIME_S.start),
                    byte_limit: u64_at(buf, f::BYTE_LIMIT.start),
                    rate_limit: u32_at(buf, f::RATE_LIMIT.start),
                }
            }
            t::ERROR => {
                use field::error as f;
                let reason_len = usize::from(u8_at(buf, f::REASON_LEN));
                let reason = buf.get(f::REASON..f::REASON + reason_len).ok_or(WireError::Truncated)?;
                Message::Error {
                    request: u64_at(buf, f::REQUEST.start),
                    code: code_from_wire(u16_at(buf, f::CODE.start)),
                    reason: std::str::from_utf8(reason).map_err(|_| WireError::BadUtf8)?.to_owned(),
                }
            }
            t::REPORT => Message::Report {
                request: u64_at(buf, field::report::REQUEST.start),
                outcome: outcome_from_wire(u8_at(buf, field::report::OUTCOME))?,
                connect_ms: u32_at(buf, field::report::CONNECT_MS.start),
            },
            t::REREGISTER => Message::Reregister { delay_ms: u32_at(buf, field::reregister::DELAY_MS.start) },
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(message)
    }
}

// ---------------------------------------------------------------------------------------------
// The repr.

/// The longest prefix of `reason` that fits [`MAX_REASON`] bytes and ends on a char boundary.
fn emitted_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    // Index 0 is always a boundary, so this stops.
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

/// The candidates a PUNCH_ME_NOW carries: the first [`MAX_CANDIDATES`].
fn emitted_candidates(candidates: &[Candidate]) -> &[Candidate] {
    candidates.get(..MAX_CANDIDATES).unwrap_or(candidates)
}

fn candidate_len(candidate: &Candidate) -> usize {
    field::candidate::ADDRESS + address_len(&candidate.address)
}

fn emit_candidate(out: &mut Vec<u8>, candidate: &Candidate) {
    out.push(kind_to_wire(candidate.kind));
    out.extend_from_slice(&candidate.priority.to_be_bytes());
    emit_address(out, &candidate.address);
}

impl Message {
    /// Decode one message (version byte first, without the frame length): the whole buffer must
    /// be exactly one message.
    pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
        MessageView::new_checked(buf)?.to_message()
    }

    /// The message's type number (see [`message_type`]).
    pub fn message_type(&self) -> u8 {
        use message_type as t;
        match self {
            Message::ObservedAddress { .. } => t::OBSERVED_ADDRESS,
            Message::AddAddress { .. } => t::ADD_ADDRESS,
            Message::RemoveAddress { .. } => t::REMOVE_ADDRESS,
            Message::ConnectRequest { .. } => t::CONNECT_REQUEST,
            Message::PunchMeNow { .. } => t::PUNCH_ME_NOW,
            Message::RelayRequest { .. } => t::RELAY_REQUEST,
            Message::RelayGrant { .. } => t::RELAY_GRANT,
            Message::Error { .. } => t::ERROR,
            Message::Report { .. } => t::REPORT,
            Message::Reregister { .. } => t::REREGISTER,
        }
    }

    /// Bytes [`Self::emit`] appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::ObservedAddress { address, .. } => field::observed_address::ADDRESS + address_len(address),
            Message::AddAddress { candidate, .. } => field::add_address::CANDIDATE + candidate_len(candidate),
            Message::RemoveAddress { .. } => field::remove_address::LEN,
            Message::ConnectRequest { .. } | Message::RelayRequest { .. } => field::peer_request::LEN,
            Message::PunchMeNow { candidates, .. } => {
                field::punch_me_now::CANDIDATES
                    + emitted_candidates(candidates).iter().map(candidate_len).sum::<usize>()
            }
            Message::RelayGrant { .. } => field::relay_grant::LEN,
            Message::Error { reason, .. } => field::error::REASON + emitted_reason(reason).len(),
            Message::Report { .. } => field::report::LEN,
            Message::Reregister { .. } => field::reregister::LEN,
        }
    }

    /// Append the encoding (version byte first, without the frame length) to `out`.
    ///
    /// What the format cannot carry is cut so that the result always parses: a PUNCH_ME_NOW
    /// carries its first [`MAX_CANDIDATES`] candidates (list them best first), an ERROR reason is
    /// cut to [`MAX_REASON`] bytes at a char boundary, and an IPv6 address loses its flow label
    /// and scope ID. [`Self::encoded_len`] counts the same bytes.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(VERSION);
        out.push(self.message_type());
        match self {
            Message::ObservedAddress { sequence, address } => {
                out.extend_from_slice(&sequence.to_be_bytes());
                emit_address(out, address);
            }
            Message::AddAddress { sequence, candidate } => {
                out.extend_from_slice(&sequence.to_be_bytes());
                emit_candidate(out, candidate);
            }
            Message::RemoveAddress { sequence } => out.extend_from_slice(&sequence.to_be_bytes()),
            Message::ConnectRequest { request, target } | Message::RelayRequest { request, target } => {
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&target.0);
            }
            Message::PunchMeNow { round, request, peer, role, flags, start_in_ms, token, candidates } => {
                let candidates = emitted_candidates(candidates);
                out.extend_from_slice(&round.to_be_bytes());
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&peer.0);
                out.push(role_to_wire(*role));
                out.push(*flags);
                out.extend_from_slice(&start_in_ms.to_be_bytes());
                out.extend_from_slice(token);
                // At most MAX_CANDIDATES (8) after the cut above, so the count fits a byte.
                out.push(candidates.len() as u8);
                for candidate in candidates {
                    emit_candidate(out, candidate);
                }
            }
            Message::RelayGrant { request, peer, channel, lifetime_s, byte_limit, rate_limit } => {
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&peer.0);
                out.extend_from_slice(&channel.to_be_bytes());
                out.extend_from_slice(&lifetime_s.to_be_bytes());
                out.extend_from_slice(&byte_limit.to_be_bytes());
                out.extend_from_slice(&rate_limit.to_be_bytes());
            }
            Message::Error { request, code, reason } => {
                let reason = emitted_reason(reason);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&code_to_wire(*code).to_be_bytes());
                // At most MAX_REASON (255) after the cut above, so the length fits a byte.
                out.push(reason.len() as u8);
                out.extend_from_slice(reason.as_bytes());
            }
            Message::Report { request, outcome, connect_ms } => {
                out.extend_from_slice(&request.to_be_bytes());
                out.push(outcome_to_wire(*outcome));
                out.extend_from_slice(&connect_ms.to_be_bytes());
            }
            Message::Reregister { delay_ms } => out.extend_from_slice(&delay_ms.to_be_bytes()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing on the signalling stream.

/// One frame for the signalling stream: the message's length (u16, big-endian), then the
/// message.
pub fn encode_frame(message: &Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(FRAME_HEADER + len);
    // The longest encodable message (an ERROR with a 255-byte reason, 268 bytes) is far below
    // MAX_MESSAGE, so the length always fits the u16 and the reader's bound.
    out.extend_from_slice(&(len as u16).to_be_bytes());
    message.emit(&mut out);
    out
}

/// Delimits the messages of a signalling stream: push the bytes as they arrive, then take the
/// messages with [`FrameReader::next_message`] until it returns `None`.
///
/// A frame whose message does not parse yields that error and the reader goes on with the next
/// frame. A frame length outside `2..=MAX_MESSAGE` leaves the stream impossible to delimit: the
/// reader returns [`WireError::BadFrameLength`] once, is poisoned, and from then on drops what is
/// pushed and returns `None` (close the stream).
///
/// Memory is bounded whatever the peer sends: once `next_message` has returned `None`, fewer than
/// [`MAX_FRAME`] bytes stay buffered (a partial frame), and pushing more only adds what was
/// pushed.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Where the first unread frame starts in `buffer`.
    start: usize,
    poisoned: bool,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned {
            return;
        }
        // Drop the frames already returned before growing.
        self.buffer.drain(..self.start.min(self.buffer.len()));
        self.start = 0;
        // A burst may have grown the buffer; give the memory back once it is drained.
        if self.buffer.capacity() > 4 * MAX_FRAME && self.buffer.len() < MAX_FRAME {
            self.buffer.shrink_to(MAX_FRAME);
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next message: `None` when no complete frame is buffered (or the reader is poisoned),
    /// `Some(Err(..))` for a frame that does not parse (or, once, for a bad frame length).
    pub fn next_message(&mut self) -> Option<Result<Message, WireError>> {
        if self.poisoned {
            return None;
        }
        let pending = self.buffer.get(self.start..)?;
        let len = u16::from_be_bytes(pending.get(..FRAME_HEADER)?.try_into().ok()?);
        if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&usize::from(len)) {
            self.poisoned = true;
            self.buffer = Vec::new();
            self.start = 0;
            return Some(Err(WireError::BadFrameLength(len)));
        }
        let end = FRAME_HEADER + usize::from(len);
        let message = Message::parse(pending.get(FRAME_HEADER..end)?);
        self.start += end;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Some(message)
    }

    /// Whether a bad frame length made the stream impossible to delimit.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Bytes pushed and not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buffer.len().saturating_sub(self.start)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;

    use super::*;

    // --- strategies, shared with the probe tests -----------------------------------------------

    /// Any IPv4 or IPv6 socket address the wire carries (no flow label or scope ID).
    pub(crate) fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        ]
    }

    fn candidate_kind() -> impl Strategy<Value = CandidateKind> {
        prop_oneof![
            Just(CandidateKind::Host),
            Just(CandidateKind::ServerReflexive),
            Just(CandidateKind::PeerReflexive),
            Just(CandidateKind::Relayed),
        ]
    }

    fn candidate() -> impl Strategy<Value = Candidate> {
        (candidate_kind(), any::<u32>(), socket_addr()).prop_map(|(kind, priority, address)| Candidate {
            kind,
            priority,
            address,
        })
    }

    fn peer_id() -> impl Strategy<Value = PeerId> {
        any::<[u8; 32]>().prop_map(PeerId)
    }

    /// Every code, with `Other` only for numbers this version does not name (a named number
    /// reads back as the named variant, see `other_codes_with_a_name_read_back_named`).
    fn error_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::Malformed),
            Just(ErrorCode::NotRegistered),
            Just(ErrorCode::UnknownPeer),
            Just(ErrorCode::RateLimited),
            Just(ErrorCode::RelayRefused),
            Just(ErrorCode::NotAuthenticated),
            Just(ErrorCode::Other(0)),
            (7u16..).prop_map(ErrorCode::Other),
        ]
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![Just(Outcome::Direct), Just(Outcome::Relayed), Just(Outcome::Failed)]
    }

    fn role() -> impl Strategy<Value = PunchRole> {
        prop_oneof![Just(PunchRole::Initiator), Just(PunchRole::Responder)]
    }

    /// Any message within the format's limits.
    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), socket_addr())
                .prop_map(|(sequence, address)| Message::ObservedAddress { sequence, address }),
            (any::<u64>(), candidate()).prop_map(|(sequence, candidate)| Message::AddAddress { sequence, candidate }),
            any::<u64>().prop_map(|sequence| Message::RemoveAddress { sequence }),
            (any::<u64>(), peer_id()).prop_map(|(request, target)| Message::ConnectRequest { request, target }),
            (
                (any::<u64>(), any::<u64>(), peer_id(), role(), any::<u8>()),
                (any::<u32>(), any::<[u8; 16]>(), proptest::collection::vec(candidate(), 0..=MAX_CANDIDATES)),
            )
                .prop_map(|((round, request, peer, role, flags), (start_in_ms, token, candidates))| {
                    Message::PunchMeNow { round, request, peer, role, flags, start_in_ms, token, candidates }
                }),
            (any::<u64>(), peer_id()).prop_map(|(request, target)| Message::RelayRequest { request, target }),
            (any::<u64>(), peer_id(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
                |(request, peer, channel, lifetime_s, byte_limit, rate_limit)| Message::RelayGrant {
                    request,
                    peer,
                    channel,
                    lifetime_s,
                    byte_limit,
                    rate_limit
                }
            ),
            // Up to 63 chars of at most 4 bytes: within MAX_REASON.
            (any::<u64>(), error_code(), "\\PC{0,63}").prop_map(|(request, code, reason)| Message::Error {
                request,
                code,
                reason
            }),
            (any::<u64>(), outcome(), any::<u32>()).prop_map(|(request, outcome, connect_ms)| Message::Report {
                request,
                outcome,
                connect_ms
            }),
            any::<u32>().prop_map(|delay_ms| Message::Reregister { delay_ms }),
        ]
    }

    fn encode(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        message.emit(&mut out);
        out
    }

    // --- pinned encodings --------------------------------------------------------------------

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// One known encoding per message type, written out byte by byte from the table in
    /// docs/nat-traversal.md, so that the format is pinned and not only self-consistent.
    fn known_encodings() -> Vec<(Message, Vec<u8>)> {
        let v6 = |s: &str, port| SocketAddr::new(IpAddr::V6(s.parse().unwrap()), port);
        vec![
            (
                Message::ObservedAddress { sequence: 7, address: "192.0.2.1:4433".parse().unwrap() },
                cat(&[&[1, 0x01], &[0, 0, 0, 0, 0, 0, 0, 7], &[4, 192, 0, 2, 1, 0x11, 0x51]]),
            ),
            (
                Message::AddAddress {
                    sequence: 0x0102_0304_0506_0708,
                    candidate: Candidate {
                        kind: CandidateKind::Host,
                        priority: 0x7e00_00ff,
                        address: v6("2001:db8::1", 443),
                    },
                },
                cat(&[
                    &[1, 0x02],
                    &[1, 2, 3, 4, 5, 6, 7, 8],
                    &[0, 0x7e, 0, 0, 0xff],
                    &[6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb],
                ]),
            ),
            (Message::RemoveAddress { sequence: 3 }, cat(&[&[1, 0x03], &[0, 0, 0, 0, 0, 0, 0, 3]])),
            (
                Message::ConnectRequest { request: 9, target: PeerId([0xaa; 32]) },
                cat(&[&[1, 0x04], &[0, 0, 0, 0, 0, 0, 0, 9], &[0xaa; 32]]),
            ),
            (
                Message::PunchMeNow {
                    round: 1,
                    request: 2,
                    peer: PeerId([0xbb; 32]),
                    role: PunchRole::Responder,
                    flags: 0,
                    start_in_ms: 250,
                    token: [0x11; 16],
                    candidates: vec![
                        Candidate {
                            kind: CandidateKind::ServerReflexive,
                            priority: 100,
                            address: "203.0.113.5:9000".parse().unwrap(),
                        },
                        Candidate { kind: CandidateKind::Relayed, priority: 0, address: v6("::1", 1) },
                    ],
                },
                cat(&[
                    &[1, 0x05],
                    &[0, 0, 0, 0, 0, 0, 0, 1],
                    &[0, 0, 0, 0, 0, 0, 0, 2],
                    &[0xbb; 32],
                    &[1, 0],
                    &[0, 0, 0, 0xfa],
                    &[0x11; 16],
                    &[2],
                    &[1, 0, 0, 0, 100, 4, 203, 0, 113, 5, 0x23, 0x28],
                    &[3, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
                ]),
            ),
            (
                Message::RelayRequest { request: u64::MAX, target: PeerId([0xcc; 32]) },
                cat(&[&[1, 0x06], &[0xff; 8], &[0xcc; 32]]),
            ),
            (
                Message::RelayGrant {
                    request: 5,
                    peer: PeerId([0xdd; 32]),
                    channel: 0x0102_0304,
                    lifetime_s: 600,
                    byte_limit: 1 << 30,
                    rate_limit: 125_000,
                },
                cat(&[
                    &[1, 0x07],
                    &[0, 0, 0, 0, 0, 0, 0, 5],
                    &[0xdd; 32],
                    &[1, 2, 3, 4],
                    &[0, 0, 0x02, 0x58],
                    &[0, 0, 0, 0, 0x40, 0, 0, 0],
                    &[0, 0x01, 0xe8, 0x48],
                ]),
            ),
            (
                Message::Error { request: 4, code: ErrorCode::UnknownPeer, reason: "no peer".into() },
                cat(&[&[1, 0x08], &[0, 0, 0, 0, 0, 0, 0, 4], &[0, 3], &[7], b"no peer"]),
            ),
            (
                Message::Report { request: 6, outcome: Outcome::Relayed, connect_ms: 1500 },
                cat(&[&[1, 0x09], &[0, 0, 0, 0, 0, 0, 0, 6], &[1], &[0, 0, 0x05, 0xdc]]),
            ),
            (Message::Reregister { delay_ms: 30_000 }, cat(&[&[1, 0x0a], &[0, 0, 0x75, 0x30]])),
        ]
    }

    #[test]
    fn known_encodings_of_every_type() {
        let known = known_encodings();
        let mut types: Vec<u8> = known.iter().map(|(m, _)| m.message_type()).collect();
        types.dedup();
        assert_eq!(types, (1..=10).collect::<Vec<u8>>(), "one vector per type, in type order");
        for (message, bytes) in known {
            assert_eq!(encode(&message), bytes, "emit {message:?}");
            assert_eq!(message.encoded_len(), bytes.len(), "encoded_len {message:?}");
            assert_eq!(Message::parse(&bytes), Ok(message.clone()), "parse {message:?}");
            let framed = encode_frame(&message);
            assert_eq!(framed[..2], (bytes.len() as u16).to_be_bytes());
            assert_eq!(framed[2..], bytes[..]);
        }
    }

    #[test]
    fn every_error_code_number() {
        let named = [
            (1, ErrorCode::Malformed),
            (2, ErrorCode::NotRegistered),
            (3, ErrorCode::UnknownPeer),
            (4, ErrorCode::RateLimited),
            (5, ErrorCode::RelayRefused),
            (6, ErrorCode::NotAuthenticated),
            (0, ErrorCode::Other(0)),
            (7, ErrorCode::Other(7)),
            (0xffff, ErrorCode::Other(0xffff)),
        ];
        for (number, code) in named {
            let message = Message::Error { request: 0, code, reason: String::new() };
            let bytes = encode(&message);
            assert_eq!(bytes[10..12], u16::to_be_bytes(number));
            assert_eq!(Message::parse(&bytes), Ok(message));
        }
    }

    #[test]
    fn other_codes_with_a_name_read_back_named() {
        let bytes = encode(&Message::Error { request: 1, code: ErrorCode::Other(3), reason: String::new() });
        assert_eq!(
            Message::parse(&bytes),
            Ok(Message::Error { request: 1, code: ErrorCode::UnknownPeer, reason: String::new() })
        );
    }

    // --- refusals ----------------------------------------------------------------------------

    fn known(message_type: u8) -> Vec<u8> {
        known_encodings().into_iter().map(|(_, b)| b).find(|b| b[1] == message_type).unwrap()
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        use message_type as t;
        assert_eq!(Message::parse(&[]), Err(WireError::Truncated));
        assert_eq!(Message::parse(&[1]), Err(WireError::Truncated));
        assert_eq!(Message::parse(&[2, 3, 0, 0, 0, 0, 0, 0, 0, 0]), Err(WireError::UnknownVersion(2)));
        assert_eq!(Message::parse(&[1, 0]), Err(WireError::UnknownType(0)));
        assert_eq!(Message::parse(&[1, 0x0b]), Err(WireError::UnknownType(0x0b)));
        assert_eq!(Message::parse(&vec![1; MAX_MESSAGE + 1]), Err(WireError::TooLong));

        let mut bad_family = known(t::OBSERVED_ADDRESS);
        bad_family[10] = 5;
        assert_eq!(Message::parse(&bad_family), Err(WireError::BadAddressFamily(5)));

        let mut bad_kind = known(t::ADD_ADDRESS);
        bad_kind[10] = 4;
        assert_eq!(Message::parse(&bad_kind), Err(WireError::BadField("candidate kind")));

        let mut bad_role = known(t::PUNCH_ME_NOW);
        bad_role[50] = 2;
        assert_eq!(Message::parse(&bad_role), Err(WireError::BadField("role")));

        let mut too_many = known(t::PUNCH_ME_NOW);
        too_many[72] = 9;
        assert_eq!(Message::parse(&too_many), Err(WireError::TooManyCandidates(9)));

        let mut bad_outcome = known(t::REPORT);
        bad_outcome[10] = 3;
        assert_eq!(Message::parse(&bad_outcome), Err(WireError::BadField("outcome")));

        let mut bad_utf8 = known(t::ERROR);
        bad_utf8[13] = 0xff;
        assert_eq!(Message::parse(&bad_utf8), Err(WireError::BadUtf8));

        for (_, mut bytes) in known_encodings() {
            bytes.push(0);
            assert_eq!(Message::parse(&bytes), Err(WireError::TrailingBytes));
        }
    }

    #[test]
    fn reregister_is_exactly_a_delay() {
        let bytes = known(message_type::REREGISTER);
        assert_eq!(bytes.len(), 6);
        assert_eq!(Message::parse(&bytes[..5]), Err(WireError::Truncated));
        assert_eq!(Message::parse(&[1, 0x0a]), Err(WireError::Truncated), "no delay at all");
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Message::parse(&longer), Err(WireError::TrailingBytes), "not a u64 delay");
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert_eq!(Message::parse(&wrong_version), Err(WireError::UnknownVersion(2)));
        assert_eq!(MessageView::new_checked(&bytes).unwrap().request(), None, "it answers no request");
        let longest = Message::Reregister { delay_ms: u32::MAX };
        assert_eq!(Message::parse(&encode(&longest)), Ok(longest));
    }

    #[test]
    fn error_messages_are_one_line_and_say_what() {
        assert_eq!(WireError::UnknownType(0x0a).to_string(), "unknown signalling message type 0x0a");
        assert_eq!(WireError::TooManyCandidates(9).to_string(), "9 candidates announced, at most 8 allowed");
        assert!(WireError::BadFrameLength(1).to_string().contains("close it"));
    }

    #[test]
    fn view_reads_the_request_of_a_malformed_message() {
        let mut bytes = known(message_type::PUNCH_ME_NOW);
        bytes[50] = 7; // bad role: the message is refused, its request can still be answered
        assert!(Message::parse(&bytes).is_err());
        assert_eq!(MessageView::new_unchecked(&bytes).request(), Some(2));
        let truncated = &known(message_type::CONNECT_REQUEST)[..12];
        assert_eq!(MessageView::new_unchecked(truncated).request(), Some(9));
        assert_eq!(MessageView::new_unchecked(&truncated[..9]).request(), None);
        assert_eq!(MessageView::new_unchecked(known(message_type::OBSERVED_ADDRESS)).request(), None);
        let view = MessageView::new_checked(known(message_type::REPORT)).unwrap();
        assert_eq!((view.version(), view.message_type(), view.body().len()), (1, 9, 13));
    }

    // --- what emit does with what the format cannot carry ---------------------------------------

    #[test]
    fn emit_keeps_the_first_eight_candidates() {
        let candidates: Vec<Candidate> = (0..12)
            .map(|i| Candidate {
                kind: CandidateKind::Host,
                priority: 1000 - i,
                address: SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8), 1000)),
            })
            .collect();
        let message = Message::PunchMeNow {
            round: 1,
            request: 1,
            peer: PeerId([1; 32]),
            role: PunchRole::Initiator,
            flags: 0,
            start_in_ms: 0,
            token: [0; 16],
            candidates: candidates.clone(),
        };
        let bytes = encode(&message);
        assert_eq!(bytes.len(), message.encoded_len());
        let Ok(Message::PunchMeNow { candidates: parsed, .. }) = Message::parse(&bytes) else {
            panic!("an emitted PUNCH_ME_NOW must parse")
        };
        assert_eq!(parsed, candidates[..MAX_CANDIDATES]);
    }

    #[test]
    fn emit_cuts_a_long_reason_at_a_char_boundary() {
        for (reason, kept) in [
            ("x".repeat(300), "x".repeat(255)),
            // 2-byte chars: 255 would split one, so 254 bytes stay.
            ("é".repeat(200), "é".repeat(127)),
            // 4-byte chars: 252 bytes stay.
            ("🦀".repeat(100), "🦀".repeat(63)),
            ("y".repeat(255), "y".repeat(255)),
        ] {
            let message = Message::Error { request: 1, code: ErrorCode::RateLimited, reason };
            let bytes = encode(&message);
            assert_eq!(bytes.len(), message.encoded_len());
            assert_eq!(
                Message::parse(&bytes),
                Ok(Message::Error { request: 1, code: ErrorCode::RateLimited, reason: kept })
            );
        }
    }

    #[test]
    fn ipv6_flow_label_and_scope_are_not_sent() {
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5000, 7, 3));
        let bytes = encode(&Message::ObservedAddress { sequence: 1, address: scoped });
        let plain = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5000, 0, 0));
        assert_eq!(Message::parse(&bytes), Ok(Message::ObservedAddress { sequence: 1, address: plain }));
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:80".parse().unwrap();
        let bytes = encode(&Message::ObservedAddress { sequence: 1, address: mapped });
        assert_eq!(bytes[10], 6, "an IPv4-mapped address stays family 6");
        assert_eq!(Message::parse(&bytes), Ok(Message::ObservedAddress { sequence: 1, address: mapped }));
    }

    // --- properties --------------------------------------------------------------------------

    proptest! {
        #[test]
        fn round_trip(message in message()) {
            let bytes = encode(&message);
            prop_assert_eq!(bytes.len(), message.encoded_len());
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(Message::parse(&bytes), Ok(message));
        }

        #[test]
        fn every_truncation_is_rejected(message in message()) {
            let bytes = encode(&message);
            for cut in 0..bytes.len() {
                prop_assert_eq!(Message::parse(&bytes[..cut]), Err(WireError::Truncated), "cut at {}", cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            if let Ok(message) = Message::parse(&bytes) {
                prop_assert_eq!(encode(&message), bytes);
            }
        }

        /// Random bytes rarely get past the type byte; a valid message with one byte changed
        /// reaches every field.
        #[test]
        fn mutated_messages_never_panic(message in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&message);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            if let Ok(message) = Message::parse(&bytes) {
                prop_assert_eq!(Message::parse(&encode(&message)), Ok(message));
            }
        }

        #[test]
        fn frames_split_anywhere_yield_the_same_messages(
            messages in proptest::collection::vec(message(), 0..12),
            chunks in proptest::collection::vec(1usize..64, 1..16),
        ) {
            let stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
            let mut reader = FrameReader::new();
            let mut read = Vec::new();
            let mut rest = &stream[..];
            for size in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                rest = tail;
                reader.push(chunk);
                while let Some(message) = reader.next_message() {
                    read.push(message.unwrap());
                }
                prop_assert!(reader.buffered() < MAX_FRAME);
            }
            prop_assert_eq!(read, messages);
            prop_assert_eq!(reader.buffered(), 0);
            prop_assert!(!reader.is_poisoned());
        }
    }

    // --- framing -----------------------------------------------------------------------------

    #[test]
    fn an_undecodable_frame_is_skipped_and_reading_goes_on() {
        let (first, second) = (Message::RemoveAddress { sequence: 1 }, Message::RemoveAddress { sequence: 2 });
        let mut stream = encode_frame(&first);
        stream.extend_from_slice(&[0, 2, 1, 0x42]);
        stream.extend_from_slice(&encode_frame(&second));
        let mut reader = FrameReader::new();
        reader.push(&stream);
        assert_eq!(reader.next_message(), Some(Ok(first)));
        assert_eq!(reader.next_message(), Some(Err(WireError::UnknownType(0x42))));
        assert_eq!(reader.next_message(), Some(Ok(second)));
        assert_eq!(reader.next_message(), None);
        assert!(!reader.is_poisoned());
    }

    #[test]
    fn a_bad_frame_length_poisons_the_reader() {
        for len in [0u16, 1, MAX_MESSAGE as u16 + 1, u16::MAX] {
            let mut reader = FrameReader::new();
            let message = Message::RemoveAddress { sequence: 1 };
            reader.push(&encode_frame(&message));
            reader.push(&len.to_be_bytes());
            reader.push(&encode_frame(&message));
            assert_eq!(reader.next_message(), Some(Ok(message.clone())));
            assert_eq!(reader.next_message(), Some(Err(WireError::BadFrameLength(len))), "length {len}");
            assert!(reader.is_poisoned());
            assert_eq!(reader.next_message(), None, "the error is returned once");
            reader.push(&encode_frame(&message));
            assert_eq!(reader.next_message(), None, "nothing after the poison");
            assert_eq!(reader.buffered(), 0, "a poisoned reader keeps nothing");
        }
    }

    #[test]
    fn the_longest_frame_is_accepted() {
        let mut frame = (MAX_MESSAGE as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&[1, message_type::REMOVE_ADDRESS]);
        frame.resize(MAX_FRAME, 0);
        let mut reader = FrameReader::new();
        reader.push(&frame);
        assert_eq!(reader.next_message(), Some(Err(WireError::TrailingBytes)));
        assert!(!reader.is_poisoned(), "a 1200-byte frame is well delimited");
    }

    #[test]
    fn a_peer_trickling_bytes_cannot_grow_the_buffer() {
        // Frames of the longest length, their bodies junk, sent one byte at a time.
        let mut frame = (MAX_MESSAGE as u16).to_be_bytes().to_vec();
        frame.resize(MAX_FRAME, 0x77);
        let mut reader = FrameReader::new();
        let mut errors = 0;
        for &byte in frame.iter().cycle().take(10 * MAX_FRAME + 5) {
            reader.push(&[byte]);
            while let Some(result) = reader.next_message() {
                assert_eq!(result, Err(WireError::UnknownVersion(0x77)));
                errors += 1;
            }
            assert!(reader.buffered() < MAX_FRAME);
            assert!(reader.buffer.capacity() <= 4 * MAX_FRAME);
        }
        assert_eq!(errors, 10);
        assert_eq!(reader.buffered(), 5);
    }

    #[test]
    fn memory_of_a_burst_is_given_back() {
        let message = Message::ConnectRequest { request: 1, target: PeerId([3; 32]) };
        let burst: Vec<u8> = (0..1000).flat_map(|_| encode_frame(&message)).collect();
        let mut reader = FrameReader::new();
        reader.push(&burst);
        assert_eq!(std::iter::from_fn(|| reader.next_message()).count(), 1000);
        reader.push(&[0]);
        assert_eq!(reader.buffered(), 1);
        assert!(reader.buffer.capacity() <= 4 * MAX_FRAME, "capacity {}", reader.buffer.capacity());
    }
}
