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
    /// OTHER_ADDRESS (a bootstrap's alternate address for mapping discovery; RFC 5780 §7.4).
    pub const OTHER_ADDRESS: u8 = 0x0b;
    /// FORWARD_CONNECT (bootstrap to bootstrap: a connection request for a peer registered at
    /// the receiver).
    pub const FORWARD_CONNECT: u8 = 0x0c;
    /// RELAY_AT (the relay for a peer registered at another bootstrap is asked there).
    pub const RELAY_AT: u8 = 0x0d;
}

/// Shortest message: version and type, no body.
pub const MIN_MESSAGE: usize = field::BODY;
/// Bytes of the frame length prefix.
pub const FRAME_HEADER: usize = 2;
/// Longest frame: the length prefix and a message of [`MAX_MESSAGE`] bytes.
pub const MAX_FRAME: usize = FRAME_HEADER + MAX_MESSAGE;

mod field;

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
            t::PUNCH_ME_NOW => candidate_list_end(buf, field::punch_me_now::COUNT),
            t::FORWARD_CONNECT => candidate_list_end(buf, field::forward_connect::COUNT),
            t::RELAY_GRANT => Ok(field::relay_grant::LEN),
            t::RELAY_AT => Ok(field::relay_at::ADDRESS + address_len_at(buf, field::relay_at::ADDRESS)?),
            t::ERROR => {
                let reason_len = *buf.get(field::error::REASON_LEN).ok_or(WireError::Truncated)?;
                Ok(field::error::REASON + usize::from(reason_len))
            }
            t::REPORT => Ok(field::report::LEN),
            t::REREGISTER => Ok(field::reregister::LEN),
            t::OTHER_ADDRESS => Ok(field::other_address::ADDRESS + address_len_at(buf, field::other_address::ADDRESS)?),
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
    /// RELAY_REQUEST, RELAY_GRANT, RELAY_AT, ERROR, REPORT, FORWARD_CONNECT), if its bytes are
    /// there. Readable on an unchecked view, so that a receiver can answer a malformed request with an ERROR that
    /// names it.
    pub fn request(&self) -> Option<u64> {
        use message_type as t;
        let range = match self.message_type() {
            t::CONNECT_REQUEST | t::RELAY_REQUEST | t::RELAY_GRANT | t::RELAY_AT | t::ERROR | t::REPORT => {
                field::LEADING
            }
            t::PUNCH_ME_NOW => field::punch_me_now::REQUEST,
            t::FORWARD_CONNECT => field::forward_connect::REQUEST,
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

    /// The candidates of a list whose count byte is at `count_at` (the candidates follow it).
    fn candidate_list(&self, count_at: usize) -> Result<Vec<Candidate>, WireError> {
        let buf = self.buffer.as_ref();
        let count = u8_at(buf, count_at);
        if usize::from(count) > MAX_CANDIDATES {
            return Err(WireError::TooManyCandidates(count));
        }
        let mut candidates = Vec::with_capacity(usize::from(count));
        let mut at = count_at + 1;
        for _ in 0..count {
            candidates.push(self.candidate_at(at)?);
            at += field::candidate::ADDRESS + address_len_at(buf, at + field::candidate::ADDRESS)?;
        }
        Ok(candidates)
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
                Message::PunchMeNow {
                    round: u64_at(buf, f::ROUND.start),
                    request: u64_at(buf, f::REQUEST.start),
                    peer: self.peer_at(f::PEER),
                    role: role_from_wire(u8_at(buf, f::ROLE))?,
                    flags: u8_at(buf, f::FLAGS),
                    start_in_ms: u32_at(buf, f::START_IN_MS.start),
                    token: array_at(buf, f::TOKEN.start),
                    candidates: self.candidate_list(f::COUNT)?,
                }
            }
            t::FORWARD_CONNECT => {
                use field::forward_connect as f;
                Message::ForwardConnect {
                    request: u64_at(buf, f::REQUEST.start),
                    requester: self.peer_at(f::REQUESTER),
                    target: self.peer_at(f::TARGET),
                    flags: u8_at(buf, f::FLAGS),
                    delay_ms: u32_at(buf, f::DELAY_MS.start),
                    candidates: self.candidate_list(f::COUNT)?,
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
            t::RELAY_AT => {
                use field::relay_at as f;
                Message::RelayAt {
                    request: u64_at(buf, f::REQUEST.start),
                    target: self.peer_at(f::TARGET),
                    bootstrap: self.peer_at(f::BOOTSTRAP),
                    address: address_at(buf, f::ADDRESS)?,
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
            t::OTHER_ADDRESS => Message::OtherAddress { address: address_at(buf, field::other_address::ADDRESS)? },
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(message)
    }
}

// ---------------------------------------------------------------------------------------------
// The owned form: [`Message`] parsed from and emitted to bytes.

/// The longest prefix of `reason` that fits [`MAX_REASON`] bytes and ends on a char boundary.
fn emitted_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    // Index 0 is always a boundary, so this stops.
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

/// Where a candidate list whose count byte is at `count_at` ends (the candidates follow it).
fn candidate_list_end(buf: &[u8], count_at: usize) -> Result<usize, WireError> {
    let count = *buf.get(count_at).ok_or(WireError::Truncated)?;
    if usize::from(count) > MAX_CANDIDATES {
        return Err(WireError::TooManyCandidates(count));
    }
    let mut at = count_at + 1;
    for _ in 0..count {
        at += field::candidate::ADDRESS;
        at += address_len_at(buf, at)?;
    }
    Ok(at)
}

/// The candidates a PUNCH_ME_NOW or FORWARD_CONNECT carries: the first [`MAX_CANDIDATES`].
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

/// The count byte and the first [`MAX_CANDIDATES`] candidates.
fn emit_candidate_list(out: &mut Vec<u8>, candidates: &[Candidate]) {
    let candidates = emitted_candidates(candidates);
    // At most MAX_CANDIDATES (8) after the cut, so the count fits a byte.
    out.push(candidates.len() as u8);
    for candidate in candidates {
        emit_candidate(out, candidate);
    }
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
            Message::OtherAddress { .. } => t::OTHER_ADDRESS,
            Message::ForwardConnect { .. } => t::FORWARD_CONNECT,
            Message::RelayAt { .. } => t::RELAY_AT,
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
            Message::ForwardConnect { candidates, .. } => {
                field::forward_connect::CANDIDATES
                    + emitted_candidates(candidates).iter().map(candidate_len).sum::<usize>()
            }
            Message::RelayGrant { .. } => field::relay_grant::LEN,
            Message::RelayAt { address, .. } => field::relay_at::ADDRESS + address_len(address),
            Message::Error { reason, .. } => field::error::REASON + emitted_reason(reason).len(),
            Message::Report { .. } => field::report::LEN,
            Message::Reregister { .. } => field::reregister::LEN,
            Message::OtherAddress { address } => field::other_address::ADDRESS + address_len(address),
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
                out.extend_from_slice(&round.to_be_bytes());
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&peer.0);
                out.push(role_to_wire(*role));
                out.push(*flags);
                out.extend_from_slice(&start_in_ms.to_be_bytes());
                out.extend_from_slice(token);
                emit_candidate_list(out, candidates);
            }
            Message::ForwardConnect { request, requester, target, flags, delay_ms, candidates } => {
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&requester.0);
                out.extend_from_slice(&target.0);
                out.push(*flags);
                out.extend_from_slice(&delay_ms.to_be_bytes());
                emit_candidate_list(out, candidates);
            }
            Message::RelayGrant { request, peer, channel, lifetime_s, byte_limit, rate_limit } => {
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&peer.0);
                out.extend_from_slice(&channel.to_be_bytes());
                out.extend_from_slice(&lifetime_s.to_be_bytes());
                out.extend_from_slice(&byte_limit.to_be_bytes());
                out.extend_from_slice(&rate_limit.to_be_bytes());
            }
            Message::RelayAt { request, target, bootstrap, address } => {
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&target.0);
                out.extend_from_slice(&bootstrap.0);
                emit_address(out, address);
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
            Message::OtherAddress { address } => emit_address(out, address),
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
pub(crate) mod tests;
