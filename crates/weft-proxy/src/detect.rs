//! Protocol detection on a client's first bytes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else, or nothing before the timeout (server-speaks-first protocols).
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Enough for any sane request line; past this without a decision, it is not HTTP.
const MAX_PEEK: usize = 8 * 1024;

/// Reads until the first bytes decide the protocol, or `timeout` passes. Returns the bytes
/// read, which the caller must replay (empty, holding no allocation, when nothing came).
pub async fn detect(tcp: &mut TcpStream, timeout: Duration) -> std::io::Result<(Detected, Bytes)> {
    let (d, buf) = detect_into(tcp, timeout).await?;
    // An idle client sent nothing: do not keep the read buffer for the connection's life.
    Ok((d, if buf.is_empty() { Bytes::new() } else { buf }))
}

async fn detect_into(tcp: &mut TcpStream, timeout: Duration) -> std::io::Result<(Detected, Bytes)> {
    detect_from(tcp, BytesMut::with_capacity(1024), timeout).await
}

/// Like [`detect`], going on from bytes already read from `tcp` (which the result includes).
pub async fn detect_from(
    tcp: &mut TcpStream,
    mut buf: BytesMut,
    timeout: Duration,
) -> std::io::Result<(Detected, Bytes)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(d) = classify(&buf) {
            return Ok((d, buf.freeze()));
        }
        if buf.len() >= MAX_PEEK {
            return Ok((Detected::Opaque, buf.freeze()));
        }
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok((Detected::Opaque, buf.freeze())),
        }
    }
}

/// Who opened an inbound connection, told by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// A mesh peer: a TLS ClientHello offering one of the mesh's own ALPN protocols.
    MeshPeer,
    /// TLS meant for the application itself (no mesh ALPN), from a client outside the mesh.
    OtherTls,
    /// Anything else: plaintext, or nothing before the timeout.
    Plaintext,
}

/// The most a ClientHello may take before it is judged not to be a mesh peer's. Mesh peers'
/// are well under 2 KiB.
const MAX_HELLO: usize = 16 * 1024;

/// Reads until the first bytes tell a mesh peer from a client outside the mesh, or `timeout`
/// passes. Returns the bytes read, which the caller must replay. A ClientHello is parsed by
/// rustls itself, so one split over several segments is read whole.
pub async fn sniff_opener(
    tcp: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<(Opener, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sniffer = HelloSniffer::default();
    loop {
        if let Some(opener) = sniffer.step(&buf) {
            return Ok((opener, buf));
        }
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => {
                let opener = if buf.is_empty() {
                    Opener::Plaintext
                } else {
                    Opener::OtherTls
                };
                return Ok((opener, buf));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Tells who opened a connection from its first bytes alone: `None` while they are a
/// ClientHello still incomplete (more bytes would decide). [`sniff_opener`] decides the same
/// way as bytes arrive; this is the pure part, which the fuzz target (`tests/fuzz`) calls.
pub fn opener_of(prefix: &[u8]) -> Option<Opener> {
    HelloSniffer::default().step(prefix)
}

/// The ClientHello parser fed a growing buffer: it remembers how much of it rustls took.
#[derive(Default)]
struct HelloSniffer {
    hello: rustls::server::Acceptor,
    /// How many bytes of the buffer rustls has read.
    fed: usize,
}

impl HelloSniffer {
    /// Feeds what `buf` holds beyond what was fed before (`buf` only grows between calls);
    /// the opener once the bytes decide it.
    fn step(&mut self, buf: &[u8]) -> Option<Opener> {
        // A TLS record starts with the handshake content type.
        if buf.first().is_some_and(|b| *b != 0x16) {
            return Some(Opener::Plaintext);
        }
        if self.fed < buf.len() {
            let mut rest = &buf[self.fed..];
            if self.hello.read_tls(&mut rest).is_err() {
                return Some(Opener::OtherTls);
            }
            self.fed = buf.len() - rest.len();
            match self.hello.accept() {
                Ok(Some(accepted)) => {
                    let mesh = accepted.client_hello().alpn().is_some_and(|mut protocols| {
                        protocols.any(|p| p.starts_with(weft_ca::ALPN_MESH_PREFIX))
                    });
                    return Some(if mesh {
                        Opener::MeshPeer
                    } else {
                        Opener::OtherTls
                    });
                }
                Ok(None) => {}
                Err(_) => return Some(Opener::OtherTls),
            }
        }
        if buf.len() >= MAX_HELLO {
            return Some(Opener::OtherTls);
        }
        None
    }
}

/// Decides from a prefix, or `None` if more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // METHOD SP request-target SP HTTP/1.x CRLF
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > 16 {
        return Some(Detected::Opaque);
    }
    if method_len == buf.len() {
        return None;
    }
    if buf[method_len] != b' ' {
        return Some(Detected::Opaque);
    }
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.iter().any(|b| *b == b'\n' || *b == 0) {
            Some(Detected::Opaque)
        } else {
            None
        };
    };
    let line = &buf[..eol];
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Some(Detected::Http1)
    } else {
        Some(Detected::Opaque)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"POST /x?y HTTP/1.0\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GET / HT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"\x16\x03\x01\x02"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"HELLO world\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"PING\r\n"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn silent_client_is_opaque_after_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let (d, bytes) = detect(&mut server, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(d, Detected::Opaque);
        assert!(bytes.is_empty());
    }
}
