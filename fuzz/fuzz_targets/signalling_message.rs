//! Fuzz target: one signalling message decoded from arbitrary bytes.
//!
//! Oracle: decoding never panics, and a message that decodes encodes back to the same bytes
//! (the encoding is canonical) and decodes again to the same message.

#![no_main]

use ant_quic_control::nat::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data) {
        let mut out = Vec::new();
        message.emit(&mut out);
        assert_eq!(out.len(), message.encoded_len());
        assert_eq!(out, data, "re-encoding differs from the input");
        assert_eq!(Message::parse(&out), Ok(message));
    }
});
