//! Connect to a node, send a message on the `ant-quic/1` echo operation, print the answer.
//!
//! ```sh
//! cargo run --release -- --listen 127.0.0.1:4433 &
//! cargo run --release --example echo_client -- 127.0.0.1:4433 "hello"
//! ```

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use ant_quic::dataplane::{Application, ConnId, ConnRef, ReadOutcome};
use ant_quic::node::{connect_request, start_client};
use ant_quic::protocol::{encode_op, Op};
use ant_quic::quinn_proto::{ConnectionError, StreamId, VarInt};
use ant_quic::tls::{ServerAuth, ALPN_ANT_QUIC};

/// Runs on the core that owns the connection.
struct Echo {
    message: Vec<u8>,
    answer: Vec<u8>,
    done: mpsc::Sender<Result<Vec<u8>, String>>,
}

impl Application for Echo {
    fn on_connected(&mut self, conn: &mut ConnRef<'_>) {
        let Some(stream) = conn.open_bi() else { return };
        let mut request = encode_op(Op::Echo);
        request.extend_from_slice(&self.message);
        // A short message fits the initial flow-control window in one write.
        let _ = conn.write(stream, &request);
        let _ = conn.finish(stream);
    }

    fn on_readable(&mut self, conn: &mut ConnRef<'_>, stream: StreamId) {
        let answer = &mut self.answer;
        match conn.read(stream, &mut |bytes| answer.extend_from_slice(&bytes)) {
            Ok(ReadOutcome::Finished) => {
                let _ = self.done.send(Ok(std::mem::take(&mut self.answer)));
                conn.close(VarInt::from_u32(0), b"bye");
            }
            Ok(ReadOutcome::Pending) => {}
            Err(e) => {
                let _ = self.done.send(Err(e.to_string()));
            }
        }
    }

    fn on_closed(&mut self, _id: ConnId, _tag: u64, reason: &ConnectionError) {
        let _ = self.done.send(Err(format!("connection closed: {reason}")));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into()).parse()?;
    let message = args.next().unwrap_or_else(|| "hello".into()).into_bytes();

    let (done, result) = mpsc::channel();
    let node = start_client(None, Echo { message, answer: Vec::new(), done })?;
    // Insecure: the example does not know the server's peer ID; pass ServerAuth::PeerId to pin it.
    node.connect(connect_request(server, ServerAuth::Insecure, &[ALPN_ANT_QUIC], 0)?, Some(0))?;
    let outcome = result.recv_timeout(Duration::from_secs(10));
    node.shutdown();
    let _ = node.join();
    match outcome {
        Ok(Ok(answer)) => {
            println!("{}", String::from_utf8_lossy(&answer));
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}
