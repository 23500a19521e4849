//! The Internet checksum (RFC 1071) over headers and UDP's pseudo-header (RFC 768, RFC 8200
//! §8.1), and its incremental update when a field is rewritten (RFC 1624).

use std::net::IpAddr;

/// IP protocol number of UDP, as the pseudo-header carries it.
const PROTOCOL_UDP: u64 = 17;

/// The ones'-complement sum of `bytes` as 16-bit big-endian words (an odd last byte is padded
/// with zero), not yet folded. Adding 32-bit words gives the same folded result, since
/// 2^16 ≡ 1 (mod 2^16 − 1) (RFC 1071 §2 (B)); a `u64` cannot overflow on any slice.
pub fn sum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(4);
    let mut acc: u64 = 0;
    for word in &mut words {
        acc += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for pair in &mut pairs {
        acc += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let Some(&last) = pairs.remainder().first() {
        acc += u64::from(last) << 8;
    }
    acc
}

/// Fold a sum to 16 bits with end-around carry: 0 only when every word added was 0, otherwise
/// 1..=0xFFFF (ones'-complement zero is 0xFFFF).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    // The loop leaves at most 16 bits.
    u16::try_from(acc).unwrap_or(u16::MAX)
}

/// The checksum to write into a header whose checksum field holds zero.
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum(bytes))
}

/// Whether `bytes`, checksum field included, sum to ones'-complement zero.
pub fn verify(bytes: &[u8]) -> bool {
    fold(sum(bytes)) == 0xFFFF
}

/// The sum of UDP's pseudo-header: addresses, protocol and UDP length (IPv4: RFC 768; IPv6:
/// RFC 8200 §8.1, where the length is 32 bits, which sums the same).
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, udp_len: usize) -> u64 {
    let address_sum = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => sum(&ip.octets()),
        IpAddr::V6(ip) => sum(&ip.octets()),
    };
    address_sum(src) + address_sum(dst) + PROTOCOL_UDP + udp_len as u64
}

/// The UDP checksum of `segment` (header and payload, checksum field zero) between `src` and
/// `dst`. A computed zero is sent as 0xFFFF: zero on the wire means "no checksum" (RFC 768).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    match !fold(pseudo_header_sum(src, dst, segment.len()) + sum(segment)) {
        0 => 0xFFFF,
        c => c,
    }
}

/// Whether a received UDP checksum is right. Zero means none was sent: allowed over IPv4
/// (RFC 768), invalid over IPv6 (RFC 8200 §8.1).
pub fn verify_udp(src: IpAddr, dst: IpAddr, segment: &[u8], checksum_field: u16) -> bool {
    if checksum_field == 0 {
        return src.is_ipv4();
    }
    fold(pseudo_header_sum(src, dst, segment.len()) + sum(segment)) == 0xFFFF
}

/// A checksum after the 16-bit-aligned field `old` became `new` (equal lengths; an odd length
/// is padded like a last byte): RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), word by word. It gives
/// the value a full recomputation gives, its choice between 0 and 0xFFFF included, except over
/// data that is all zero words (0 instead of 0xFFFF), which no IP header or pseudo-header is.
pub fn update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    // ~m summed word by word is 0xFFFF·words − m (mod 0xFFFF); folding m first keeps it
    // non-negative (an empty `old` folds to 0).
    let words = old.len().div_ceil(2) as u64;
    let not_old = words * 0xFFFF - u64::from(fold(sum(old)));
    !fold(u64::from(!checksum) + not_old + sum(new))
}

/// [`update`] for a UDP checksum: zero (IPv4 "no checksum") stays zero, and a result of zero
/// is written 0xFFFF, as the sender's full computation would.
pub fn update_udp(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    if checksum == 0 {
        return 0;
    }
    match update(checksum, old, new) {
        0 => 0xFFFF,
        c => c,
    }
}
