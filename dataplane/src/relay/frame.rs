//! The relay frame's wire format (`docs/nat-traversal.md`, "Datagrams on the node socket"): a
//! zero-copy checked view, [`RelayFrameView`], and the validated header, [`RelayFrame`].
//!
//! ```text
//! 0x22, channel (u32, big-endian), QUIC packet
//! ```

/// First byte of every relay frame. Its two high bits are clear, so it is never the first byte of
/// a QUIC packet: long headers set the high bit, short headers the fixed bit (RFC 9000 §17.2,
/// §17.3), and no node negotiates clearing the fixed bit (RFC 9287).
pub const RELAY_MARKER: u8 = 0x22;
/// Bytes in front of the QUIC packet: marker and channel.
pub const RELAY_HEADER_LEN: usize = 5;

mod field {
    pub const MARKER: usize = 0;
    pub const CHANNEL: std::ops::Range<usize> = 1..5;
    pub const PAYLOAD: usize = 5;
}

/// Why bytes are not a relay frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than the 5-byte header.
    #[error("relay frame shorter than its {RELAY_HEADER_LEN}-byte header")]
    Truncated,
    /// The first byte is not [`RELAY_MARKER`].
    #[error("not a relay frame (first byte is not 0x22)")]
    NotRelay,
}

/// A zero-copy view of a relay frame whose buffer is known to hold the whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFrameView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RelayFrameView<T> {
    /// A view of `buffer`, checked to be long enough for the header. The marker is not checked
    /// here (a buffer being filled has none yet); [`RelayFrame::parse`] checks it.
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        if buffer.as_ref().len() < RELAY_HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The first byte ([`RELAY_MARKER`] in a valid frame).
    pub fn marker(&self) -> u8 {
        self.buffer.as_ref().get(field::MARKER).copied().unwrap_or(0)
    }

    /// The channel number.
    pub fn channel(&self) -> u32 {
        let bytes = self.buffer.as_ref().get(field::CHANNEL).and_then(|b| <[u8; 4]>::try_from(b).ok());
        bytes.map_or(0, u32::from_be_bytes)
    }

    /// The QUIC packet carried.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or_default()
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RelayFrameView<T> {
    /// Set the first byte.
    pub fn set_marker(&mut self, marker: u8) {
        if let Some(byte) = self.buffer.as_mut().get_mut(field::MARKER) {
            *byte = marker;
        }
    }

    /// Set the channel number.
    pub fn set_channel(&mut self, channel: u32) {
        if let Some(bytes) = self.buffer.as_mut().get_mut(field::CHANNEL) {
            bytes.copy_from_slice(&channel.to_be_bytes());
        }
    }

    /// The QUIC packet carried, to fill in.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut().get_mut(field::PAYLOAD..).unwrap_or_default()
    }
}

/// A validated relay frame header (the payload is not interpreted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayFrame {
    /// The channel of the allocation the frame belongs to.
    pub channel: u32,
}

impl RelayFrame {
    /// Validate the header of `frame`.
    pub fn parse<T: AsRef<[u8]>>(frame: &RelayFrameView<T>) -> Result<Self, FrameError> {
        if frame.marker() != RELAY_MARKER {
            return Err(FrameError::NotRelay);
        }
        Ok(Self { channel: frame.channel() })
    }

    /// Length of a frame carrying `payload_len` bytes.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        RELAY_HEADER_LEN + payload_len
    }

    /// The header bytes.
    pub fn header(&self) -> [u8; RELAY_HEADER_LEN] {
        let c = self.channel.to_be_bytes();
        [RELAY_MARKER, c[0], c[1], c[2], c[3]]
    }

    /// Write the header into `frame` (the payload is the caller's).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut RelayFrameView<T>) {
        frame.set_marker(RELAY_MARKER);
        frame.set_channel(self.channel);
    }
}

/// Put a relay header in front of every datagram of a GSO buffer, in place: `buf` holds
/// `segment_size`-byte datagrams back to back (the last may be shorter; 0 means one datagram).
/// Returns the new segment size (`segment_size + 5`). Reuses `buf`'s capacity; it grows only
/// when too small.
pub fn frame_segments(buf: &mut Vec<u8>, segment_size: usize, channel: u32) -> usize {
    let len = buf.len();
    let segment = if segment_size == 0 { len.max(1) } else { segment_size };
    let segments = len.div_ceil(segment);
    let framed = segment + RELAY_HEADER_LEN;
    let header = RelayFrame { channel }.header();
    buf.resize(len + segments * RELAY_HEADER_LEN, 0);
    // Last datagram first: each one moves to a higher offset, over bytes already moved or spare.
    for i in (0..segments).rev() {
        let start = i * segment;
        let end = (start + segment).min(len);
        let to = i * framed;
        buf.copy_within(start..end, to + RELAY_HEADER_LEN);
        if let Some(slot) = buf.get_mut(to..to + RELAY_HEADER_LEN) {
            slot.copy_from_slice(&header);
        }
    }
    framed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_known_bytes() {
        let bytes = [0x22, 0x01, 0x02, 0x03, 0x04, 0x40, 0xaa];
        let frame = RelayFrameView::new_checked(&bytes[..]).unwrap();
        assert_eq!(RelayFrame::parse(&frame), Ok(RelayFrame { channel: 0x0102_0304 }));
        assert_eq!(frame.payload(), &[0x40, 0xaa]);
        // A frame may carry nothing (the relay forwards it; the peer's endpoint ignores it).
        let empty = RelayFrameView::new_checked(&bytes[..5]).unwrap();
        assert_eq!(empty.payload(), &[] as &[u8]);
    }

    #[test]
    fn rejects_short_and_foreign_bytes() {
        for len in 0..RELAY_HEADER_LEN {
            assert_eq!(RelayFrameView::new_checked(&[0x22u8; 4][..len.min(4)]), Err(FrameError::Truncated));
        }
        let probe = [0x21, 1, 1, 0, 0, 0];
        let frame = RelayFrameView::new_checked(&probe[..]).unwrap();
        assert_eq!(RelayFrame::parse(&frame), Err(FrameError::NotRelay));
    }

    #[test]
    fn emits_known_bytes() {
        let mut buf = [0u8; 8];
        let repr = RelayFrame { channel: 0xdead_beef };
        assert_eq!(repr.buffer_len(3), 8);
        let mut frame = RelayFrameView::new_checked(&mut buf[..]).unwrap();
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&[1, 2, 3]);
        assert_eq!(buf, [0x22, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        assert_eq!(repr.header(), [0x22, 0xde, 0xad, 0xbe, 0xef]);
    }

    proptest! {
        #[test]
        fn round_trip(channel in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let repr = RelayFrame { channel };
            let mut buf = vec![0u8; repr.buffer_len(payload.len())];
            let mut frame = RelayFrameView::new_checked(&mut buf[..]).unwrap();
            repr.emit(&mut frame);
            frame.payload_mut().copy_from_slice(&payload);
            let frame = RelayFrameView::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(RelayFrame::parse(&frame), Ok(repr));
            prop_assert_eq!(frame.payload(), &payload[..]);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = RelayFrameView::new_checked(&bytes[..]) {
                let _ = RelayFrame::parse(&frame);
                prop_assert_eq!(frame.payload().len(), bytes.len() - RELAY_HEADER_LEN);
            } else {
                prop_assert!(bytes.len() < RELAY_HEADER_LEN);
            }
        }

        #[test]
        fn framing_segments_keeps_each_datagram(
            segment in 1usize..1500,
            count in 1usize..8,
            last in 1usize..1500,
            channel in any::<u32>(),
        ) {
            let last = last.min(segment);
            let datagrams: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let len = if i + 1 == count { last } else { segment };
                    (0..len).map(|j| (i * 31 + j) as u8).collect()
                })
                .collect();
            let mut buf = datagrams.concat();
            let framed = frame_segments(&mut buf, segment, channel);
            prop_assert_eq!(framed, segment + RELAY_HEADER_LEN);
            let chunks: Vec<&[u8]> = buf.chunks(framed).collect();
            prop_assert_eq!(chunks.len(), count);
            for (chunk, datagram) in chunks.iter().zip(&datagrams) {
                let frame = RelayFrameView::new_checked(*chunk).unwrap();
                prop_assert_eq!(RelayFrame::parse(&frame), Ok(RelayFrame { channel }));
                prop_assert_eq!(frame.payload(), &datagram[..]);
            }
        }
    }

    #[test]
    fn framing_a_single_datagram_with_zero_segment_size() {
        let mut buf = vec![0x40, 1, 2];
        assert_eq!(frame_segments(&mut buf, 0, 7), 8);
        assert_eq!(buf, [0x22, 0, 0, 0, 7, 0x40, 1, 2]);
        let mut empty = Vec::new();
        frame_segments(&mut empty, 0, 7);
        assert!(empty.is_empty());
    }
}
