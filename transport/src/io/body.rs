//! HTTP body types: one enum for every response the listener gives, and a
//! channel-fed body for link streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// The error type of [`ServerBody`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read size of [`ServerBody::File`], in bytes.
const FILE_CHUNK_LEN: usize = 64 * 1024;

/// A body fed by a channel of buffers; it ends when every sender is gone.
/// Dropping it makes the senders' `send` fail, which is how a link's writer
/// learns that HTTP/2 closed the stream.
#[derive(Debug)]
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and its sender, buffering at most `capacity` buffers.
    pub(crate) fn new(capacity: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A file streamed from disk, `remaining` bytes from its current position.
#[derive(Debug)]
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl FileBody {
    pub(crate) fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            remaining: len,
            buf: vec![0; FILE_CHUNK_LEN],
        }
    }
}

/// Every body the listener sends.
#[derive(Debug)]
pub(crate) enum ServerBody {
    /// Bytes in memory (built-in files, error pages); empty for HEAD.
    Full(Option<Bytes>),
    /// A file from the cover directory.
    File(FileBody),
    /// An upstream's response, passed through.
    Proxied(Incoming),
    /// A link's response stream.
    Link(ChannelBody),
}

impl ServerBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> ServerBody {
        ServerBody::Full(Some(b.into()))
    }

    pub(crate) fn empty() -> ServerBody {
        ServerBody::Full(None)
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ServerBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ServerBody::Proxied(inc) => Pin::new(inc)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            ServerBody::Link(ch) => Pin::new(ch).poll_frame(cx),
            ServerBody::File(f) => {
                if f.remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = usize::try_from(f.remaining)
                    .unwrap_or(usize::MAX)
                    .min(f.buf.len());
                let FileBody { file, buf, .. } = f;
                let mut rb = ReadBuf::new(&mut buf[..want]);
                match Pin::new(file).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            // The file shrank under us: end short, as
                            // nginx does (the client sees a short body).
                            f.remaining = 0;
                            return Poll::Ready(Some(Err("file ended early".into())));
                        }
                        f.remaining -= n as u64;
                        let chunk = Bytes::copy_from_slice(rb.filled());
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServerBody::Full(b) => b.is_none(),
            ServerBody::File(f) => f.remaining == 0,
            ServerBody::Proxied(inc) => inc.is_end_stream(),
            ServerBody::Link(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServerBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ServerBody::File(f) => SizeHint::with_exact(f.remaining),
            ServerBody::Proxied(inc) => inc.size_hint(),
            ServerBody::Link(_) => SizeHint::default(),
        }
    }
}
