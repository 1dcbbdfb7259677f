//! Connections to the control plane: gRPC over TLS, accepting only a server that proves the
//! control plane's identity.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::ProxyConfig;

/// How long to wait for the control plane to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures reaching the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The connection or TLS handshake failed.
    #[error("connecting to the control plane at {addr}: {source}")]
    Connect {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The trust bundle file could not be used.
    #[error("trust bundle {path}: {reason}")]
    Bundle {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The call failed.
    #[error("control plane refused: {0}")]
    Status(#[from] tonic::Status),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// Opens a gRPC channel to the control plane with `tls`.
pub async fn channel(
    config: &ProxyConfig,
    tls: Arc<ClientConfig>,
) -> Result<Channel, ControlError> {
    let addr = config.control_addr;
    let connector = TlsConnector::from(tls);
    let endpoint = Endpoint::from_static("http://weft-control")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(weft_ca::tls::server_name(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|source| ControlError::Connect { addr, source })
}

/// Exponential backoff from 250 ms to 30 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        d
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}
