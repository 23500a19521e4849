//! A file between two peers behind NATs, found by peer ID through a bootstrap (the async API,
//! `ant_quic::endpoint`, under tokio). README.md shows it in the NAT lab.
//!
//! ```sh
//! p2p_file --bootstrap [ID@]HOST:PORT receive OUT           # prints its peer ID, takes one file
//! p2p_file --bootstrap [ID@]HOST:PORT send PEER_ID FILE     # prints the path and the SHA-256
//! ```
//!
//! The sender's connection goes straight to the receiver, through a punched hole, or through the
//! bootstrap's relay: it prints the path when connected and again at the end (a relayed
//! connection may have moved to a direct path meanwhile). The receiver answers with the SHA-256
//! of what it wrote, and the sender checks it.

use std::time::Duration;

use ant_quic::endpoint::Endpoint;
use sha2::{Digest, Sha256};

const ALPN: &[u8] = b"p2p-file";
const MAX_FILE: usize = 1 << 30;
const USAGE: &str = "usage: p2p_file --bootstrap [ID@]HOST:PORT (receive OUT | send PEER_ID FILE)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, bootstrap, command @ ..] = args.as_slice() else { return Err(USAGE.into()) };
    if flag != "--bootstrap" {
        return Err(USAGE.into());
    }
    let endpoint = Endpoint::builder().listen("0.0.0.0:0".parse()?).alpn(ALPN).bootstrap(bootstrap).bind()?;
    println!("peer id {}", endpoint.local_peer_id());
    let observed = tokio::time::timeout(Duration::from_secs(30), endpoint.registered()).await??;
    println!("registered: the bootstrap sees us at {observed}");
    match command.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["receive", out] => {
            let conn = endpoint.accept().await.ok_or("the endpoint closed")?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            let data = recv.read_to_end(MAX_FILE).await?;
            std::fs::write(out, &data)?;
            let sha256 = hex::encode(Sha256::digest(&data));
            println!("received {} bytes from {:?} sha256 {sha256}", data.len(), conn.remote_peer_id());
            send.write_all(sha256.as_bytes()).await?;
            send.finish().await?;
            // The sender closes once it has the answer.
            let _ = conn.accept_bi().await;
        }
        ["send", peer, file] => {
            let data = std::fs::read(file)?;
            let conn = endpoint.connect_peer(peer.parse()?).await?;
            println!("connected, path {:?}", conn.path().kind);
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&data).await?;
            send.finish().await?;
            let answer = recv.read_to_end(64).await?;
            let sha256 = hex::encode(Sha256::digest(&data));
            if answer != sha256.as_bytes() {
                return Err(format!("the receiver wrote sha256 {}", String::from_utf8_lossy(&answer)).into());
            }
            println!("sent {} bytes sha256 {sha256} verified, path at the end {:?}", data.len(), conn.path().kind);
            conn.close(0, b"done");
            endpoint.wait_idle().await;
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}
