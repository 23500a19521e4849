use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

const MTU: usize = 1500;

/// RFC 1071's checksum, written out word by word: the independent computation the module's
/// checksums are compared with.
fn reference_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
        sum += word;
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn reference_udp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => unreachable!(),
    }
    let mut zeroed = segment.to_vec();
    zeroed[6..8].copy_from_slice(&[0, 0]);
    match reference_checksum(&[&pseudo, &zeroed]) {
        0 => 0xFFFF,
        c => c,
    }
}

fn v4_frame() -> UdpFrame {
    UdpFrame {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: "192.0.2.1:4433".parse().unwrap(),
        dst: "198.51.100.7:9000".parse().unwrap(),
        dscp: 0,
        ecn: Some(EcnCodepoint::Ect0),
        identification: 7,
    }
}

fn v6_frame() -> UdpFrame {
    UdpFrame { src: "[2001:db8::1]:4433".parse().unwrap(), dst: "[2001:db8::7]:9000".parse().unwrap(), ..v4_frame() }
}

fn built(repr: &UdpFrame, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let len = repr.build(&mut buf, payload, MTU).unwrap();
    buf.truncate(len);
    buf
}

fn reason(frame: &[u8], ours: &[SocketAddr]) -> NotOurs {
    match classify(frame, ours, MTU) {
        Classified::ToKernel(reason) => reason,
        Classified::Datagram(d) => panic!("taken as ours: {d:?}"),
    }
}

/// Recompute the IPv4 header checksum after a test changed the header.
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0F) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn ipv4_header_checksum_matches_a_published_example() {
    // The header of RFC 1071's usual worked example (Wikipedia, "IPv4 header checksum").
    let mut header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];
    assert_eq!(checksum::checksum(&header), 0xb861);
    header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
    assert!(checksum::verify(&header));
}

#[test]
fn built_frames_say_what_the_repr_says() {
    let payload = b"hello over xdp";
    let frame = built(&v4_frame(), payload);
    assert_eq!(frame.len(), IPV4_FRAME_OVERHEAD + payload.len());
    let ethernet = EthernetView::new_checked(&frame[..]).unwrap();
    assert_eq!(
        (ethernet.dst(), ethernet.src(), ethernet.ethertype()),
        ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0x0800)
    );
    let ip = Ipv4View::new_checked(ethernet.payload()).unwrap();
    assert_eq!((ip.version(), ip.header_len(), ip.ttl(), ip.protocol()), (4, 20, 64, 17));
    assert!(ip.dont_fragment() && !ip.is_fragment());
    assert_eq!((ip.identification(), ip.dscp(), ip.ecn()), (7, 0, Some(EcnCodepoint::Ect0)));
    assert_eq!(ip.total_len(), 20 + 8 + payload.len());
    assert!(ip.verify_checksum());

    let repr = UdpFrame { dscp: 46, ecn: Some(EcnCodepoint::Ce), ..v6_frame() };
    let frame = built(&repr, payload);
    let ip = Ipv6View::new_checked(&frame[14..]).unwrap();
    assert_eq!(
        (ip.version(), ip.dscp(), ip.ecn(), ip.hop_limit(), ip.next_header()),
        (6, 46, Some(EcnCodepoint::Ce), 64, 17)
    );
    assert_eq!(ip.payload_len(), 8 + payload.len());
    let udp = UdpView::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port(), udp.payload()), (4433, 9000, &payload[..]));
}

#[test]
fn build_refuses_what_does_not_fit() {
    let repr = v4_frame();
    let mut buf = [0u8; 100];
    assert_eq!(repr.build(&mut buf, &[0; 59], MTU), Err(BuildError::BufferTooSmall { needed: 101 }));
    assert_eq!(repr.build(&mut buf, &[0; 58], MTU), Ok(100));
    let mut big = vec![0u8; 70_000];
    assert_eq!(repr.build(&mut big, &[0; 1473], MTU), Err(BuildError::PayloadTooLarge { max: 1472 }));
    assert_eq!(repr.build(&mut big, &[0; 1472], MTU), Ok(1514));
    assert_eq!(repr.build(&mut big, &[0; 65_508], 100_000), Err(BuildError::PayloadTooLarge { max: 65_507 }));
    assert_eq!(v6_frame().build(&mut big, &[0; 1453], MTU), Err(BuildError::PayloadTooLarge { max: 1452 }));
    let mixed = UdpFrame { dst: "[2001:db8::7]:9000".parse().unwrap(), ..v4_frame() };
    assert_eq!(mixed.build(&mut big, b"x", MTU), Err(BuildError::MixedFamilies));
    // IPv4-mapped IPv6 is IPv4.
    let mapped = UdpFrame { dst: "[::ffff:198.51.100.7]:9000".parse().unwrap(), ..v4_frame() };
    let frame = built(&mapped, b"x");
    assert_eq!(frame, built(&v4_frame(), b"x"));
    assert_eq!(repr.build(&mut big, &[], 27), Err(BuildError::MtuTooSmall { mtu: 27 }));
    assert_eq!(repr.build(&mut big, &[], 28), Ok(42));
    // The zero-copy path: a payload already in place after the headers.
    let mut in_place = vec![0u8; 100];
    in_place[42..47].copy_from_slice(b"hello");
    assert_eq!(repr.emit(&mut in_place, 5, MTU), Ok(47));
    assert_eq!(&in_place[..47], &built(&repr, b"hello")[..]);
    // A buffer shorter than the headers: an error, not a panic.
    assert_eq!(repr.emit(&mut [0u8; 10], 0, MTU), Err(BuildError::BufferTooSmall { needed: 42 }));
}

/// Every reason to leave a frame to the kernel, each from a frame that is ours but for one thing.
#[test]
fn every_reason_to_leave_a_frame_to_the_kernel() {
    let v4 = v4_frame();
    let v6 = v6_frame();
    let ours = [v4.dst, v6.dst];
    let good4 = built(&v4, b"payload");
    let good6 = built(&v6, b"payload");
    assert!(matches!(classify(&good4, &ours, MTU), Classified::Datagram(_)));
    assert!(matches!(classify(&good6, &ours, MTU), Classified::Datagram(_)));

    assert_eq!(reason(&good4[..13], &ours), NotOurs::Truncated);
    assert_eq!(reason(&good4[..good4.len() - 1], &ours), NotOurs::Truncated);
    for tag in [0x8100u16, 0x88A8] {
        let mut f = good4.clone();
        f[12..14].copy_from_slice(&tag.to_be_bytes());
        assert_eq!(reason(&f, &ours), NotOurs::Vlan);
    }
    let mut arp = good4.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(reason(&arp, &ours), NotOurs::NotIp);

    let mut f = good4.clone();
    f[14] = 0x65; // version 6 behind the IPv4 EtherType
    assert_eq!(reason(&f, &ours), NotOurs::BadIpHeader);
    let mut f = good4.clone();
    f[14] = 0x44; // IHL 16 bytes
    assert_eq!(reason(&f, &ours), NotOurs::BadIpHeader);
    let mut f = good4.clone();
    f[16..18].copy_from_slice(&19u16.to_be_bytes()); // total length inside the header
    assert_eq!(reason(&f, &ours), NotOurs::BadIpHeader);
    let mut f = good6.clone();
    f[14] = 0x40;
    assert_eq!(reason(&f, &ours), NotOurs::BadIpHeader);

    // Options: a 24-byte header (one NOP and an end-of-options list), everything else right.
    let mut f = good4[..34].to_vec();
    f[14] = 0x46;
    f.extend_from_slice(&[1, 0, 0, 0]);
    f.extend_from_slice(&good4[34..]);
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    assert_eq!(Ipv4View::new_checked(&f[14..]).unwrap().payload(), &good4[34..]);
    assert_eq!(reason(&f, &ours), NotOurs::IpOptions);

    for flags_offset in [0x2000u16, 0x0001, 0x6000, 0x4001] {
        let mut f = good4.clone();
        f[20..22].copy_from_slice(&flags_offset.to_be_bytes());
        fix_ipv4_checksum(&mut f);
        assert_eq!(reason(&f, &ours), NotOurs::Fragmented, "flags/offset {flags_offset:#x}");
    }
    let mut f = good6.clone();
    f[20] = 44;
    assert_eq!(reason(&f, &ours), NotOurs::Fragmented);
    for next in [0u8, 43, 60] {
        let mut f = good6.clone();
        f[20] = next;
        assert_eq!(reason(&f, &ours), NotOurs::Ipv6Extension, "next header {next}");
    }

    let jumbo4 = built_with_mtu(&v4, 2000);
    assert_eq!(reason(&jumbo4, &ours), NotOurs::OverMtu);
    let jumbo6 = built_with_mtu(&v6, 2000);
    assert_eq!(reason(&jumbo6, &ours), NotOurs::OverMtu);

    let mut f = good4.clone();
    f[22] ^= 1; // TTL changed, header checksum not
    assert_eq!(reason(&f, &ours), NotOurs::BadIpChecksum);

    let mut f = good4.clone();
    f[23] = 6; // TCP
    fix_ipv4_checksum(&mut f);
    assert_eq!(reason(&f, &ours), NotOurs::NotUdp);
    let mut f = good6.clone();
    f[20] = 58; // ICMPv6
    assert_eq!(reason(&f, &ours), NotOurs::NotUdp);

    let mut f = good4.clone();
    f[38..40].copy_from_slice(&7u16.to_be_bytes()); // UDP length under its header
    assert_eq!(reason(&f, &ours), NotOurs::BadUdpLength);
    let mut f = good6.clone();
    let short = u16::from_be_bytes([f[58], f[59]]) - 1; // shorter than the IP payload
    f[58..60].copy_from_slice(&short.to_be_bytes());
    assert_eq!(reason(&f, &ours), NotOurs::BadUdpLength);

    let mut f = good4.clone();
    *f.last_mut().unwrap() ^= 0x40;
    assert_eq!(reason(&f, &ours), NotOurs::BadUdpChecksum);
    let mut f = good6.clone();
    *f.last_mut().unwrap() ^= 0x40;
    assert_eq!(reason(&f, &ours), NotOurs::BadUdpChecksum);
    // No checksum: allowed over IPv4, not over IPv6.
    let mut f = good4.clone();
    f[40..42].copy_from_slice(&[0, 0]);
    assert!(matches!(classify(&f, &ours, MTU), Classified::Datagram(_)));
    let mut f = good6.clone();
    f[60..62].copy_from_slice(&[0, 0]);
    assert_eq!(reason(&f, &ours), NotOurs::BadUdpChecksum);

    let other_port = ["198.51.100.7:9001".parse().unwrap(), v6.dst];
    assert_eq!(reason(&good4, &other_port), NotOurs::NotOurAddress);
    assert_eq!(reason(&good6, &[v4.dst]), NotOurs::NotOurAddress);
    let multicast = UdpFrame { dst: "224.0.0.251:9000".parse().unwrap(), ..v4 };
    assert_eq!(reason(&built(&multicast, b"x"), &["0.0.0.0:9000".parse().unwrap()]), NotOurs::NotOurAddress);
    for bad_source in ["224.0.0.1:1", "255.255.255.255:1", "0.0.0.0:1", "0.1.2.3:1", "127.0.0.1:1"] {
        let f = built(&UdpFrame { src: bad_source.parse().unwrap(), ..v4 }, b"x");
        assert_eq!(reason(&f, &ours), NotOurs::BadSource, "{bad_source}");
    }
    for bad_source in ["[ff02::1]:1", "[::]:1", "[::1]:1", "[::ffff:192.0.2.1]:1"] {
        let src: SocketAddr = bad_source.parse().unwrap();
        let repr = UdpFrame { src, ..v6 };
        // The builder takes IPv4-mapped as IPv4: write the mapped source into an IPv6 frame.
        let mut f = built(&UdpFrame { src: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1), ..v6 }, b"x");
        if let IpAddr::V6(ip) = src.ip() {
            f[22..38].copy_from_slice(&ip.octets());
        }
        let udp = &mut f[54..];
        udp[6..8].copy_from_slice(&[0, 0]);
        let sum = checksum::udp_checksum(src.ip(), repr.dst.ip(), udp);
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(reason(&f, &ours), NotOurs::BadSource, "{bad_source}");
    }
    let loopback = UdpFrame { dst: "127.0.0.1:9000".parse().unwrap(), ..v4 };
    assert_eq!(reason(&built(&loopback, b"x"), &["0.0.0.0:9000".parse().unwrap()]), NotOurs::NotOurAddress);
    let broadcast = UdpFrame { dst: "255.255.255.255:9000".parse().unwrap(), ..v4 };
    assert_eq!(reason(&built(&broadcast, b"x"), &["0.0.0.0:9000".parse().unwrap()]), NotOurs::NotOurAddress);
}

fn built_with_mtu(repr: &UdpFrame, mtu: usize) -> Vec<u8> {
    let mut buf = vec![0u8; mtu + 14];
    let len = repr.build(&mut buf, &vec![0xAB; mtu - repr.overhead() + 14], mtu).unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn wildcards_and_padding() {
    let v4 = built(&v4_frame(), b"x");
    let v6 = built(&v6_frame(), b"x");
    let any4: SocketAddr = "0.0.0.0:9000".parse().unwrap();
    let any6: SocketAddr = "[::]:9000".parse().unwrap();
    assert!(matches!(classify(&v4, &[any4], MTU), Classified::Datagram(_)));
    assert_eq!(reason(&v6, &[any4]), NotOurs::NotOurAddress);
    assert!(matches!(classify(&v4, &[any6], MTU), Classified::Datagram(_)), "[::] is dual-stack");
    assert!(matches!(classify(&v6, &[any6], MTU), Classified::Datagram(_)));
    let mapped: SocketAddr = "[::ffff:198.51.100.7]:9000".parse().unwrap();
    assert!(matches!(classify(&v4, &[mapped], MTU), Classified::Datagram(_)));
    // A short frame padded to Ethernet's 60-byte minimum: the padding is not payload.
    let mut padded = v4.clone();
    padded.resize(60, 0);
    let Classified::Datagram(d) = classify(&padded, &[any4], MTU) else { panic!("padded frame refused") };
    assert_eq!(&padded[d.payload], b"x");
}

#[test]
fn every_truncation_goes_to_the_kernel() {
    let ours = [v4_frame().dst, v6_frame().dst];
    for frame in [built(&v4_frame(), &[0x5A; 100]), built(&v6_frame(), &[0x5A; 100])] {
        for len in 0..frame.len() {
            assert_eq!(classify(&frame[..len], &ours, MTU), Classified::ToKernel(NotOurs::Truncated), "cut at {len}");
        }
    }
}

#[test]
fn incremental_updates_equal_a_full_recomputation() {
    // A seeded generator, so that a failure repeats.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let len = 2 * (1 + (next() % 40) as usize);
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 7 == 0 {
            data.fill(0xFF); // sums near ones'-complement zero
        }
        let before = checksum::checksum(&data);
        let start = 2 * (next() as usize % (len / 2));
        let end = start + 2 * (1 + next() as usize % ((len - start) / 2));
        let old = data[start..end].to_vec();
        for byte in &mut data[start..end] {
            *byte = if round % 5 == 0 { 0 } else { next() as u8 };
        }
        if data.iter().all(|&b| b == 0) {
            continue; // the one case where eqn. 3 says 0 and a recomputation 0xFFFF (see `update`)
        }
        let updated = checksum::update(before, &old, &data[start..end]);
        assert_eq!(updated, checksum::checksum(&data), "round {round}: {data:02x?}, field {start}..{end}");
        assert_eq!(updated, reference_checksum(&[&data]));
    }
}

fn ip4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b)))
}

fn ip6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b)))
}

fn repr(v6: bool) -> impl Strategy<Value = UdpFrame> {
    let ip = move || if v6 { ip6().boxed() } else { ip4().boxed() };
    (any::<[u8; 6]>(), any::<[u8; 6]>(), ip(), ip(), any::<u16>(), 1..=u16::MAX, 0..64u8, 0..4u8, any::<u16>())
        .prop_map(|(src_mac, dst_mac, src, dst, sport, dport, dscp, ecn, identification)| UdpFrame {
            src_mac,
            dst_mac,
            src: SocketAddr::new(src.to_canonical(), sport),
            dst: SocketAddr::new(dst.to_canonical(), dport),
            dscp,
            ecn: EcnCodepoint::from_bits(ecn),
            identification,
        })
}

fn ordinary(ip: IpAddr) -> bool {
    super::is_possible_source(ip)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn build_then_classify_round_trips(
        sent in prop_oneof![repr(false), repr(true)],
        payload in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        prop_assume!(ordinary(sent.dst.ip()) && ordinary(sent.src.ip()) && sent.src.ip().is_ipv4() == sent.dst.ip().is_ipv4());
        let frame = built(&sent, &payload);
        let Classified::Datagram(d) = classify(&frame, &[sent.dst], MTU) else {
            panic!("refused: {:?}", classify(&frame, &[sent.dst], MTU));
        };
        prop_assert_eq!((d.src, d.dst, d.ecn, d.src_mac, d.dst_mac), (sent.src, sent.dst, sent.ecn, sent.src_mac, sent.dst_mac));
        prop_assert_eq!(&frame[d.payload.clone()], &payload[..]);
        prop_assert_eq!(d.payload.end, frame.len());
        // The checksums, against the word-by-word computation.
        let udp_at = sent.overhead() - UDP_HEADER_LEN;
        let written = u16::from_be_bytes([frame[udp_at + 6], frame[udp_at + 7]]);
        prop_assert_eq!(written, reference_udp_checksum(sent.src.ip(), sent.dst.ip(), &frame[udp_at..]));
        if sent.src.is_ipv4() {
            let mut header = frame[14..34].to_vec();
            let written = u16::from_be_bytes([header[10], header[11]]);
            header[10..12].copy_from_slice(&[0, 0]);
            prop_assert_eq!(written, reference_checksum(&[&header]));
            prop_assert_eq!(Ipv4View::new_checked(&frame[14..]).unwrap().identification(), sent.identification);
        }
    }

    #[test]
    fn rewriting_equals_building_anew(
        (old, new) in prop_oneof![(repr(false), repr(false)), (repr(true), repr(true))],
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        no_checksum in any::<bool>(),
    ) {
        prop_assume!(old.src.ip().is_ipv4() == old.dst.ip().is_ipv4() && new.src.ip().is_ipv4() == new.dst.ip().is_ipv4());
        prop_assume!(old.src.is_ipv4() == new.src.is_ipv4());
        let mut frame = built(&old, &payload);
        let udp_checksum = old.overhead() - 2;
        if no_checksum && old.src.is_ipv4() {
            frame[udp_checksum..udp_checksum + 2].copy_from_slice(&[0, 0]);
        }
        let kept = UdpFrame { dscp: old.dscp, ecn: old.ecn, identification: old.identification, ..new };
        prop_assert_eq!(new.rewrite(&mut frame), Ok(frame.len()));
        let mut expected = built(&kept, &payload);
        if no_checksum && old.src.is_ipv4() {
            expected[udp_checksum..udp_checksum + 2].copy_from_slice(&[0, 0]);
        }
        prop_assert_eq!(frame, expected);
    }

    #[test]
    fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), mtu in 0..2000usize) {
        let _ = classify(&bytes, &["0.0.0.0:0".parse().unwrap(), "[::]:0".parse().unwrap()], mtu);
        let _ = v4_frame().rewrite(&mut bytes.clone());
        let _ = v6_frame().rewrite(&mut bytes.clone());
    }
}

#[test]
fn rewrite_refuses_other_families_and_non_udp() {
    let mut frame = built(&v4_frame(), b"x");
    assert_eq!(v6_frame().rewrite(&mut frame), Err(RewriteError::FamilyMismatch));
    frame[23] = 6;
    assert_eq!(v4_frame().rewrite(&mut frame), Err(RewriteError::NotUdpFrame));
    assert_eq!(v4_frame().rewrite(&mut [0u8; 20]), Err(RewriteError::NotUdpFrame));
}
