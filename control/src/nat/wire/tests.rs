//! The wire tests: known encodings, refusals and round-trip properties. The strategies are shared
//! with the probe tests.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use proptest::prelude::*;

use super::*;

// --- strategies, shared with the probe tests -----------------------------------------------

/// Any IPv4 or IPv6 socket address the wire carries (no flow label or scope ID).
pub(crate) fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
    ]
}

fn candidate_kind() -> impl Strategy<Value = CandidateKind> {
    prop_oneof![
        Just(CandidateKind::Host),
        Just(CandidateKind::ServerReflexive),
        Just(CandidateKind::PeerReflexive),
        Just(CandidateKind::Relayed),
    ]
}

fn candidate() -> impl Strategy<Value = Candidate> {
    (candidate_kind(), any::<u32>(), socket_addr()).prop_map(|(kind, priority, address)| Candidate {
        kind,
        priority,
        address,
    })
}

fn peer_id() -> impl Strategy<Value = PeerId> {
    any::<[u8; 32]>().prop_map(PeerId)
}

/// Every code, with `Other` only for numbers this version does not name (a named number
/// reads back as the named variant, see `other_codes_with_a_name_read_back_named`).
fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Malformed),
        Just(ErrorCode::NotRegistered),
        Just(ErrorCode::UnknownPeer),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::RelayRefused),
        Just(ErrorCode::NotAuthenticated),
        Just(ErrorCode::Other(0)),
        (7u16..).prop_map(ErrorCode::Other),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Direct), Just(Outcome::Relayed), Just(Outcome::Failed)]
}

fn role() -> impl Strategy<Value = PunchRole> {
    prop_oneof![Just(PunchRole::Initiator), Just(PunchRole::Responder)]
}

/// Any message within the format's limits.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), socket_addr()).prop_map(|(sequence, address)| Message::ObservedAddress { sequence, address }),
        (any::<u64>(), candidate()).prop_map(|(sequence, candidate)| Message::AddAddress { sequence, candidate }),
        any::<u64>().prop_map(|sequence| Message::RemoveAddress { sequence }),
        (any::<u64>(), peer_id()).prop_map(|(request, target)| Message::ConnectRequest { request, target }),
        (
            (any::<u64>(), any::<u64>(), peer_id(), role(), any::<u8>()),
            (any::<u32>(), any::<[u8; 16]>(), proptest::collection::vec(candidate(), 0..=MAX_CANDIDATES)),
        )
            .prop_map(|((round, request, peer, role, flags), (start_in_ms, token, candidates))| {
                Message::PunchMeNow { round, request, peer, role, flags, start_in_ms, token, candidates }
            }),
        (any::<u64>(), peer_id()).prop_map(|(request, target)| Message::RelayRequest { request, target }),
        (any::<u64>(), peer_id(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
            |(request, peer, channel, lifetime_s, byte_limit, rate_limit)| Message::RelayGrant {
                request,
                peer,
                channel,
                lifetime_s,
                byte_limit,
                rate_limit
            }
        ),
        // Up to 63 chars of at most 4 bytes: within MAX_REASON.
        (any::<u64>(), error_code(), "\\PC{0,63}").prop_map(|(request, code, reason)| Message::Error {
            request,
            code,
            reason
        }),
        (any::<u64>(), outcome(), any::<u32>()).prop_map(|(request, outcome, connect_ms)| Message::Report {
            request,
            outcome,
            connect_ms
        }),
        any::<u32>().prop_map(|delay_ms| Message::Reregister { delay_ms }),
        socket_addr().prop_map(|address| Message::OtherAddress { address }),
        (
            (any::<u64>(), peer_id(), peer_id(), any::<u8>(), any::<u32>()),
            proptest::collection::vec(candidate(), 0..=MAX_CANDIDATES),
        )
            .prop_map(|((request, requester, target, flags, delay_ms), candidates)| {
                Message::ForwardConnect { request, requester, target, flags, delay_ms, candidates }
            }),
        (any::<u64>(), peer_id(), peer_id(), socket_addr()).prop_map(|(request, target, bootstrap, address)| {
            Message::RelayAt { request, target, bootstrap, address }
        }),
    ]
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    message.emit(&mut out);
    out
}

// --- pinned encodings --------------------------------------------------------------------

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// One known encoding per message type, written out byte by byte from the table in
/// docs/nat-traversal.md, so that the format is pinned and not only self-consistent.
fn known_encodings() -> Vec<(Message, Vec<u8>)> {
    let v6 = |s: &str, port| SocketAddr::new(IpAddr::V6(s.parse().unwrap()), port);
    vec![
        (
            Message::ObservedAddress { sequence: 7, address: "192.0.2.1:4433".parse().unwrap() },
            cat(&[&[1, 0x01], &[0, 0, 0, 0, 0, 0, 0, 7], &[4, 192, 0, 2, 1, 0x11, 0x51]]),
        ),
        (
            Message::AddAddress {
                sequence: 0x0102_0304_0506_0708,
                candidate: Candidate {
                    kind: CandidateKind::Host,
                    priority: 0x7e00_00ff,
                    address: v6("2001:db8::1", 443),
                },
            },
            cat(&[
                &[1, 0x02],
                &[1, 2, 3, 4, 5, 6, 7, 8],
                &[0, 0x7e, 0, 0, 0xff],
                &[6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb],
            ]),
        ),
        (Message::RemoveAddress { sequence: 3 }, cat(&[&[1, 0x03], &[0, 0, 0, 0, 0, 0, 0, 3]])),
        (
            Message::ConnectRequest { request: 9, target: PeerId([0xaa; 32]) },
            cat(&[&[1, 0x04], &[0, 0, 0, 0, 0, 0, 0, 9], &[0xaa; 32]]),
        ),
        (
            Message::PunchMeNow {
                round: 1,
                request: 2,
                peer: PeerId([0xbb; 32]),
                role: PunchRole::Responder,
                flags: 0,
                start_in_ms: 250,
                token: [0x11; 16],
                candidates: vec![
                    Candidate {
                        kind: CandidateKind::ServerReflexive,
                        priority: 100,
                        address: "203.0.113.5:9000".parse().unwrap(),
                    },
                    Candidate { kind: CandidateKind::Relayed, priority: 0, address: v6("::1", 1) },
                ],
            },
            cat(&[
                &[1, 0x05],
                &[0, 0, 0, 0, 0, 0, 0, 1],
                &[0, 0, 0, 0, 0, 0, 0, 2],
                &[0xbb; 32],
                &[1, 0],
                &[0, 0, 0, 0xfa],
                &[0x11; 16],
                &[2],
                &[1, 0, 0, 0, 100, 4, 203, 0, 113, 5, 0x23, 0x28],
                &[3, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
            ]),
        ),
        (
            Message::RelayRequest { request: u64::MAX, target: PeerId([0xcc; 32]) },
            cat(&[&[1, 0x06], &[0xff; 8], &[0xcc; 32]]),
        ),
        (
            Message::RelayGrant {
                request: 5,
                peer: PeerId([0xdd; 32]),
                channel: 0x0102_0304,
                lifetime_s: 600,
                byte_limit: 1 << 30,
                rate_limit: 125_000,
            },
            cat(&[
                &[1, 0x07],
                &[0, 0, 0, 0, 0, 0, 0, 5],
                &[0xdd; 32],
                &[1, 2, 3, 4],
                &[0, 0, 0x02, 0x58],
                &[0, 0, 0, 0, 0x40, 0, 0, 0],
                &[0, 0x01, 0xe8, 0x48],
            ]),
        ),
        (
            Message::Error { request: 4, code: ErrorCode::UnknownPeer, reason: "no peer".into() },
            cat(&[&[1, 0x08], &[0, 0, 0, 0, 0, 0, 0, 4], &[0, 3], &[7], b"no peer"]),
        ),
        (
            Message::Report { request: 6, outcome: Outcome::Relayed, connect_ms: 1500 },
            cat(&[&[1, 0x09], &[0, 0, 0, 0, 0, 0, 0, 6], &[1], &[0, 0, 0x05, 0xdc]]),
        ),
        (Message::Reregister { delay_ms: 30_000 }, cat(&[&[1, 0x0a], &[0, 0, 0x75, 0x30]])),
        (
            Message::OtherAddress { address: "0.0.0.0:9001".parse().unwrap() },
            cat(&[&[1, 0x0b], &[4, 0, 0, 0, 0, 0x23, 0x29]]),
        ),
        (
            Message::ForwardConnect {
                request: 3,
                requester: PeerId([0xee; 32]),
                target: PeerId([0xaa; 32]),
                flags: 0x01,
                delay_ms: 20,
                candidates: vec![Candidate {
                    kind: CandidateKind::ServerReflexive,
                    priority: 100,
                    address: "198.51.100.7:4000".parse().unwrap(),
                }],
            },
            cat(&[
                &[1, 0x0c],
                &[0, 0, 0, 0, 0, 0, 0, 3],
                &[0xee; 32],
                &[0xaa; 32],
                &[0x01],
                &[0, 0, 0, 20],
                &[1],
                &[1, 0, 0, 0, 100, 4, 198, 51, 100, 7, 0x0f, 0xa0],
            ]),
        ),
        (
            Message::RelayAt {
                request: 9,
                target: PeerId([0xaa; 32]),
                bootstrap: PeerId([0xbb; 32]),
                address: "203.0.113.1:9000".parse().unwrap(),
            },
            cat(&[&[1, 0x0d], &[0, 0, 0, 0, 0, 0, 0, 9], &[0xaa; 32], &[0xbb; 32], &[4, 203, 0, 113, 1, 0x23, 0x28]]),
        ),
    ]
}

#[test]
fn known_encodings_of_every_type() {
    let known = known_encodings();
    let mut types: Vec<u8> = known.iter().map(|(m, _)| m.message_type()).collect();
    types.dedup();
    assert_eq!(types, (1..=13).collect::<Vec<u8>>(), "one vector per type, in type order");
    for (message, bytes) in known {
        assert_eq!(encode(&message), bytes, "emit {message:?}");
        assert_eq!(message.encoded_len(), bytes.len(), "encoded_len {message:?}");
        assert_eq!(Message::parse(&bytes), Ok(message.clone()), "parse {message:?}");
        let framed = encode_frame(&message);
        assert_eq!(framed[..2], (bytes.len() as u16).to_be_bytes());
        assert_eq!(framed[2..], bytes[..]);
    }
}

#[test]
fn every_error_code_number() {
    let named = [
        (1, ErrorCode::Malformed),
        (2, ErrorCode::NotRegistered),
        (3, ErrorCode::UnknownPeer),
        (4, ErrorCode::RateLimited),
        (5, ErrorCode::RelayRefused),
        (6, ErrorCode::NotAuthenticated),
        (0, ErrorCode::Other(0)),
        (7, ErrorCode::Other(7)),
        (0xffff, ErrorCode::Other(0xffff)),
    ];
    for (number, code) in named {
        let message = Message::Error { request: 0, code, reason: String::new() };
        let bytes = encode(&message);
        assert_eq!(bytes[10..12], u16::to_be_bytes(number));
        assert_eq!(Message::parse(&bytes), Ok(message));
    }
}

#[test]
fn other_codes_with_a_name_read_back_named() {
    let bytes = encode(&Message::Error { request: 1, code: ErrorCode::Other(3), reason: String::new() });
    assert_eq!(
        Message::parse(&bytes),
        Ok(Message::Error { request: 1, code: ErrorCode::UnknownPeer, reason: String::new() })
    );
}

// --- refusals ----------------------------------------------------------------------------

fn known(message_type: u8) -> Vec<u8> {
    known_encodings().into_iter().map(|(_, b)| b).find(|b| b[1] == message_type).unwrap()
}

#[test]
fn refusals_name_what_is_wrong() {
    use message_type as t;
    assert_eq!(Message::parse(&[]), Err(WireError::Truncated));
    assert_eq!(Message::parse(&[1]), Err(WireError::Truncated));
    assert_eq!(Message::parse(&[2, 3, 0, 0, 0, 0, 0, 0, 0, 0]), Err(WireError::UnknownVersion(2)));
    assert_eq!(Message::parse(&[1, 0]), Err(WireError::UnknownType(0)));
    assert_eq!(Message::parse(&[1, 0x0e]), Err(WireError::UnknownType(0x0e)));
    assert_eq!(Message::parse(&[1, 0x0d]), Err(WireError::Truncated), "RELAY_AT without a body");
    assert_eq!(Message::parse(&[1, 0x0c]), Err(WireError::Truncated), "FORWARD_CONNECT without a body");
    assert_eq!(Message::parse(&[1, 0x0b]), Err(WireError::Truncated), "OTHER_ADDRESS without an address");
    assert_eq!(Message::parse(&vec![1; MAX_MESSAGE + 1]), Err(WireError::TooLong));

    let mut bad_family = known(t::OBSERVED_ADDRESS);
    bad_family[10] = 5;
    assert_eq!(Message::parse(&bad_family), Err(WireError::BadAddressFamily(5)));

    let mut relay_at_family = known(t::RELAY_AT);
    relay_at_family[74] = 5;
    assert_eq!(Message::parse(&relay_at_family), Err(WireError::BadAddressFamily(5)));
    assert_eq!(MessageView::new_unchecked(&relay_at_family).request(), Some(9), "still answerable");

    let mut bad_kind = known(t::ADD_ADDRESS);
    bad_kind[10] = 4;
    assert_eq!(Message::parse(&bad_kind), Err(WireError::BadField("candidate kind")));

    let mut bad_role = known(t::PUNCH_ME_NOW);
    bad_role[50] = 2;
    assert_eq!(Message::parse(&bad_role), Err(WireError::BadField("role")));

    let mut too_many = known(t::PUNCH_ME_NOW);
    too_many[72] = 9;
    assert_eq!(Message::parse(&too_many), Err(WireError::TooManyCandidates(9)));

    let mut bad_outcome = known(t::REPORT);
    bad_outcome[10] = 3;
    assert_eq!(Message::parse(&bad_outcome), Err(WireError::BadField("outcome")));

    let mut bad_utf8 = known(t::ERROR);
    bad_utf8[13] = 0xff;
    assert_eq!(Message::parse(&bad_utf8), Err(WireError::BadUtf8));

    for (_, mut bytes) in known_encodings() {
        bytes.push(0);
        assert_eq!(Message::parse(&bytes), Err(WireError::TrailingBytes));
    }
}

#[test]
fn reregister_is_exactly_a_delay() {
    let bytes = known(message_type::REREGISTER);
    assert_eq!(bytes.len(), 6);
    assert_eq!(Message::parse(&bytes[..5]), Err(WireError::Truncated));
    assert_eq!(Message::parse(&[1, 0x0a]), Err(WireError::Truncated), "no delay at all");
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(Message::parse(&longer), Err(WireError::TrailingBytes), "not a u64 delay");
    let mut wrong_version = bytes.clone();
    wrong_version[0] = 2;
    assert_eq!(Message::parse(&wrong_version), Err(WireError::UnknownVersion(2)));
    assert_eq!(MessageView::new_checked(&bytes).unwrap().request(), None, "it answers no request");
    let longest = Message::Reregister { delay_ms: u32::MAX };
    assert_eq!(Message::parse(&encode(&longest)), Ok(longest));
}

#[test]
fn error_messages_are_one_line_and_say_what() {
    assert_eq!(WireError::UnknownType(0x0a).to_string(), "unknown signalling message type 0x0a");
    assert_eq!(WireError::TooManyCandidates(9).to_string(), "9 candidates announced, at most 8 allowed");
    assert!(WireError::BadFrameLength(1).to_string().contains("close it"));
}

#[test]
fn view_reads_the_request_of_a_malformed_message() {
    let mut bytes = known(message_type::PUNCH_ME_NOW);
    bytes[50] = 7; // bad role: the message is refused, its request can still be answered
    assert!(Message::parse(&bytes).is_err());
    assert_eq!(MessageView::new_unchecked(&bytes).request(), Some(2));
    let truncated = &known(message_type::CONNECT_REQUEST)[..12];
    assert_eq!(MessageView::new_unchecked(truncated).request(), Some(9));
    assert_eq!(MessageView::new_unchecked(&truncated[..9]).request(), None);
    assert_eq!(MessageView::new_unchecked(known(message_type::OBSERVED_ADDRESS)).request(), None);
    let view = MessageView::new_checked(known(message_type::REPORT)).unwrap();
    assert_eq!((view.version(), view.message_type(), view.body().len()), (1, 9, 13));
}

// --- what emit does with what the format cannot carry ---------------------------------------

#[test]
fn emit_keeps_the_first_eight_candidates() {
    let candidates: Vec<Candidate> = (0..12)
        .map(|i| Candidate {
            kind: CandidateKind::Host,
            priority: 1000 - i,
            address: SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8), 1000)),
        })
        .collect();
    let message = Message::PunchMeNow {
        round: 1,
        request: 1,
        peer: PeerId([1; 32]),
        role: PunchRole::Initiator,
        flags: 0,
        start_in_ms: 0,
        token: [0; 16],
        candidates: candidates.clone(),
    };
    let bytes = encode(&message);
    assert_eq!(bytes.len(), message.encoded_len());
    let Ok(Message::PunchMeNow { candidates: parsed, .. }) = Message::parse(&bytes) else {
        panic!("an emitted PUNCH_ME_NOW must parse")
    };
    assert_eq!(parsed, candidates[..MAX_CANDIDATES]);
}

#[test]
fn emit_cuts_a_long_reason_at_a_char_boundary() {
    for (reason, kept) in [
        ("x".repeat(300), "x".repeat(255)),
        // 2-byte chars: 255 would split one, so 254 bytes stay.
        ("é".repeat(200), "é".repeat(127)),
        // 4-byte chars: 252 bytes stay.
        ("🦀".repeat(100), "🦀".repeat(63)),
        ("y".repeat(255), "y".repeat(255)),
    ] {
        let message = Message::Error { request: 1, code: ErrorCode::RateLimited, reason };
        let bytes = encode(&message);
        assert_eq!(bytes.len(), message.encoded_len());
        assert_eq!(
            Message::parse(&bytes),
            Ok(Message::Error { request: 1, code: ErrorCode::RateLimited, reason: kept })
        );
    }
}

#[test]
fn ipv6_flow_label_and_scope_are_not_sent() {
    let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5000, 7, 3));
    let bytes = encode(&Message::ObservedAddress { sequence: 1, address: scoped });
    let plain = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5000, 0, 0));
    assert_eq!(Message::parse(&bytes), Ok(Message::ObservedAddress { sequence: 1, address: plain }));
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:80".parse().unwrap();
    let bytes = encode(&Message::ObservedAddress { sequence: 1, address: mapped });
    assert_eq!(bytes[10], 6, "an IPv4-mapped address stays family 6");
    assert_eq!(Message::parse(&bytes), Ok(Message::ObservedAddress { sequence: 1, address: mapped }));
}

// --- properties --------------------------------------------------------------------------

proptest! {
    #[test]
    fn round_trip(message in message()) {
        let bytes = encode(&message);
        prop_assert_eq!(bytes.len(), message.encoded_len());
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(Message::parse(&bytes), Ok(message));
    }

    #[test]
    fn every_truncation_is_rejected(message in message()) {
        let bytes = encode(&message);
        for cut in 0..bytes.len() {
            prop_assert_eq!(Message::parse(&bytes[..cut]), Err(WireError::Truncated), "cut at {}", cut);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
        if let Ok(message) = Message::parse(&bytes) {
            prop_assert_eq!(encode(&message), bytes);
        }
    }

    /// Random bytes rarely get past the type byte; a valid message with one byte changed
    /// reaches every field.
    #[test]
    fn mutated_messages_never_panic(message in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&message);
        let at = at.index(bytes.len());
        bytes[at] = byte;
        if let Ok(message) = Message::parse(&bytes) {
            prop_assert_eq!(Message::parse(&encode(&message)), Ok(message));
        }
    }

    #[test]
    fn frames_split_anywhere_yield_the_same_messages(
        messages in proptest::collection::vec(message(), 0..12),
        chunks in proptest::collection::vec(1usize..64, 1..16),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
        let mut reader = FrameReader::new();
        let mut read = Vec::new();
        let mut rest = &stream[..];
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            reader.push(chunk);
            while let Some(message) = reader.next_message() {
                read.push(message.unwrap());
            }
            prop_assert!(reader.buffered() < MAX_FRAME);
        }
        prop_assert_eq!(read, messages);
        prop_assert_eq!(reader.buffered(), 0);
        prop_assert!(!reader.is_poisoned());
    }
}

// --- framing -----------------------------------------------------------------------------

#[test]
fn an_undecodable_frame_is_skipped_and_reading_goes_on() {
    let (first, second) = (Message::RemoveAddress { sequence: 1 }, Message::RemoveAddress { sequence: 2 });
    let mut stream = encode_frame(&first);
    stream.extend_from_slice(&[0, 2, 1, 0x42]);
    stream.extend_from_slice(&encode_frame(&second));
    let mut reader = FrameReader::new();
    reader.push(&stream);
    assert_eq!(reader.next_message(), Some(Ok(first)));
    assert_eq!(reader.next_message(), Some(Err(WireError::UnknownType(0x42))));
    assert_eq!(reader.next_message(), Some(Ok(second)));
    assert_eq!(reader.next_message(), None);
    assert!(!reader.is_poisoned());
}

#[test]
fn a_bad_frame_length_poisons_the_reader() {
    for len in [0u16, 1, MAX_MESSAGE as u16 + 1, u16::MAX] {
        let mut reader = FrameReader::new();
        let message = Message::RemoveAddress { sequence: 1 };
        reader.push(&encode_frame(&message));
        reader.push(&len.to_be_bytes());
        reader.push(&encode_frame(&message));
        assert_eq!(reader.next_message(), Some(Ok(message.clone())));
        assert_eq!(reader.next_message(), Some(Err(WireError::BadFrameLength(len))), "length {len}");
        assert!(reader.is_poisoned());
        assert_eq!(reader.next_message(), None, "the error is returned once");
        reader.push(&encode_frame(&message));
        assert_eq!(reader.next_message(), None, "nothing after the poison");
        assert_eq!(reader.buffered(), 0, "a poisoned reader keeps nothing");
    }
}

#[test]
fn the_longest_frame_is_accepted() {
    let mut frame = (MAX_MESSAGE as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&[1, message_type::REMOVE_ADDRESS]);
    frame.resize(MAX_FRAME, 0);
    let mut reader = FrameReader::new();
    reader.push(&frame);
    assert_eq!(reader.next_message(), Some(Err(WireError::TrailingBytes)));
    assert!(!reader.is_poisoned(), "a 1200-byte frame is well delimited");
}

#[test]
fn a_peer_trickling_bytes_cannot_grow_the_buffer() {
    // Frames of the longest length, their bodies junk, sent one byte at a time.
    let mut frame = (MAX_MESSAGE as u16).to_be_bytes().to_vec();
    frame.resize(MAX_FRAME, 0x77);
    let mut reader = FrameReader::new();
    let mut errors = 0;
    for &byte in frame.iter().cycle().take(10 * MAX_FRAME + 5) {
        reader.push(&[byte]);
        while let Some(result) = reader.next_message() {
            assert_eq!(result, Err(WireError::UnknownVersion(0x77)));
            errors += 1;
        }
        assert!(reader.buffered() < MAX_FRAME);
        assert!(reader.buffer.capacity() <= 4 * MAX_FRAME);
    }
    assert_eq!(errors, 10);
    assert_eq!(reader.buffered(), 5);
}

#[test]
fn memory_of_a_burst_is_given_back() {
    let message = Message::ConnectRequest { request: 1, target: PeerId([3; 32]) };
    let burst: Vec<u8> = (0..1000).flat_map(|_| encode_frame(&message)).collect();
    let mut reader = FrameReader::new();
    reader.push(&burst);
    assert_eq!(std::iter::from_fn(|| reader.next_message()).count(), 1000);
    reader.push(&[0]);
    assert_eq!(reader.buffered(), 1);
    assert!(reader.buffer.capacity() <= 4 * MAX_FRAME, "capacity {}", reader.buffer.capacity());
}
