//! Fuzz target: the admin HTTP listener's request-head parser (`admin::request::parse_head`), fed
//! as a connection feeds it: the bytes a client sent so far, growing chunk by chunk, never more
//! than `MAX_REQUEST + 1` of them (what the connection reads at most).
//!
//! Input: first byte = chunk size (0 is taken as 1), then the client's bytes.
//!
//! Oracle:
//! - no panic;
//! - bounded: `Partial` only within `MAX_REQUEST` bytes; a head that is not whole within them is
//!   refused; a request line longer than `MAX_REQUEST_LINE` is refused with 414;
//! - a refusal is 400, 414 or 431 with a one-line reason;
//! - a complete head, once seen, stays the same answer when more bytes (up to the read cap)
//!   arrive (a refusal may change reason with more bytes: 400 for a bad token can become 414 once
//!   the line is too long, and the connection answers at the first one);
//! - a complete request's method and path are the client's bytes, a method is a token and a path
//!   has no whitespace or control characters.

#![no_main]

use ant_quic_control::admin::request::{parse_head, Head, MAX_REQUEST, MAX_REQUEST_LINE};
use libfuzzer_sys::fuzz_target;

/// What a connection reads at most before it must have an answer.
const READ_CAP: usize = MAX_REQUEST + 1;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let stream = &stream[..stream.len().min(READ_CAP)];
    let chunk = usize::from(chunk).max(1);
    let mut buf = Vec::new();
    let mut answer = Head::Partial;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        answer = parse_head(&buf);
        if answer != Head::Partial {
            break;
        }
    }
    match &answer {
        Head::Partial => assert!(buf.len() <= MAX_REQUEST, "{} bytes buffered without an answer", buf.len()),
        Head::Refused { status, reason } => {
            assert!(matches!(status, 400 | 414 | 431), "status {status}");
            assert!(!reason.is_empty() && !reason.contains('\n'), "reason {reason:?}");
        }
        Head::Complete { method, path } => {
            let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            assert!(line_end <= MAX_REQUEST_LINE, "a {line_end}-byte request line was accepted");
            // Empty lines before the request line are skipped (RFC 9112 §2.2).
            let start = buf.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(buf.len());
            assert!(buf[start..].starts_with(method.as_bytes()), "method {method:?} is not what the client sent");
            assert!(!method.is_empty() && method.bytes().all(|b| b.is_ascii_graphic()), "method {method:?}");
            assert!(contains(&buf, path.as_bytes()), "path {path:?} is not what the client sent");
            assert!(!path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()), "path {path:?}");
        }
    }
    // The same request from everything the connection could have read: bytes after the blank
    // line do not change it.
    if matches!(answer, Head::Complete { .. }) {
        assert_eq!(parse_head(stream), answer, "more bytes after the answer changed it");
    }
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
