//! The opcodes and error codes of the application protocols spoken on a node's streams.
//!
//! `ant-quic/1` (version 1): each operation is one bidirectional stream opened by the client.
//! Its first byte names the operation; then:
//!
//! | op  | header after the op byte | client then sends | server answers |
//! | --- | --- | --- | --- |
//! | `E` | nothing | any bytes, then FIN | the same bytes, then FIN |
//! | `D` | length, u64 big-endian | FIN | `length` bytes, then FIN |
//! | `U` | nothing | any bytes, then FIN | byte count (u64 BE), then FIN |
//! | `H` | nothing | any bytes, then FIN | byte count (u64 BE) and their SHA-256 (32 bytes), then FIN |
//! | `S` | nothing | signalling frames (`docs/nat-traversal.md`) | signalling frames |
//!
//! Unknown operations are refused with stream error [`AQ_BAD_OP`] (`RESET_STREAM` and
//! `STOP_SENDING`).
//!
//! `hq-interop` (HTTP/0.9 as in the QUIC interop runner) has no opcodes, only its stream errors
//! [`HQ_NOT_FOUND`] and [`HQ_BAD_REQUEST`].

use bytes::Bytes;
use quinn_proto::VarInt;

/// hq-interop stream error: the requested path does not name a servable file.
pub const HQ_NOT_FOUND: VarInt = VarInt::from_u32(0x1);
/// hq-interop stream error: the request was not `GET /path`.
pub const HQ_BAD_REQUEST: VarInt = VarInt::from_u32(0x2);
/// ant-quic/1 stream error: unknown operation.
pub const AQ_BAD_OP: VarInt = VarInt::from_u32(0x3);

/// A decoded operation header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Echo the stream back.
    Echo,
    /// Send this many bytes to the client.
    Download(u64),
    /// Count what the client sends, and hash it when `hash` is set.
    Upload {
        /// Answer with the SHA-256 too.
        hash: bool,
    },
    /// The NAT traversal signalling stream: frames both ways for the connection's lifetime.
    Signal,
}

/// The first byte does not name an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown ant-quic/1 operation {0:#04x}")]
pub struct UnknownOp(pub u8);

/// Decode the header at the start of `buf`: `Ok(None)` when more bytes are needed, otherwise
/// the operation and how many bytes its header used.
pub fn parse_op(buf: &[u8]) -> Result<Option<(Op, usize)>, UnknownOp> {
    let Some(&op) = buf.first() else { return Ok(None) };
    match op {
        b'E' => Ok(Some((Op::Echo, 1))),
        b'U' => Ok(Some((Op::Upload { hash: false }, 1))),
        b'H' => Ok(Some((Op::Upload { hash: true }, 1))),
        b'S' => Ok(Some((Op::Signal, 1))),
        b'D' => {
            let Some(len) = buf.get(1..9) else { return Ok(None) };
            let mut be = [0u8; 8];
            be.copy_from_slice(len);
            Ok(Some((Op::Download(u64::from_be_bytes(be)), 9)))
        }
        other => Err(UnknownOp(other)),
    }
}

/// Encode an operation header.
pub fn encode_op(op: Op) -> Vec<u8> {
    match op {
        Op::Echo => vec![b'E'],
        Op::Upload { hash: false } => vec![b'U'],
        Op::Upload { hash: true } => vec![b'H'],
        Op::Signal => vec![b'S'],
        Op::Download(len) => {
            let mut out = vec![b'D'];
            out.extend_from_slice(&len.to_be_bytes());
            out
        }
    }
}

/// 64 KiB of filler for bulk transfers, shared by reference so sending it copies nothing.
pub fn filler() -> Bytes {
    Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [
            Op::Echo,
            Op::Signal,
            Op::Download(0),
            Op::Download(u64::MAX),
            Op::Upload { hash: true },
            Op::Upload { hash: false },
        ] {
            let bytes = encode_op(op);
            assert_eq!(parse_op(&bytes), Ok(Some((op, bytes.len()))));
        }
    }

    #[test]
    fn partial_and_unknown() {
        assert_eq!(parse_op(b""), Ok(None));
        assert_eq!(parse_op(b"D\0\0"), Ok(None));
        assert_eq!(parse_op(b"Z"), Err(UnknownOp(b'Z')));
    }
}
