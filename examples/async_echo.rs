//! An echo server and client on the async API (`ant_quic::endpoint`), under tokio.
//!
//! ```sh
//! cargo run --example async_echo -- server 127.0.0.1:4433      # prints its peer ID
//! cargo run --example async_echo -- client 127.0.0.1:4433 PEER_ID "hello"
//! ```
//!
//! The server echoes every bidirectional stream of every connection back, each connection in a
//! task of its own; the client authenticates the server by its peer ID.

use std::net::SocketAddr;

use ant_quic::endpoint::{Connection, Endpoint, Error};
use ant_quic::tls::ServerAuth;

const ALPN: &[u8] = b"echo";
/// The longest message the server echoes.
const MAX_MESSAGE: usize = 1 << 20;

async fn serve(listen: SocketAddr) -> Result<(), Error> {
    let endpoint = Endpoint::builder().listen(listen).alpn(ALPN).cores(1).bind()?;
    println!("listening on {} as {}", endpoint.local_addr(), endpoint.local_peer_id());
    while let Some(conn) = endpoint.accept().await {
        tokio::spawn(echo(conn));
    }
    Ok(())
}

async fn echo(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let message = recv.read_to_end(MAX_MESSAGE).await?;
            send.write_all(&message).await?;
            send.finish().await
        });
    }
}

async fn ask(server: SocketAddr, peer_id: &str, message: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let endpoint = Endpoint::builder().alpn(ALPN).accept(false).bind()?;
    let conn = endpoint.connect(server, ServerAuth::PeerId(peer_id.parse()?)).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(message.as_bytes()).await?;
    send.finish().await?;
    let answer = recv.read_to_end(MAX_MESSAGE).await?;
    conn.close(0, b"bye");
    endpoint.wait_idle().await;
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["server", listen] => Ok(serve(listen.parse()?).await?),
        ["client", server, peer_id, message] => {
            let answer = ask(server.parse()?, peer_id, message).await?;
            println!("{}", String::from_utf8_lossy(&answer));
            Ok(())
        }
        _ => Err("usage: async_echo server ADDR | async_echo client ADDR PEER_ID MESSAGE".into()),
    }
}
