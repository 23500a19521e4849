//! Ethernet II headers (IEEE 802.3): a checked view over a received frame.

use super::{read_u16, NotOurs};

/// A MAC address.
pub type MacAddress = [u8; 6];

/// Bytes of an untagged Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// Tag protocol identifiers of VLAN tags: 802.1Q, 802.1ad (QinQ), and the older 0x9100.
pub const VLAN_TAGS: [u16; 3] = [0x8100, 0x88A8, 0x9100];

pub(super) mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

/// A zero-copy view of an Ethernet frame whose buffer holds the whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetView<T> {
    /// A view of `buffer`, checked to hold the 14-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, NotOurs> {
        if buffer.as_ref().len() < ETHERNET_HEADER_LEN {
            return Err(NotOurs::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The destination MAC address.
    pub fn dst(&self) -> MacAddress {
        mac_at(self.buffer.as_ref(), field::DST)
    }

    /// The source MAC address.
    pub fn src(&self) -> MacAddress {
        mac_at(self.buffer.as_ref(), field::SRC)
    }

    /// The EtherType (or, in a tagged frame, the tag protocol identifier).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Whether a VLAN tag follows the addresses.
    pub fn is_vlan_tagged(&self) -> bool {
        VLAN_TAGS.contains(&self.ethertype())
    }

    /// What follows the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or_default()
    }
}

fn mac_at(buf: &[u8], range: std::ops::Range<usize>) -> MacAddress {
    buf.get(range).and_then(|b| MacAddress::try_from(b).ok()).unwrap_or_default()
}
