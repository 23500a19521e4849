//! The admin listener's request head, sans-IO: what the bytes received so far say, within the
//! size limits. No sockets and no clock; the connection decides what to do with the answer.

/// Longest request line (method, target, version) accepted; longer ones get 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest request head (line and headers) accepted; larger ones get 431.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Header fields accepted; more get 431 (RFC 6585 §5: too large collectively).
pub const MAX_HEADERS: usize = 32;

/// What the bytes of a request head received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Not complete yet, and within the limits: read more.
    Partial,
    /// A whole request head.
    Complete {
        /// The request method (`GET`).
        method: String,
        /// The request target, query included.
        path: String,
    },
    /// Refused: answer with this status and reason, then close.
    Refused {
        /// 400, 414 or 431.
        status: u16,
        /// One line for the response body.
        reason: String,
    },
}

/// Parse the head in `buf`: the bytes received so far (the caller reads at most
/// [`MAX_REQUEST`] + 1 of them, so that an oversized head shows as one).
pub fn parse_head(buf: &[u8]) -> Head {
    // RFC 9112 §3: a request line too long for the server gets 414; checked first so that a
    // huge target is told apart from huge headers.
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.unwrap_or(buf.len()) > MAX_REQUEST_LINE {
        return refused(414, format!("request line longer than {MAX_REQUEST_LINE} bytes"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Head::Complete {
            method: request.method.unwrap_or_default().to_owned(),
            path: request.path.unwrap_or_default().to_owned(),
        },
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST => {
            refused(431, format!("request head larger than {MAX_REQUEST} bytes"))
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => refused(431, format!("more than {MAX_HEADERS} header fields")),
        Err(error) => refused(400, format!("bad request: {error}")),
    }
}

fn refused(status: u16, reason: String) -> Head {
    Head::Refused { status, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(buf: &[u8]) -> Option<u16> {
        match parse_head(buf) {
            Head::Refused { status, .. } => Some(status),
            _ => None,
        }
    }

    #[test]
    fn a_whole_head_gives_method_and_path() {
        let head = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head, Head::Complete { method: "GET".into(), path: "/metrics?x=1".into() });
    }

    #[test]
    fn a_head_arriving_byte_by_byte_is_partial_until_its_blank_line() {
        let request = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..request.len() {
            assert_eq!(parse_head(&request[..end]), Head::Partial, "after {end} bytes");
        }
        assert!(matches!(parse_head(request), Head::Complete { .. }));
    }

    #[test]
    fn a_long_request_line_gets_414_before_it_ends() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(parse_head(&line), Head::Partial, "at the limit");
        line.push(b'a');
        assert_eq!(status(&line), Some(414), "one byte over, no line end yet");
        line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(status(&line), Some(414), "complete but too long");
    }

    #[test]
    fn large_or_many_headers_get_431() {
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.resize(MAX_REQUEST + 1, b'a');
        assert_eq!(status(&head), Some(431));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Some(431));
        let enough: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(parse_head(format!("GET / HTTP/1.1\r\n{enough}\r\n").as_bytes()), Head::Complete { .. }));
    }

    #[test]
    fn garbage_gets_400() {
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/9.9\r\n\r\n"), Some(400));
    }
}
