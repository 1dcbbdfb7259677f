//! Mutual TLS between proxies on rustls's unbuffered API: a stream that owns its buffers and
//! holds none while its connection is idle.
//!
//! rustls's buffered connection keeps a 4 KiB buffer for the records it reads for as long as
//! the connection lives, which was a third of what an idle mesh connection cost. Here the
//! stream reads records into a buffer of its own and encrypts records to send straight into
//! another; a read that finds the socket empty hands both, if they hold nothing, to the
//! thread, whose next connection to read or write takes them. An idle connection keeps no
//! buffer, and a worker thread one of each.
//! rustls still does all of TLS: the handshake, verification, record protection, key updates,
//! alerts and close_notify. This module only moves bytes between it and the socket.
//!
//! Semantics follow the buffered stream's: a write is accepted once encrypted (the socket may
//! take it later: flush to be sure), the peer's close_notify reads as end of stream, and a
//! connection that ends without one reads as an `UnexpectedEof` error. An error from rustls is
//! an `io::Error` of kind `InvalidData` wrapping the `rustls::Error`, so callers can name it.

use std::cell::Cell;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one read from the socket asks room for: a whole TLS 1.3 record (header, 2^14 bytes of
/// plaintext and the most a record may grow by).
const READ_SIZE: usize = 5 + (1 << 14) + 256;

/// The most bytes of records the stream holds unprocessed: a handshake message may span
/// records, and rustls joins messages up to 64 KiB.
const MAX_INCOMING: usize = 0x1_0000 + READ_SIZE;

/// The most plaintext one write encrypts; a larger write is taken in part.
const MAX_WRITE: usize = 0x1_0000;

thread_local! {
    /// The read buffer last freed on this thread, taken by the next connection that reads:
    /// busy connections trade one buffer instead of allocating one per read, and idle ones
    /// hold none.
    static SPARE_READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    /// The same for the buffer records are encrypted into.
    static SPARE_WRITE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A TLS connection this proxy initiated.
pub type ClientTls<IO> = TlsStream<IO, UnbufferedClientConnection>;

/// A TLS connection this proxy accepted.
pub type ServerTls<IO> = TlsStream<IO, UnbufferedServerConnection>;

/// Either side of rustls's unbuffered connection.
pub trait Side: Unpin {
    /// The side's connection data.
    type Data;

    /// Processes the records in `incoming` up to the next state (rustls's
    /// `process_tls_records`).
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// A TLS stream over `IO` whose buffers exist only while bytes are in flight.
pub struct TlsStream<IO, C> {
    io: IO,
    conn: C,
    /// Bytes read from the peer that rustls has not consumed yet (a partial record, or a
    /// handshake message still being joined).
    incoming: BytesMut,
    /// Plaintext decrypted and not yet read: the rest of a record larger than the reader's
    /// buffer, or data that arrived with the end of the handshake.
    plaintext: BytesMut,
    /// Records encrypted and not yet taken by the socket, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The socket reached end of stream.
    read_eof: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// This side queued its close_notify.
    close_queued: bool,
}

/// Where one call into rustls left the connection.
enum Step {
    /// rustls made progress (decrypted plaintext, queued records): call again.
    Again,
    /// The handshake waits for the peer's next records.
    Blocked,
    /// The connection is open for traffic, and every complete record received is processed.
    Open,
    /// Both sides have sent close_notify.
    Closed,
}

/// Opens TLS as the client over `io`.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    io: IO,
) -> io::Result<ClientTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    TlsStream::handshake(io, conn).await
}

/// Accepts TLS as the server over `io`.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<ServerTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    TlsStream::handshake(io, conn).await
}

/// A rustls error as an I/O error that still carries it.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Writes records into `out` after what it holds, growing it as `write` says it needs.
/// `write` gets the room for the records and, past it, `scratch` bytes of its own.
fn append<E>(
    out: &mut Vec<u8>,
    estimate: usize,
    scratch: usize,
    mut write: impl FnMut(&mut [u8], &mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    if out.capacity() == 0 {
        // The thread's spare, if it has one.
        *out = SPARE_WRITE.take();
    }
    let start = out.len();
    let mut room = estimate;
    loop {
        out.resize(start + room + scratch, 0);
        let (records, scratch) = out.split_at_mut(start + room);
        match write(&mut records[start..], scratch) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match needs(&e) {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
}

/// Room to encrypt `len` bytes of plaintext in one go: per record, a header, the content type
/// and the AEAD tag.
fn sealed_len(len: usize) -> usize {
    len + (len / (1 << 14) + 1) * (5 + 1 + 16)
}

/// Encrypts the first `len` bytes of `bufs` into `out` after what it holds. Plaintext in
/// several slices is gathered first, into the same buffer past the room for the records, so
/// that it goes out as one run of records rather than one per slice.
fn seal(
    out: &mut Vec<u8>,
    bufs: &[io::IoSlice<'_>],
    len: usize,
    mut encrypt: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), EncryptError> {
    if let Some(first) = bufs.first()
        && first.len() >= len
    {
        let data = &first[..len];
        return append(
            out,
            sealed_len(len),
            0,
            |o, _| encrypt(data, o),
            encrypt_needs,
        );
    }
    let gather = |records: &mut [u8], plain: &mut [u8]| {
        let mut at = 0;
        for buf in bufs {
            let n = buf.len().min(len - at);
            plain[at..at + n].copy_from_slice(&buf[..n]);
            at += n;
        }
        encrypt(plain, records)
    };
    append(out, sealed_len(len), len, gather, encrypt_needs)
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

impl<IO, C> TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    async fn handshake(io: IO, conn: C) -> io::Result<Self> {
        let mut stream = Self {
            io,
            conn,
            incoming: BytesMut::new(),
            plaintext: BytesMut::new(),
            outgoing: Vec::new(),
            sent: 0,
            read_eof: false,
            peer_closed: false,
            close_queued: false,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The socket and the rustls connection (the peer's certificates, the protocol agreed).
    pub fn get_ref(&self) -> (&IO, &C) {
        (&self.io, &self.conn)
    }

    /// Bytes of buffer this stream holds (allocated, not only used): none once idle.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // What the handshake queued goes out before waiting on the peer.
            ready!(self.poll_send(cx))?;
            match self.process(None, None, false) {
                Ok(Step::Again) => {}
                Ok(Step::Open) => {
                    if self.sent == self.outgoing.len() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Ok(Step::Blocked) => {
                    if self.read_eof {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection during the TLS handshake",
                        )));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        self.read_eof = true;
                    }
                }
                Ok(Step::Closed) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the TLS connection closed during its handshake",
                    )));
                }
                Err(e) => {
                    self.send_alert(cx);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// After an error, sends the alert rustls queued for the peer if the socket takes it now.
    fn send_alert(&mut self, cx: &mut Context<'_>) {
        // An alert is one record: encoding it and marking it sent take two calls.
        for _ in 0..4 {
            if !matches!(self.process(None, None, false), Ok(Step::Again)) {
                break;
            }
        }
        let _ = self.poll_send(cx);
    }

    /// One call into rustls with the records received so far. Plaintext goes to `dst` and
    /// what does not fit to `self.plaintext`; `write` is encrypted and, with `close`, a
    /// close_notify queued once the connection is open.
    fn process(
        &mut self,
        mut dst: Option<&mut ReadBuf<'_>>,
        write: Option<(&[io::IoSlice<'_>], usize)>,
        close: bool,
    ) -> io::Result<Step> {
        let Self {
            conn,
            incoming,
            plaintext,
            outgoing,
            peer_closed,
            ..
        } = self;
        let status = conn.process(&mut incoming[..]);
        let mut discard = status.discard;
        let step = match status.state {
            Err(e) => Err(tls_error(e)),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut step = Ok(Step::Again);
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            let mut data = record.payload;
                            if let Some(dst) = dst.as_deref_mut()
                                && plaintext.is_empty()
                            {
                                let n = data.len().min(dst.remaining());
                                dst.put_slice(&data[..n]);
                                data = &data[n..];
                            }
                            plaintext.extend_from_slice(data);
                        }
                        Err(e) => {
                            step = Err(tls_error(e));
                            break;
                        }
                    }
                }
                step
            }
            Ok(ConnectionState::EncodeTlsData(mut record)) => append(
                outgoing,
                512,
                0,
                |out, _| record.encode(out),
                |e| match e {
                    EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                        Some(*required_size)
                    }
                    _ => None,
                },
            )
            .map(|()| Step::Again)
            .map_err(io::Error::other),
            Ok(ConnectionState::TransmitTlsData(records)) => {
                // The records are in `outgoing`, which goes to the socket before anything
                // encrypted after them.
                records.done();
                Ok(Step::Again)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::Blocked),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                let mut sealed = Ok(());
                if let Some((bufs, len)) = write {
                    sealed = seal(outgoing, bufs, len, |data, out| traffic.encrypt(data, out));
                }
                if close && sealed.is_ok() {
                    sealed = append(
                        outgoing,
                        sealed_len(2),
                        0,
                        |out, _| traffic.queue_close_notify(out),
                        encrypt_needs,
                    );
                }
                sealed.map(|()| Step::Open).map_err(io::Error::other)
            }
            Ok(ConnectionState::PeerClosed) => {
                *peer_closed = true;
                Ok(Step::Again)
            }
            Ok(ConnectionState::Closed) => Ok(Step::Closed),
            Ok(state) => Err(io::Error::other(format!(
                "unexpected TLS state {state:?} (early data is not accepted)"
            ))),
        };
        incoming.advance(discard);
        step
    }

    /// Reads more records from the socket: the bytes read, 0 at end of stream. A read that
    /// finds nothing frees an empty buffer, so an idle connection holds none.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS message larger than 64 KiB",
            )));
        }
        if self.incoming.capacity() == 0
            && let Some(spare) = SPARE_READ.take()
        {
            self.incoming = spare;
        }
        self.incoming.reserve(READ_SIZE);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.incoming) {
            Poll::Pending => {
                // Nothing to read: the buffers this connection holds empty go to the thread.
                if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                    SPARE_READ.set(Some(std::mem::take(&mut self.incoming)));
                }
                if self.outgoing.is_empty() && self.outgoing.capacity() > 0 {
                    SPARE_WRITE.set(std::mem::take(&mut self.outgoing));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    /// Writes queued records to the socket until it has taken them all.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Kept for the next write until a read finds the connection idle.
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO, C> AsyncRead for TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plaintext.is_empty() {
            let n = this.plaintext.len().min(buf.remaining());
            buf.put_slice(&this.plaintext[..n]);
            this.plaintext.advance(n);
            if this.plaintext.is_empty() {
                this.plaintext = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            // Records rustls queued on its own (session tickets, key updates) go out when the
            // socket takes them; reading does not wait for that.
            if this.sent < this.outgoing.len()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            match this.process(Some(buf), None, false)? {
                Step::Again => {
                    if buf.remaining() == 0 || !this.plaintext.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Step::Open | Step::Blocked => {
                    if buf.filled().len() > before || this.peer_closed {
                        return Poll::Ready(Ok(()));
                    }
                    if this.read_eof {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection without close_notify",
                        )));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        this.read_eof = true;
                    }
                }
                Step::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<IO, C> AsyncWrite for TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = bufs.iter().map(|b| b.len()).sum::<usize>().min(MAX_WRITE);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        // Records already encrypted go first; a writer the socket does not keep up with waits.
        ready!(this.poll_send(cx))?;
        loop {
            match this.process(None, Some((bufs, n)), false)? {
                Step::Open => break,
                Step::Again => {}
                Step::Blocked => {
                    return Poll::Ready(Err(io::Error::other("the TLS handshake is not done")));
                }
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        // The records are this stream's to send now: what the socket does not take at once
        // goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            // Until the close_notify is queued; a connection closed already, or broken, is
            // shut all the same.
            while let Ok(Step::Again) = this.process(None, None, true) {}
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: fmt::Debug, C> fmt::Debug for TlsStream<IO, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("io", &self.io)
            .field("incoming", &self.incoming.len())
            .field("plaintext", &self.plaintext.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use weft_ca::tls::{ClientAuth, TlsCredentials};
    use weft_ca::{ALPN_MESH_H2, CertificateAuthority, LeafKey};
    use weft_core::{Identity, TrustDomain};

    use super::*;

    struct Mesh {
        client: TlsCredentials,
        server: TlsCredentials,
    }

    fn credentials(ca: &CertificateAuthority, name: &str) -> TlsCredentials {
        signed_by(ca, ca, name)
    }

    /// Credentials with a leaf from `signer` that trust `trusting`'s roots.
    fn signed_by(
        signer: &CertificateAuthority,
        trusting: &CertificateAuthority,
        name: &str,
    ) -> TlsCredentials {
        let td = TrustDomain::new("weft.test").unwrap();
        let id = Identity::new(td, "demo", name).unwrap();
        let key = LeafKey::generate().unwrap();
        let leaf = signer.sign_csr(&key.csr(&id).unwrap(), &id).unwrap();
        TlsCredentials::new(
            id,
            &leaf,
            key.private_key_der(),
            trusting.trust_bundle(),
            &[ALPN_MESH_H2],
            ClientAuth::Required,
        )
        .unwrap()
    }

    fn ca() -> CertificateAuthority {
        let td = TrustDomain::new("weft.test").unwrap();
        CertificateAuthority::generate_ephemeral(&td, Duration::from_secs(3600)).unwrap()
    }

    fn mesh() -> Mesh {
        mesh_of(&ca())
    }

    fn mesh_of(ca: &CertificateAuthority) -> Mesh {
        Mesh {
            client: credentials(ca, "web"),
            server: credentials(ca, "api"),
        }
    }

    impl Mesh {
        fn client_config(&self) -> Arc<ClientConfig> {
            self.client
                .client_config(self.server.identity(), ALPN_MESH_H2)
        }
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// A payload whose bytes say where they are, so a lost or reordered record shows.
    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[tokio::test]
    async fn carries_data_both_ways_and_holds_no_buffer_once_idle() {
        let mesh = mesh();
        let (c, s) = tcp_pair().await;
        let (client, server) = tokio::join!(
            connect(mesh.client_config(), weft_ca::tls::server_name(), c),
            accept(mesh.server.server_config(), s),
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert_eq!(server.get_ref().1.alpn_protocol(), Some(ALPN_MESH_H2));
        let peer = weft_ca::tls::peer_identity(server.get_ref().1.peer_certificates());
        assert_eq!(peer.as_ref(), Some(mesh.client.identity()));

        // Both sides write more than the sockets hold before either reads, so writes wait
        // on the socket and records are split across reads.
        let up = payload(3 << 20, 0x5a);
        let down = payload((1 << 20) + 17, 0xa5);
        let (sent_up, sent_down) = (up.clone(), down.clone());
        let writer = tokio::spawn(async move {
            client.write_all(&sent_up).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0; sent_down.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == sent_down, "the server's bytes arrived changed");
            client
        });
        server.write_all(&down).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0; up.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == up, "the client's bytes arrived changed");
        let mut client = writer.await.unwrap();

        // A small exchange in three slices (one record), then both sides wait for more: no
        // buffer is held.
        let parts = [
            io::IoSlice::new(b"pi"),
            io::IoSlice::new(b""),
            io::IoSlice::new(b"ng"),
        ];
        assert_eq!(client.write_vectored(&parts).await.unwrap(), 4);
        client.flush().await.unwrap();
        let mut four = [0; 4];
        server.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        let mut one = [0; 1];
        for side in [
            &mut client as &mut (dyn AsyncRead + Unpin + Send),
            &mut server,
        ] {
            let idle = tokio::time::timeout(Duration::from_millis(20), side.read(&mut one)).await;
            assert!(idle.is_err(), "nothing was sent, so nothing can be read");
        }
        assert_eq!(client.buffered_capacity(), 0);
        assert_eq!(server.buffered_capacity(), 0);

        // close_notify ends the stream cleanly in each direction.
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut one).await.unwrap(), 0);
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut one).await.unwrap(), 0);
    }

    /// A client proxy that connected once resumes its next connection from a ticket. The
    /// server stores no session (its config cannot cache one), so the ticket alone carries it,
    /// and the resumed connection still names the client, which inbound policy needs.
    #[tokio::test]
    async fn a_second_connection_resumes_from_a_ticket_and_still_names_the_client() {
        let mesh = mesh();
        let server_config = mesh.server.server_config();
        assert!(!server_config.session_storage.can_cache());
        let client_config = mesh.client_config();
        for want in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let (c, s) = tcp_pair().await;
            let (client, server) = tokio::join!(
                connect(client_config.clone(), weft_ca::tls::server_name(), c),
                accept(server_config.clone(), s),
            );
            let (client, server) = (client.unwrap(), server.unwrap());
            assert_eq!(server.get_ref().1.handshake_kind(), Some(want));
            assert_eq!(client.get_ref().1.handshake_kind(), Some(want));
            let peer = weft_ca::tls::peer_identity(server.get_ref().1.peer_certificates());
            assert_eq!(peer.as_ref(), Some(mesh.client.identity()), "{want:?}");
            // The client reads the server's tickets with the echo.
            echo(client, server, b"tickets").await;
        }
    }

    /// Sends `data` from `client` to `server`, which echoes it to its end; the client closes
    /// its side first, so both half-closes are crossed.
    async fn echo<C, S>(mut client: C, mut server: S, data: &[u8])
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            server.shutdown().await.unwrap();
        });
        client.write_all(data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert!(back == data, "the echo came back changed");
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn interoperates_with_the_buffered_streams() {
        let mesh = mesh();
        let data = payload(200_000, 1);

        // This client, tokio-rustls's server.
        let (c, s) = tcp_pair().await;
        let acceptor = tokio_rustls::TlsAcceptor::from(mesh.server.server_config());
        let (client, server) = tokio::join!(
            connect(mesh.client_config(), weft_ca::tls::server_name(), c),
            acceptor.accept(s),
        );
        echo(client.unwrap(), server.unwrap(), &data).await;

        // tokio-rustls's client, this server.
        let (c, s) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(mesh.client_config());
        let (client, server) = tokio::join!(
            connector.connect(weft_ca::tls::server_name(), c),
            accept(mesh.server.server_config(), s),
        );
        echo(client.unwrap(), server.unwrap(), &data).await;
    }

    #[tokio::test]
    async fn a_certificate_from_another_authority_fails_with_the_rustls_error() {
        let authority = ca();
        let mesh = mesh_of(&authority);
        // Trusts the mesh's roots, holds a certificate the mesh did not issue.
        let stranger = signed_by(&ca(), &authority, "web");
        let (c, s) = tcp_pair().await;
        let config = stranger.client_config(mesh.server.identity(), ALPN_MESH_H2);
        let (client, server) = tokio::join!(
            async {
                // TLS 1.3: the client finishes first and learns of the refusal on reading.
                let mut tls = connect(config, weft_ca::tls::server_name(), c).await?;
                tls.read(&mut [0; 1]).await
            },
            accept(mesh.server.server_config(), s),
        );
        let server = server.unwrap_err();
        let reason = server
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(
            matches!(
                reason,
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                ))
            ),
            "{server:?}"
        );
        // The server's alert reached the client.
        let client = client.unwrap_err();
        assert!(
            matches!(
                client
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::AlertReceived(_))
            ),
            "{client:?}"
        );
    }

    #[tokio::test]
    async fn an_end_without_close_notify_is_an_error() {
        let mesh = mesh();
        let (c, s) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(mesh.client_config());
        let (client, server) = tokio::join!(
            connector.connect(weft_ca::tls::server_name(), c),
            accept(mesh.server.server_config(), s),
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.write_all(b"half").await.unwrap();
        client.flush().await.unwrap();
        // The client's socket ends with a FIN, no close_notify before it.
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let mut got = Vec::new();
        let err = server.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"half");

        // And during the handshake.
        let (c, s) = tcp_pair().await;
        let (_, server) = tokio::join!(
            async move {
                let mut c = c;
                c.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
            },
            accept(mesh.server.server_config(), s),
        );
        assert_eq!(server.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_endless_handshake_message_is_refused_not_buffered() {
        let mesh = mesh();
        let (mut c, s) = tcp_pair().await;
        // A ClientHello announcing 16 MiB, then full handshake records of filler. rustls refuses
        // a handshake message over 64 KiB as soon as it reads the length, before the stream's
        // own bound (`MAX_INCOMING`, a backstop for what rustls asks it to keep) is reached;
        // either way the server must fail the handshake instead of reading on.
        let flood = async move {
            let mut record = vec![22, 3, 1, 0x40, 0x00];
            record.extend_from_slice(&[1, 0xff, 0xff, 0xff]);
            record.resize(5 + 0x4000, 0);
            let mut next = vec![22, 3, 3, 0x40, 0x00];
            next.resize(5 + 0x4000, 0);
            let _ = c.write_all(&record).await;
            for _ in 0..64 {
                if c.write_all(&next).await.is_err() {
                    break;
                }
            }
            c
        };
        let refused = async {
            tokio::time::timeout(
                Duration::from_secs(10),
                accept(mesh.server.server_config(), s),
            )
            .await
            .expect("the server must refuse, not wait for more")
        };
        let (_c, server) = tokio::join!(flood, refused);
        let err = server.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err:?}");
    }
}
