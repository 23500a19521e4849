//! Fuzz target: one probe datagram decoded from arbitrary bytes.
//!
//! Oracle: decoding never panics, and a probe that decodes encodes back to the same bytes and
//! decodes again to the same probe.

#![no_main]

use ant_quic_control::nat::Probe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(probe) = Probe::parse(data) {
        let mut out = Vec::new();
        probe.emit(&mut out);
        assert_eq!(out.len(), probe.encoded_len());
        assert_eq!(out, data, "re-encoding differs from the input");
        assert_eq!(Probe::parse(&out), Ok(probe));
    }
});
