//! server::coalesce: write coalescing for accepted connections.
//!
//! hyper runs every HTTP/2 stream as its own task. When a batch of
//! requests completes together (one group commit, one ReadIndex round),
//! each stream task hands its response to the connection task, and tokio
//! runs the woken connection task right away (its LIFO slot): the
//! connection then flushes one response per `writev`, and the client
//! wakes up once per response. [`Coalesce`] buffers what the connection
//! writes and, on the first flush, yields once to the scheduler (tokio's
//! `yield_now`, which runs the task again only after every other runnable
//! task): the other stream tasks of the batch queue their responses in the
//! meantime, and the next flush writes them all with one system call.
//! With nothing else runnable the yield costs one trip through the
//! scheduler, so a lone client sees no extra wait.
//!
//! Flush semantics are kept: `poll_flush` returns Ready only once every
//! buffered byte has been handed to the socket. Large writes bypass the
//! buffer (after it is drained, to keep order).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered before writes go to the socket without waiting for a flush.
const MAX_BUFFER: usize = 64 * 1024;

type Yield = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection whose small writes are gathered until a flush, and whose
/// flushes give the other ready tasks one turn first.
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    /// The pending yield of the current flush, if one was started.
    yielding: Option<Yield>,
    /// Whether the current flush has already yielded once.
    yielded: bool,
}

impl<T> Coalesce<T> {
    /// Wrap `inner`.
    pub fn new(inner: T) -> Self {
        Coalesce {
            inner,
            buf: Vec::new(),
            written: 0,
            yielding: None,
            yielded: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Write out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let this = &mut *self;
        if this.buf.len() + len > MAX_BUFFER {
            ready!(this.poll_drain(cx))?;
            if len > MAX_BUFFER {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.written < this.buf.len() {
            if !this.yielded {
                let y = this
                    .yielding
                    .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
                ready!(y.as_mut().poll(cx));
                this.yielding = None;
                this.yielded = true;
            }
            ready!(this.poll_drain(cx))?;
        }
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_reach_the_peer_in_order_after_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Coalesce::new(a);
        c.write_all(b"hello ").await.unwrap();
        c.write_all(b"world").await.unwrap();
        // Nothing is sent before the flush.
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut probe)).await;
        assert!(early.is_err(), "data went out before the flush");
        c.flush().await.unwrap();
        let mut got = vec![0u8; 11];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        // A large write goes through, after what was buffered before it.
        c.write_all(b"x").await.unwrap();
        let big = vec![7u8; MAX_BUFFER + 10];
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; 1 + big.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], b'x');
        assert!(got[1..].iter().all(|&v| v == 7));
        c.shutdown().await.unwrap();
        assert_eq!(b.read(&mut probe).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_flush_against_a_full_socket_completes_once_the_peer_reads() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut c = Coalesce::new(a);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        c.write_all(&data).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1000];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        c.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), data);
    }
}
