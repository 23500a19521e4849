//! Fuzz target: the admin HTTP listener's request parser (`admin::parse_request`), fed as the
//! listener feeds it: the bytes a client sent so far, growing chunk by chunk.
//!
//! Input: first byte = chunk size (0 is taken as 1), then the client's bytes.
//!
//! Oracle:
//! - no panic;
//! - bounded: a client never gets more than `MAX_REQUEST` bytes buffered without an answer
//!   (`Partial` only under `MAX_REQUEST` bytes), and a request head that is not whole within
//!   `MAX_REQUEST` bytes is refused (431), whatever follows;
//! - an answer, once given, does not depend on what arrives after (the listener answers at the
//!   first chunk that decides): the whole input parses to the same answer;
//! - a complete request's method and path are the client's bytes (the method first, after any
//!   empty lines), a method is a token and a path has no whitespace or control characters.

#![no_main]

use ant_quic_control::admin::{parse_request, RequestHead, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut buf = Vec::new();
    let mut answer = RequestHead::Partial;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        answer = parse_request(&buf);
        if answer != RequestHead::Partial {
            break;
        }
    }
    match &answer {
        RequestHead::Partial => assert!(buf.len() < MAX_REQUEST, "{} bytes buffered without an answer", buf.len()),
        RequestHead::TooLarge => assert!(buf.len() >= MAX_REQUEST),
        RequestHead::Malformed(reason) => assert!(!reason.is_empty() && !reason.contains('\n')),
        RequestHead::Complete { method, path } => {
            let head = &buf[..buf.len().min(MAX_REQUEST)];
            // Empty lines before the request line are skipped (RFC 9112 §2.2).
            let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(head.len());
            assert!(head[start..].starts_with(method.as_bytes()), "method {method:?} is not what the client sent");
            assert!(!method.is_empty() && method.bytes().all(|b| b.is_ascii_graphic()), "method {method:?}");
            assert!(contains(head, path.as_bytes()), "path {path:?} is not what the client sent");
            assert!(!path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()), "path {path:?}");
        }
    }
    // The same answer from the whole input: nothing after the deciding chunk changes it.
    if answer != RequestHead::Partial {
        assert_eq!(parse_request(stream), answer, "more bytes after the answer changed it");
    }
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
