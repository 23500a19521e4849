//! Fuzz target: Ethernet frames from arbitrary bytes through `frame::classify`, the receive path
//! of a frame-level (AF_XDP) backend, and the in-place rewrite a forwarding relay does.
//!
//! Oracle:
//! - `classify` never panics; anything under an Ethernet header is `Truncated`;
//! - a datagram it takes is to one of ours, its payload lies inside the frame, and it is the same
//!   datagram with the Ethernet padding cut off;
//! - building that datagram again with `UdpFrame` (payload copied) classifies to the same
//!   datagram;
//! - rewriting its endpoints in place (`UdpFrame::rewrite`, checksums updated incrementally)
//!   gives a frame that classifies as the same payload between the new endpoints: the updated
//!   checksums are right.
//! - a datagram taken never comes from a multicast, broadcast, unspecified or loopback address
//!   (checked through the rewrite, which sends back to it).

#![no_main]

use std::net::SocketAddr;

use ant_quic_dataplane::frame::{classify, Classified, NotOurs, UdpFrame, ETHERNET_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MTU: usize = 1500;
const PORT: u16 = 4433;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let ours: [SocketAddr; 2] = [([0, 0, 0, 0], PORT).into(), ([0u16; 8], PORT).into()];
    let datagram = match classify(data, &ours, MTU) {
        Classified::Datagram(datagram) => datagram,
        Classified::ToKernel(reason) => {
            assert!(data.len() >= ETHERNET_HEADER_LEN || reason == NotOurs::Truncated);
            return;
        }
    };
    assert_eq!(datagram.dst.port(), PORT);
    assert!(datagram.payload.start <= datagram.payload.end && datagram.payload.end <= data.len());
    let payload = &data[datagram.payload.clone()];
    assert_eq!(classify(&data[..datagram.payload.end], &ours, MTU), Classified::Datagram(datagram.clone()));

    let again = UdpFrame {
        src_mac: datagram.src_mac,
        dst_mac: datagram.dst_mac,
        src: datagram.src,
        dst: datagram.dst,
        dscp: 0,
        ecn: datagram.ecn,
        identification: 1,
    };
    let mut buf = vec![0u8; MTU + 14];
    let len = again.build(&mut buf, payload, MTU).expect("a datagram that arrived fits again");
    match classify(&buf[..len], &ours, MTU) {
        Classified::Datagram(rebuilt) => {
            assert_eq!((rebuilt.src, rebuilt.dst, rebuilt.ecn), (datagram.src, datagram.dst, datagram.ecn));
            assert_eq!(&buf[rebuilt.payload], payload);
        }
        Classified::ToKernel(reason) => panic!("the rebuilt datagram is refused: {reason}"),
    }

    // Forwarded: swap the endpoints (and MACs), on another port of ours.
    let forwarded = UdpFrame {
        src_mac: datagram.dst_mac,
        dst_mac: datagram.src_mac,
        src: SocketAddr::new(datagram.dst.ip(), PORT ^ 1),
        dst: SocketAddr::new(datagram.src.ip(), datagram.src.port().max(1)),
        ..again
    };
    let mut frame = data.to_vec();
    let len = forwarded.rewrite(&mut frame).expect("a datagram that arrived can be rewritten");
    assert_eq!(len, datagram.payload.end);
    let theirs = [forwarded.dst];
    match classify(&frame, &theirs, MTU) {
        Classified::Datagram(out) => {
            assert_eq!((out.src, out.dst, out.ecn), (forwarded.src, forwarded.dst, datagram.ecn));
            assert_eq!((out.src_mac, out.dst_mac), (forwarded.src_mac, forwarded.dst_mac));
            assert_eq!(&frame[out.payload], payload);
        }
        // A datagram taken is from a possible source, so the rewritten one is to an ordinary
        // address; and from one of ours, which is one too.
        Classified::ToKernel(reason) => panic!("the rewritten frame is refused: {reason}"),
    }
}
