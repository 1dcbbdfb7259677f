//! The gRPC listener: TLS with the control plane's own mesh certificate; client certificates
//! optional (a proxy has none before its first Certify) but verified when presented, and
//! handed to the handlers as [`PeerInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use weft_api::v1::discovery_server::DiscoveryServer;
use weft_api::v1::identity_server::IdentityServer;
use weft_ca::tls::{ClientAuth, TlsCredentials, peer_identity};
use weft_ca::{ALPN_H2, CertificateAuthority, LeafKey};
use weft_core::Identity;

use crate::discovery::DiscoveryService;
use crate::identity::IdentityService;
use crate::{ControlError, State};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a gRPC connection.
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    /// The mesh identity the client proved, if it presented a certificate.
    pub(crate) identity: Option<Identity>,
    /// The client's address.
    pub(crate) remote: SocketAddr,
}

/// A TLS connection with what its handshake proved.
pub(crate) struct PeerConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
}

/// Issues the control plane's serving certificate from its own CA.
pub(crate) fn server_credentials(
    ca: &CertificateAuthority,
    own: &Identity,
) -> Result<Arc<TlsCredentials>, ControlError> {
    let key = LeafKey::generate().map_err(|e| rustls::Error::General(e.to_string()))?;
    let leaf = ca.issue_control_plane(
        &["localhost".to_string(), "weft-control".to_string()],
        key.key_pair(),
    )?;
    Ok(Arc::new(TlsCredentials::new(
        own.clone(),
        &leaf,
        key.private_key_der(),
        ca.trust_bundle(),
        &[ALPN_H2],
        ClientAuth::Optional,
    )?))
}

/// Serves Identity and Discovery until `shutdown`.
pub(crate) async fn serve_grpc(
    listener: TcpListener,
    tls: Arc<TlsCredentials>,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::channel::<io::Result<PeerConn>>(64);
    let acceptor = TlsAcceptor::from(tls.server_config());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Handshakes run apart from the accept loop, so a slow client blocks nobody.
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let identity = peer_identity(io.get_ref().1.peer_certificates());
                        let info = PeerInfo { identity, remote };
                        let _ = tx.send(Ok(PeerConn { io, info })).await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService(state.clone())))
        .add_service(DiscoveryServer::new(DiscoveryService(state)))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown.cancelled())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
