//! Calls a proxy's inbound listener directly, as a hostile workload holding some mesh
//! certificate would: mutual TLS with a leaf the test signs with the mesh's own intermediate,
//! the mesh's HTTP/2 ALPN, one request. Nothing goes through the caller's own proxy, so only
//! the callee's policy decides.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::WAIT;
use crate::certs::{self, ClientCert};

/// A leaf for `spiffe_id`, valid for the next hour, from the mesh intermediate in `data_dir`.
pub fn mesh_leaf(data_dir: &Path, spiffe_id: &str) -> ClientCert {
    let now = SystemTime::now();
    mesh_leaf_between(
        data_dir,
        spiffe_id,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

/// A leaf for `spiffe_id`, valid from `from` to `to`, from the mesh intermediate in
/// `data_dir`.
pub fn mesh_leaf_between(
    data_dir: &Path,
    spiffe_id: &str,
    from: SystemTime,
    to: SystemTime,
) -> ClientCert {
    let (issuer, inter) = certs::mesh_intermediate(data_dir);
    certs::leaf(&issuer, &[inter], spiffe_id, from, to)
}

/// Opens TLS with `cert` and the mesh's HTTP/2 ALPN, and sends one HTTP/2 request: the status,
/// or the error text (a refused handshake, or a connection closed before any answer). Bounded
/// by [`WAIT`].
pub async fn h2_request(addr: SocketAddr, cert: Option<ClientCert>) -> Result<StatusCode, String> {
    let call = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector =
            tokio_rustls::TlsConnector::from(certs::client_config(cert, weft_ca::ALPN_MESH_H2));
        let tls = connector
            .connect(weft_ca::tls::server_name(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        let rsp = send
            .send_request(
                Request::get("http://api.test/")
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| format!("request: {e}"))?;
        Ok(rsp.status())
    };
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

/// Asserts that a direct call was refused before any request was served: no status at all (a
/// 403 would mean the caller held an HTTP connection to the workload).
pub fn assert_closed(what: &str, r: Result<StatusCode, String>) {
    assert!(
        r.is_err(),
        "{what}: served ({r:?}); the connection must be closed before any request"
    );
}
