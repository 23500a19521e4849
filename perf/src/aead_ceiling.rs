//! The packet-crypto ceiling: how many 1200-byte QUIC packets one core can seal and open per
//! second with the cipher suite both stacks negotiate (TLS13_AES_256_GCM_SHA384 through rustls'
//! QUIC packet keys on aws-lc-rs, the same code path quinn-proto uses). No I/O, no QUIC state:
//! a single connection's throughput cannot pass this on one core per side.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rustls::crypto::cipher::{AeadKey, Iv};
use serde::{Deserialize, Serialize};

/// Packet size on the wire, tag included.
pub const PACKET: usize = 1200;
/// A short header: flags, an 8-byte connection ID, a 4-byte packet number.
const HEADER: usize = 13;
const TAG: usize = 16;

/// What `aead-ceiling` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AeadResult {
    /// The cipher suite.
    pub cipher: String,
    /// Packet size (header, payload and tag).
    pub packet: usize,
    /// Packets sealed and then opened again.
    pub packets: u64,
    pub seconds: f64,
    /// Packet bytes per second through seal + open on one core, in Gbit/s.
    pub gbps: f64,
    /// Packet bytes per second through seal alone (the sender's share), in Gbit/s.
    pub seal_gbps: f64,
}

/// Seal and open packets for about `duration` on the calling thread.
pub fn run(duration: Duration) -> Result<AeadResult> {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384;
    let tls13 = suite.tls13().ok_or_else(|| anyhow!("{:?} is not a TLS 1.3 suite", suite.suite()))?;
    let quic = tls13.quic.ok_or_else(|| anyhow!("{:?} has no QUIC support", suite.suite()))?;
    let key = quic.packet_key(AeadKey::from([0x42; 32]), Iv::new([0x24; 12]));

    let mut packet = vec![0u8; PACKET];
    packet[0] = 0x40;
    let mut packets = 0u64;
    let mut seal_time = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < duration {
        // In batches, so that reading the clock costs nothing next to the crypto.
        for _ in 0..256 {
            let (header, body) = packet.split_at_mut(HEADER);
            let (payload, tag_space) = body.split_at_mut(PACKET - HEADER - TAG);
            let sealed_at = Instant::now();
            let tag = key.encrypt_in_place(packets, header, payload).context("sealing a packet")?;
            seal_time += sealed_at.elapsed();
            tag_space.copy_from_slice(tag.as_ref());
            key.decrypt_in_place(packets, header, body).context("opening the packet just sealed")?;
            packets += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let bits = (packets * PACKET as u64 * 8) as f64;
    Ok(AeadResult {
        cipher: format!("{:?}", suite.suite()),
        packet: PACKET,
        packets,
        seconds,
        gbps: bits / seconds / 1e9,
        seal_gbps: if seal_time.is_zero() { 0.0 } else { bits / seal_time.as_secs_f64() / 1e9 },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn seals_and_opens() {
        let r = super::run(std::time::Duration::from_millis(20)).unwrap();
        assert!(r.packets >= 256, "{r:?}");
        assert_eq!(r.cipher, "TLS13_AES_256_GCM_SHA384");
        assert!(r.gbps > 0.0 && r.seal_gbps > r.gbps, "{r:?}");
    }
}
