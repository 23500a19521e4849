//! Fuzz target: relay frames (`0x22, channel, QUIC packet`) from arbitrary bytes, and the in-place
//! framing of GSO buffers.
//!
//! Oracle:
//! - `datagram::classify` never panics and calls a datagram a relay frame exactly when its first
//!   byte is the relay marker;
//! - the `RelayFrameView` refuses exactly the inputs shorter than the header, and
//!   `RelayFrame::parse` refuses exactly those without the marker;
//! - a frame that parses, emitted again (header from its repr, the same payload), is the input
//!   byte for byte, and parses again to the same repr;
//! - `frame_segments` on a buffer cut into segments (size and channel taken from the input) puts
//!   a header in front of every segment and moves the segments intact: each framed segment parses
//!   to the channel and carries the original segment.

#![no_main]

use ant_quic_dataplane::datagram::{classify, DatagramKind};
use ant_quic_dataplane::relay::{frame_segments, FrameError, RelayFrame, RelayFrameView};
use ant_quic_dataplane::{RELAY_HEADER_LEN, RELAY_MARKER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_frame(data);
    check_framing(data);
});

fn check_frame(data: &[u8]) {
    let kind = classify(data);
    assert_eq!(kind == DatagramKind::Relay, data.first() == Some(&RELAY_MARKER));
    let frame = match RelayFrameView::new_checked(data) {
        Ok(frame) => frame,
        Err(e) => {
            assert_eq!(e, FrameError::Truncated);
            assert!(data.len() < RELAY_HEADER_LEN);
            return;
        }
    };
    assert!(data.len() >= RELAY_HEADER_LEN);
    assert_eq!(frame.payload(), &data[RELAY_HEADER_LEN..]);
    let repr = match RelayFrame::parse(&frame) {
        Ok(repr) => repr,
        Err(e) => {
            assert_eq!(e, FrameError::NotRelay);
            assert_ne!(data[0], RELAY_MARKER);
            return;
        }
    };
    assert_eq!(kind, DatagramKind::Relay);
    assert_eq!(repr.channel, frame.channel());
    assert_eq!(repr.header()[..], data[..RELAY_HEADER_LEN]);

    let mut out = vec![0u8; repr.buffer_len(frame.payload().len())];
    let mut view = RelayFrameView::new_checked(&mut out[..]).expect("buffer_len covers the header");
    repr.emit(&mut view);
    view.payload_mut().copy_from_slice(frame.payload());
    assert_eq!(out, data, "re-emitting differs from the input");
    let again = RelayFrameView::new_checked(&out[..]).expect("re-emitted frame is long enough");
    assert_eq!(RelayFrame::parse(&again), Ok(repr));
}

/// Input: segment size (u16), channel (u32), then the GSO buffer.
fn check_framing(data: &[u8]) {
    let Some((head, body)) = data.split_at_checked(6) else { return };
    let segment_size = usize::from(u16::from_be_bytes([head[0], head[1]]));
    let channel = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
    let mut buf = body.to_vec();
    let framed = frame_segments(&mut buf, segment_size, channel);

    // A segment size of 0 means one datagram (the whole buffer).
    let segment = if segment_size == 0 { body.len().max(1) } else { segment_size };
    assert_eq!(framed, segment + RELAY_HEADER_LEN);
    let segments = body.chunks(segment);
    assert_eq!(buf.len(), body.len() + segments.len() * RELAY_HEADER_LEN);
    for (original, framed) in segments.zip(buf.chunks(framed)) {
        let frame = RelayFrameView::new_checked(framed).expect("every framed segment holds a header");
        assert_eq!(RelayFrame::parse(&frame), Ok(RelayFrame { channel }));
        assert_eq!(frame.payload(), original, "a segment moved or changed");
        assert_eq!(classify(framed), DatagramKind::Relay);
    }
}
