//! The listener's side of a TLS connection after the handshake: OpenSSL's
//! stream, with vectored writes gathered into one `SSL_write`.
//!
//! hyper's HTTP/2 writes a frame header and its payload as separate buffers.
//! A stream without vectored writes gets them one `SSL_write` each, so a
//! link's padded cell left as two records, the first of a fixed size, which
//! is just what link padding exists to hide (docs/threat-model.md, "What a
//! prober sees"). Gathering up to one record's worth of the buffers into
//! one write makes one record of them, as rustls does on the dialer's side,
//! and as nginx, which buffers its output into 16 KiB records, does too.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::ssl::SslRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

/// The most plaintext one TLS record carries, in bytes: the most gathered
/// into one write.
const TLS_RECORD_PLAINTEXT_MAX_LEN: usize = 16_384;

/// An accepted OpenSSL stream whose vectored writes become one write.
#[derive(Debug)]
pub(crate) struct ServerTlsStream<S> {
    inner: SslStream<S>,
    /// The gathered bytes of the last vectored write.
    gathered: Vec<u8>,
}

impl<S> ServerTlsStream<S>
where
    S: AsyncRead + AsyncWrite,
{
    pub(crate) fn new(inner: SslStream<S>) -> ServerTlsStream<S> {
        ServerTlsStream {
            inner,
            gathered: Vec::with_capacity(TLS_RECORD_PLAINTEXT_MAX_LEN),
        }
    }

    /// The connection's TLS state.
    pub(crate) fn ssl(&self) -> &SslRef {
        self.inner.ssl()
    }
}

impl<S> AsyncRead for ServerTlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for ServerTlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // A retry after `Pending` comes with the same buffers, so the same
        // bytes are gathered again, as OpenSSL requires of a retried write.
        this.gathered.clear();
        for b in bufs {
            let room = TLS_RECORD_PLAINTEXT_MAX_LEN - this.gathered.len();
            if room == 0 {
                break;
            }
            this.gathered.extend_from_slice(&b[..b.len().min(room)]);
        }
        Pin::new(&mut this.inner).poll_write(cx, &this.gathered)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
