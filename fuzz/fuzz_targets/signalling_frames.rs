//! Fuzz target: a signalling stream read through a `FrameReader`.
//!
//! The first byte picks the chunk size, so that frames arrive split at every kind of point.
//! Oracle: nothing panics, the buffer stays under one maximum frame once drained, a poisoned
//! reader yields nothing more, and every message read re-encodes to a frame that decodes to it.

#![no_main]

use ant_quic_control::nat::wire::{encode_frame, FrameReader, MAX_FRAME};
use ant_quic_control::nat::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::new();
    for bytes in stream.chunks(chunk) {
        reader.push(bytes);
        while let Some(result) = reader.next_message() {
            if let Ok(message) = result {
                let frame = encode_frame(&message);
                assert_eq!(Message::parse(&frame[2..]), Ok(message));
            }
        }
        assert!(reader.buffered() < MAX_FRAME, "{} bytes buffered", reader.buffered());
        if reader.is_poisoned() {
            assert_eq!(reader.buffered(), 0);
        }
    }
    if reader.is_poisoned() {
        reader.push(stream);
        assert!(reader.next_message().is_none());
    }
});
