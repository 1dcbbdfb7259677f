//! Opening connections to endpoints: TCP, then mutual TLS when the endpoint is meshed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::discovery::EndpointView;
use crate::io::{CountingIo, PeerIo};
use crate::metrics::{Direction, Metrics, TcpLabels};
use crate::runtime::CredentialsWatch;

/// Why a connection to an endpoint failed. Nothing was sent, so the request may go elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable).
    #[error("connecting to {addr}: {source}")]
    Tcp {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint did not accept in time.
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    /// The TLS handshake failed: an unknown CA, an expired certificate, or the wrong identity.
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// This proxy has no certificate yet.
    #[error("no mesh certificate yet")]
    NoCertificate,
}

/// Opens connections to endpoints: what it needs of the proxy, and no more. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connector {
    credentials: CredentialsWatch,
    metrics: Metrics,
    timeout: Duration,
}

impl Connector {
    /// Connects with the current certificate, counting bytes in `metrics`, giving up on TCP
    /// and on TLS each after `timeout`.
    pub fn new(credentials: CredentialsWatch, metrics: Metrics, timeout: Duration) -> Self {
        Self {
            credentials,
            metrics,
            timeout,
        }
    }

    /// How long a connection may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connects to `ep`, with TLS and `alpn` when it is meshed.
    pub async fn connect(
        &self,
        ep: &EndpointView,
        alpn: &'static [u8],
    ) -> Result<PeerIo, ConnectError> {
        let addr = ep.address;
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr))?
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let labels = TcpLabels {
            direction: Direction::outbound,
            peer: ep
                .identity
                .as_ref()
                .map_or_else(|| "-".to_string(), |i| i.spiffe_id()),
        };
        let read = self.metrics.tcp_read.get_or_create(&labels).clone();
        let written = self.metrics.tcp_write.get_or_create(&labels).clone();
        let Some(identity) = &ep.identity else {
            return Ok(PeerIo::Plain(CountingIo::new(tcp, read, written)));
        };
        let creds = self
            .credentials
            .borrow()
            .clone()
            .ok_or(ConnectError::NoCertificate)?;
        let tls = tokio::time::timeout(
            self.timeout,
            crate::tls::connect(
                creds.client_config(identity, alpn),
                weft_ca::tls::server_name(),
                tcp,
            ),
        )
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|source| ConnectError::Tls { addr, source })?;
        Ok(PeerIo::Client(Box::new(CountingIo::new(
            tls, read, written,
        ))))
    }
}
