//! UDP headers (RFC 768): a checked view over an IP packet's payload.

use std::net::IpAddr;

use super::{checksum, read_u16, NotOurs};

/// Bytes of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

pub(super) mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A zero-copy view of a UDP datagram whose buffer holds the header and the length it states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpView<T> {
    /// A view of `buffer` (the IP payload): the header must fit, and its length field must be
    /// at least the header and at most the buffer. Bytes after that length are not the
    /// datagram's (see [`Self::len`]).
    pub fn new_checked(buffer: T) -> Result<Self, NotOurs> {
        let buf = buffer.as_ref();
        if buf.len() < UDP_HEADER_LEN {
            return Err(NotOurs::Truncated);
        }
        let length = usize::from(read_u16(buf, field::LENGTH));
        if length < UDP_HEADER_LEN || length > buf.len() {
            return Err(NotOurs::BadUdpLength);
        }
        Ok(Self { buffer })
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header and payload.
    pub fn len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), field::LENGTH))
    }

    /// Whether the datagram carries no payload.
    pub fn is_empty(&self) -> bool {
        self.len() <= UDP_HEADER_LEN
    }

    /// The checksum field (0: none sent).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The header and payload, as long as the length field says.
    pub fn segment(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        buf.get(..self.len()).unwrap_or(buf)
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        self.segment().get(UDP_HEADER_LEN..).unwrap_or_default()
    }

    /// Whether the checksum is right for a datagram from `src` to `dst`: zero (none sent) is
    /// allowed over IPv4 and invalid over IPv6 (RFC 8200 §8.1).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum::verify_udp(src, dst, self.segment(), self.checksum())
    }
}
