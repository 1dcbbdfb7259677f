//! Copying bytes both ways between two connections (opaque TCP, upgraded connections) without
//! holding a buffer per idle connection.
//!
//! `tokio::io::copy_bidirectional` gives every connection two 8 KiB heap buffers for its whole
//! life, which is most of what an idle forwarded connection costs. Here each read lands in a
//! buffer on the stack and is written out at once; only bytes the writer cannot take yet are
//! moved to the heap, and that memory is freed as soon as they are written. An idle connection
//! holds no buffer at all.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at most per read call.
const READ_CHUNK: usize = 8 * 1024;

/// One direction of the copy.
#[derive(Debug, Default)]
struct OneWay {
    /// Bytes read but not yet written, and how many of them have been written.
    backlog: Option<(Box<[u8]>, usize)>,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader reached its end.
    read_done: bool,
    /// The writer has been shut down after the reader's end.
    finished: bool,
    /// Bytes carried.
    total: u64,
}

impl OneWay {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.finished {
                return Poll::Ready(Ok(self.total));
            }
            // Whatever the writer could not take comes first.
            if let Some((buf, done)) = &mut self.backlog {
                while *done < buf.len() {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[*done..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *done += n;
                    self.unflushed = true;
                }
                self.backlog = None;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.finished = true;
                continue;
            }
            let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing more to read for now: push out what was written (TLS buffers it).
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let read = rb.filled();
            if read.is_empty() {
                self.read_done = true;
                continue;
            }
            self.total += read.len() as u64;
            let mut done = 0;
            while done < read.len() {
                match Pin::new(&mut *w).poll_write(cx, &read[done..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        done += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if done < read.len() {
                // The writer is full: keep the rest until it drains.
                self.backlog = Some((read[done..].into(), 0));
                return Poll::Pending;
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended; each writer is shut down
/// once its reader ends. Returns the bytes carried from `a` to `b` and from `b` to `a`.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = OneWay::default();
    let mut b_to_a = OneWay::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, a, b)?;
        let ba = b_to_a.poll_copy(cx, b, a)?;
        match (ab, ba) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn carries_both_ways_and_half_closes() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { splice(&mut proxy_a, &mut proxy_b).await });

        // More than the pipes hold at once, so writers fill up and the backlog is used.
        let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
        let (u, d) = (up.clone(), down.clone());
        let writer = tokio::spawn(async move {
            client.write_all(&u).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up, "client to server");
        server.write_all(&d).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), down, "server to client");
        assert_eq!(task.await.unwrap().unwrap(), (100_000, 70_000));
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let mut ab = OneWay::default();
        let mut ba = OneWay::default();
        poll_fn(|cx| {
            assert!(ab.poll_copy(cx, &mut a, &mut b).is_pending());
            assert!(ba.poll_copy(cx, &mut b, &mut a).is_pending());
            Poll::Ready(())
        })
        .await;
        assert!(ab.backlog.is_none() && ba.backlog.is_none());
    }
}
