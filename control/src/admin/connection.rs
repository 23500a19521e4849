//! One admin client's connection: read its request head, write the answer without blocking,
//! then linger until the client closes. Every stage has a deadline, so a slow or silent client
//! holds its slot for a bounded time, and nothing here blocks the control thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::request::{parse_head, Head, MAX_REQUEST};

/// A request head must arrive whole within this time of the connection's accept, or it gets 408.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Longest an answer may take to leave (a client that does not read).
const WRITE_DEADLINE: Duration = Duration::from_secs(2);
/// After the answer, how long the client has to close before the connection is closed anyway.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read per read call.
const CHUNK: usize = 4096;
/// Bytes a lingering connection may discard per turn, so that one client cannot keep the thread.
const LINGER_READ_PER_TURN: usize = 16 * CHUNK;

/// An answer: status, content type and body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    /// The whole HTTP/1.1 message; every answer closes its connection.
    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if self.status == 405 { "Allow: GET\r\n" } else { "" },
        );
        let mut message = Vec::with_capacity(head.len() + self.body.len());
        message.extend_from_slice(head.as_bytes());
        message.extend_from_slice(self.body.as_bytes());
        message
    }
}

enum Stage {
    /// Reading the request head (at most `MAX_REQUEST` + 1 bytes).
    Reading { head: Vec<u8> },
    /// Sending the answer.
    Writing { message: Vec<u8>, sent: usize, until: Instant },
    /// Answer sent and write side shut: discard what the client still sends until it closes, so
    /// that closing with unread bytes does not reset the connection and destroy the answer (a
    /// lingering close, as nginx does).
    Lingering { until: Instant },
}

/// What one [`Connection::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Nothing happened: the client is waiting or slow.
    Idle,
    /// Bytes moved.
    Busy,
    /// The connection is finished: drop it (closing the socket).
    Finished,
}

/// A non-blocking admin client connection.
pub struct Connection {
    stream: TcpStream,
    accepted: Instant,
    stage: Stage,
}

impl Connection {
    /// `stream` must be non-blocking.
    pub fn new(stream: TcpStream, now: Instant) -> Self {
        Self { stream, accepted: now, stage: Stage::Reading { head: Vec::new() } }
    }

    /// When it was accepted: the oldest connection is the one closed to make room.
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// Move the connection on as far as its socket allows without blocking; `respond` answers
    /// a complete request (method, path).
    pub fn advance(&mut self, now: Instant, respond: &mut dyn FnMut(&str, &str) -> Response) -> Turn {
        let mut turn = Turn::Idle;
        loop {
            let step = match &mut self.stage {
                Stage::Reading { head } => read_head(&mut self.stream, head, self.accepted, now, respond),
                Stage::Writing { message, sent, until } => write_message(&mut self.stream, message, sent, *until, now),
                Stage::Lingering { until } => discard(&mut self.stream, *until, now),
            };
            match step {
                Step::Stay(Turn::Idle) => return turn,
                Step::Stay(moved) => return moved,
                Step::Finished => return Turn::Finished,
                Step::Answer(response) => {
                    self.stage = Stage::Writing { message: response.encode(), sent: 0, until: now + WRITE_DEADLINE };
                }
                Step::Sent => {
                    // Our FIN follows the answer; the client closes once it has read it.
                    if self.stream.shutdown(Shutdown::Write).is_err() {
                        return Turn::Finished;
                    }
                    self.stage = Stage::Lingering { until: now + LINGER };
                }
            }
            turn = Turn::Busy;
        }
    }
}

enum Step {
    Stay(Turn),
    Answer(Response),
    Sent,
    Finished,
}

fn read_head(
    stream: &mut TcpStream,
    head: &mut Vec<u8>,
    accepted: Instant,
    now: Instant,
    respond: &mut dyn FnMut(&str, &str) -> Response,
) -> Step {
    let mut chunk = [0u8; CHUNK];
    let mut read_any = false;
    // One byte past the limit is enough to tell an oversized head (parse_head refuses it).
    while head.len() <= MAX_REQUEST {
        let room = (MAX_REQUEST + 1 - head.len()).min(CHUNK);
        match stream.read(chunk.get_mut(..room).unwrap_or_default()) {
            Ok(0) if head.is_empty() => return Step::Finished,
            // Closed before a whole request: answer 400, best effort.
            Ok(0) => return Step::Answer(Response::text(400, "incomplete request\n")),
            Ok(n) => {
                read_any = true;
                head.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Finished,
        }
    }
    if read_any {
        match parse_head(head) {
            Head::Partial => {}
            Head::Complete { method, path } => return Step::Answer(respond(&method, &path)),
            Head::Refused { status, reason } => return Step::Answer(Response::text(status, format!("{reason}\n"))),
        }
    }
    if now.duration_since(accepted) > REQUEST_DEADLINE {
        return Step::Answer(Response::text(408, "request timeout\n"));
    }
    Step::Stay(if read_any { Turn::Busy } else { Turn::Idle })
}

fn write_message(stream: &mut TcpStream, message: &[u8], sent: &mut usize, until: Instant, now: Instant) -> Step {
    let mut wrote_any = false;
    while let Some(rest) = message.get(*sent..).filter(|rest| !rest.is_empty()) {
        match stream.write(rest) {
            Ok(0) => return Step::Finished,
            Ok(n) => {
                *sent += n;
                wrote_any = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return if now > until {
                    Step::Finished
                } else {
                    Step::Stay(if wrote_any { Turn::Busy } else { Turn::Idle })
                };
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Finished,
        }
    }
    Step::Sent
}

fn discard(stream: &mut TcpStream, until: Instant, now: Instant) -> Step {
    let mut chunk = [0u8; CHUNK];
    let mut discarded = 0;
    while discarded < LINGER_READ_PER_TURN {
        match stream.read(&mut chunk) {
            Ok(0) => return Step::Finished,
            Ok(n) => discarded += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Finished,
        }
    }
    if now > until {
        Step::Finished
    } else {
        Step::Stay(if discarded > 0 { Turn::Busy } else { Turn::Idle })
    }
}
