//! The app side of a stack connection: a kernel TCP socket (a SOCKS
//! client's, or the exposed service's) joined to a [`Pipe`], both ways,
//! with half-closes passed on.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stack::Pipe;

/// Bytes read from the app socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A connection accepted on an exposed port: dials `to` and joins it to
/// the overlay's side. A service that does not answer ends the overlay
/// connection with a reset (its channels close).
pub(super) async fn forward(to: SocketAddr, pipe: Pipe) {
    match TcpStream::connect(to).await {
        Ok(stream) => splice(stream, pipe).await,
        Err(e) => tracing::debug!(%to, error = %e, "an exposed port's service did not answer"),
    }
}

/// Copies `stream` to the overlay and the overlay to `stream` until both
/// directions have ended.
pub(super) async fn splice(stream: TcpStream, pipe: Pipe) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let Pipe { mut rx, tx, wake } = pipe;
    let up = async {
        loop {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if tx.send(buf.freeze()).await.is_err() {
                break;
            }
            wake.notify_one();
        }
        // The app finished: the stack sends FIN once the rest is out.
        drop(tx);
        wake.notify_one();
    };
    let down = async {
        while let Some(chunk) = rx.recv().await {
            // Room in the channel: the stack may read the socket again.
            wake.notify_one();
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(rx);
        wake.notify_one();
        let _ = wr.shutdown().await;
    };
    tokio::join!(up, down);
}
