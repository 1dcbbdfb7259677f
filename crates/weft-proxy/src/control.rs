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
use weft_core::platform::error_chain;

/// How long to wait for the control plane to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures reaching the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The connection or TLS handshake failed.
    #[error("connecting to the control plane at {addr}: {}", error_chain(source))]
    Connect {
        /// The address.
        addr: crate::config::ControlAddr,
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

/// Opens a gRPC channel to the control plane with `tls`, connecting now.
pub async fn channel(
    config: &ProxyConfig,
    tls: Arc<ClientConfig>,
) -> Result<Channel, ControlError> {
    let addr = config.control_addr.clone();
    let (endpoint, connector) = endpoint(config, tls);
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ControlError::Connect { addr, source })
}

/// A gRPC channel to the control plane with `tls` that connects on first use and again
/// after the connection drops, shared by every call made on it.
pub fn lazy_channel(config: &ProxyConfig, tls: Arc<ClientConfig>) -> Channel {
    let (endpoint, connector) = endpoint(config, tls);
    endpoint.connect_with_connector_lazy(connector)
}

/// Opens TCP, then TLS, to the control plane; tonic calls it for every new connection.
#[derive(Clone)]
struct Connector {
    addr: crate::config::ControlAddr,
    tls: TlsConnector,
    bundle: std::path::PathBuf,
    trust_domain: String,
}

type ControlIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<http::Uri> for Connector {
    type Response = ControlIo;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ControlIo, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = connect(&this.addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = this
                .tls
                .connect(weft_ca::tls::server_name(), tcp)
                .await
                .map_err(|e| explain_tls_failure(e, &this.bundle, &this.trust_domain))?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Connects to the first address of `addr` that answers, looking a name up again each time.
async fn connect(addr: &crate::config::ControlAddr) -> std::io::Result<TcpStream> {
    connect_first(addr.resolve().await?, addr).await
}

/// Connects to the first of `addrs` that answers; `what` names them in the error when none
/// does.
pub(crate) async fn connect_first<I>(
    addrs: I,
    what: &(dyn std::fmt::Display + Sync),
) -> std::io::Result<TcpStream>
where
    I: IntoIterator<Item = std::net::SocketAddr>,
    I::IntoIter: Send,
{
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{what} has no address"))))
}

fn endpoint(config: &ProxyConfig, tls: Arc<ClientConfig>) -> (Endpoint, Connector) {
    let endpoint = Endpoint::from_static("http://weft-control")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let connector = Connector {
        addr: config.control_addr.clone(),
        tls: TlsConnector::from(tls),
        bundle: config.bundle_source(),
        trust_domain: config.trust_domain.clone(),
    };
    (endpoint, connector)
}

/// The channel discovery calls share, rebuilt when the proxy's certificate changes so new
/// calls present the current one. Calls already open keep the connection they started on.
#[derive(Debug, Default)]
pub struct SharedChannel {
    current: std::sync::Mutex<Option<(Arc<weft_ca::TlsCredentials>, Channel)>>,
}

impl SharedChannel {
    /// The channel for `creds`.
    pub fn get(&self, config: &ProxyConfig, creds: &Arc<weft_ca::TlsCredentials>) -> Channel {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, ch)) = current.as_ref()
            && Arc::ptr_eq(c, creds)
        {
            return ch.clone();
        }
        let control = weft_core::Identity::control_plane(creds.identity().trust_domain());
        let ch = lazy_channel(config, creds.client_config(&control, weft_ca::ALPN_H2));
        *current = Some((creds.clone(), ch.clone()));
        ch
    }
}

/// Turns a failed handshake with the control plane into an error that says which setting
/// is probably wrong: a trust bundle or trust domain of another mesh is the usual cause, and
/// rustls alone reports it as a bare certificate error.
fn explain_tls_failure(
    e: std::io::Error,
    bundle: &std::path::Path,
    trust_domain: &str,
) -> std::io::Error {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let Some(err) = e.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return e;
    };
    let hint = match err {
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => format!(
            "the control plane's certificate is not signed by any root in the trust bundle {}: \
             the bundle belongs to another mesh or CA",
            bundle.display()
        ),
        Error::InvalidCertificate(Cert::Other(inner)) => format!(
            "the control plane proved an unexpected identity ({inner}): this proxy's trust \
             domain is {trust_domain:?}; it must be the mesh's"
        ),
        Error::AlertReceived(Alert::UnknownCA | Alert::DecryptError) => {
            "the control plane does not trust this proxy's certificate: it was issued by \
             another CA (another mesh, or before the mesh's root changed)"
                .to_string()
        }
        _ => return e,
    };
    std::io::Error::new(e.kind(), format!("{hint} ({err})"))
}

/// Exponential backoff from 250 ms to 30 s, each delay drawn at random from the upper half of
/// its step, so proxies that lost the control plane together do not return together.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

/// A random fraction in [0, 1), for jitter. Falls back to 0.5 if the system has no randomness
/// to give, which only makes the jitter predictable.
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// The next delay: between half and all of the current step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        step.mul_f64(0.5 + 0.5 * jitter())
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let mut b = Backoff::default();
        let mut step = Duration::from_millis(250);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            seen.insert(d);
            step = (step * 2).min(Duration::from_secs(30));
        }
        // Jitter: the capped steps did not all come out the same.
        assert!(seen.len() > 6, "{seen:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250));
    }
}
