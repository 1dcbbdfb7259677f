//! The application's health probes, run by the proxy for the kubelet.
//!
//! Under interception every connection to the pod goes through the proxy's inbound port,
//! which admits mesh peers only, so the kubelet's own probes of the application would be
//! refused. The injector rewrites each HTTP, HTTPS, TCP and gRPC probe to
//! `GET /app-health/<name>` on the proxy's probe port (which interception skips; the admin
//! listener serves the same paths) and hands the original probes over in
//! `WEFT_PROXY_APP_PROBES`: a JSON object from `<name>` (`<container>/<live|ready|startup>`) to
//! one of
//!
//! - `{"port": 8080, "path": "/healthz", "headers": [{"name": "X", "value": "y"}]}`, an HTTP
//!   probe, with `"scheme": "https"` for HTTPS (the certificate is not checked, as the kubelet
//!   does not check it);
//! - `{"port": 8080}`, a TCP probe;
//! - `{"port": 9090, "grpc_service": ""}`, a probe of the standard gRPC health service
//!   (`grpc.health.v1.Health/Check`) for that service name (empty: the whole server).
//!
//! The proxy runs the original probe against the application on loopback (its own traffic is
//! never intercepted) and answers 200 when it passes, as the kubelet would judge it (an HTTP
//! status from 200 to 399, a TCP connection, or `SERVING`), else the application's HTTP status,
//! or 503 when it cannot be reached or is not serving.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

/// The path prefix of rewritten probes on the probe and admin listeners.
pub const PREFIX: &str = "/app-health/";

/// At most this many probes may be handed over.
const MAX_PROBES: usize = 64;

/// How long one probe may take; the kubelet's own timeout is usually shorter.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One original probe.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppProbe {
    /// The application's port.
    pub port: u16,
    /// The HTTP path; `None` for a TCP probe.
    #[serde(default)]
    pub path: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: Vec<ProbeHeader>,
    /// HTTP or HTTPS, for an HTTP probe; HTTP when absent.
    #[serde(default)]
    pub scheme: Option<Scheme>,
    /// For a gRPC probe: the service name asked about; empty for the whole server.
    #[serde(default)]
    pub grpc_service: Option<String>,
}

/// The scheme of an HTTP probe.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// A header of an HTTP probe.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The probes, by name.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// Reads and checks `WEFT_PROXY_APP_PROBES`.
pub fn parse(json: &str) -> Result<AppProbes, String> {
    let probes: AppProbes = serde_json::from_str(json).map_err(|e| format!("app probes: {e}"))?;
    if probes.len() > MAX_PROBES {
        return Err(format!("app probes: more than {MAX_PROBES}"));
    }
    for (name, p) in &probes {
        let bad = |why: &str| Err(format!("app probe {name:?}: {why}"));
        if name.is_empty()
            || name.len() > 253
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b'_'))
        {
            return bad("the name must be letters, digits, '-', '.', '_' and '/'");
        }
        if p.port == 0 {
            return bad("port 0");
        }
        if let Some(path) = &p.path
            && (!path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err())
        {
            return bad("the path must be an absolute path");
        }
        if p.path.is_none() && (p.scheme.is_some() || !p.headers.is_empty()) {
            return bad("a scheme or headers without a path");
        }
        if let Some(service) = &p.grpc_service
            && (p.path.is_some()
                || service.len() > 253
                || !service.bytes().all(|b| b.is_ascii_graphic()))
        {
            return bad("a gRPC probe takes a service name of printable characters and no path");
        }
        for h in &p.headers {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err()
                || http::HeaderValue::from_str(&h.value).is_err()
            {
                return bad("a header that is not valid HTTP");
            }
        }
    }
    Ok(probes)
}

/// Runs `probe` against the application on loopback: the status to answer, and a word on it.
pub async fn run(probe: &AppProbe) -> (StatusCode, String) {
    match tokio::time::timeout(PROBE_TIMEOUT, attempt(probe)).await {
        Ok(Ok(Outcome::Http(status))) if (200..400).contains(&status.as_u16()) => {
            (StatusCode::OK, format!("ok ({status})\n"))
        }
        Ok(Ok(Outcome::Http(status))) => (status, format!("the application answered {status}\n")),
        Ok(Ok(Outcome::Grpc(1))) => (StatusCode::OK, "ok (SERVING)\n".into()),
        Ok(Ok(Outcome::Grpc(status))) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the application's gRPC health is {}\n",
                grpc_status_name(status)
            ),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the application cannot be reached: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the application did not answer in time\n".into(),
        ),
    }
}

/// What the application said.
enum Outcome {
    Http(StatusCode),
    /// A `grpc.health.v1.HealthCheckResponse.ServingStatus`.
    Grpc(i32),
}

fn grpc_status_name(status: i32) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => format!("status {n}"),
    }
}

async fn attempt(probe: &AppProbe) -> Result<Outcome, String> {
    if let Some(service) = &probe.grpc_service {
        return grpc_check(probe.port, service).await.map(Outcome::Grpc);
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", probe.port))
        .await
        .map_err(|e| e.to_string())?;
    let Some(path) = &probe.path else {
        return Ok(Outcome::Http(StatusCode::OK));
    };
    let mut req = http::Request::get(path.as_str())
        .header(http::header::HOST, format!("127.0.0.1:{}", probe.port))
        .header(http::header::USER_AGENT, "weft-proxy/app-probe")
        .header(http::header::CONNECTION, "close");
    for h in &probe.headers {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let status = if probe.scheme == Some(Scheme::Https) {
        let loopback =
            rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = tokio_rustls::TlsConnector::from(any_certificate()?)
            .connect(loopback, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(tls, req).await?
    } else {
        send(tcp, req).await?
    };
    Ok(Outcome::Http(status))
}

async fn send<S>(
    io: S,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(rsp.status())
}

/// `grpc.health.v1.Health/Check` over plaintext HTTP/2, as the kubelet's gRPC probe asks it.
async fn grpc_check(port: u16, service: &str) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let rsp = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|e| format!("gRPC {:?}: {}", e.code(), e.message()))?;
    Ok(rsp.into_inner().status)
}

/// A TLS client that accepts any server certificate, as the kubelet's HTTPS probes do (an
/// application's serving certificate rarely names 127.0.0.1). The handshake's signatures are
/// still checked.
fn any_certificate() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_checked_when_read() {
        let ok = parse(
            r#"{"web/live": {"port": 8080, "path": "/healthz?full=1", "headers": [{"name": "X-Probe", "value": "1"}]},
                "web/ready": {"port": 8080}}"#,
        )
        .unwrap();
        assert_eq!(ok["web/ready"].path, None);
        let ok = parse(
            r#"{"web/live": {"port": 8443, "path": "/", "scheme": "https"},
                "web/ready": {"port": 9090, "grpc_service": "shop.Cart"}}"#,
        )
        .unwrap();
        assert_eq!(ok["web/live"].scheme, Some(Scheme::Https));
        assert_eq!(ok["web/ready"].grpc_service.as_deref(), Some("shop.Cart"));
        for bad in [
            r#"{"web/live": {"port": 0}}"#,
            r#"{"web/live": {"port": 8080, "path": "healthz"}}"#,
            r#"{"web/live": {"port": 8080, "headers": [{"name": "bad header", "value": "v"}]}}"#,
            r#"{"web live": {"port": 8080}}"#,
            r#"{"web/live": {"port": 8080, "scheme": "https"}}"#,
            r#"{"web/live": {"port": 8080, "path": "/", "scheme": "ftp"}}"#,
            r#"{"web/live": {"port": 8080, "path": "/", "grpc_service": ""}}"#,
            r#"{"web/live": {"port": 8080, "grpc_service": "a b"}}"#,
            r#"["web/live"]"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_probe_passes_as_the_kubelet_would_judge_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An application answering 204 on /ok, 500 on anything else.
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = app.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let status = if head.starts_with("GET /ok ") && head.contains("x-probe: 1") {
                        "204 No Content"
                    } else {
                        "500 Internal Server Error"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let probe = |path: Option<&str>| AppProbe {
            port,
            path: path.map(str::to_string),
            headers: vec![ProbeHeader {
                name: "x-probe".into(),
                value: "1".into(),
            }],
            scheme: None,
            grpc_service: None,
        };
        assert_eq!(run(&probe(Some("/ok"))).await.0, StatusCode::OK);
        assert_eq!(
            run(&probe(Some("/broken"))).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(run(&probe(None)).await.0, StatusCode::OK, "a TCP probe");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().port();
        drop(closed);
        let down = AppProbe {
            port: gone,
            path: Some("/ok".into()),
            headers: Vec::new(),
            scheme: None,
            grpc_service: None,
        };
        assert_eq!(run(&down).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    /// An HTTPS probe of an application whose certificate names neither 127.0.0.1 nor anything
    /// the proxy trusts passes, as the kubelet's would; plain HTTP to the TLS port does not.
    #[tokio::test]
    async fn an_https_probe_does_not_check_the_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["app.example".to_string()]).unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = app.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let status = if req.uri().path() == "/ok" { 204 } else { 500 };
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Empty::<bytes::Bytes>::new())
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let probe = |path: &str, scheme| AppProbe {
            port,
            path: Some(path.into()),
            headers: Vec::new(),
            scheme,
            grpc_service: None,
        };
        let (status, body) = run(&probe("/ok", Some(Scheme::Https))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            run(&probe("/broken", Some(Scheme::Https))).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let (status, body) = run(&probe("/ok", None)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    /// A gRPC probe asks the application's standard health service about one service name.
    #[tokio::test]
    async fn a_grpc_probe_asks_the_health_service() {
        use tonic_health::ServingStatus;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("shop.Cart", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("shop.Payments", ServingStatus::NotServing)
            .await;
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(app)),
        );
        let probe = |service: &str| AppProbe {
            port,
            path: None,
            headers: Vec::new(),
            scheme: None,
            grpc_service: Some(service.into()),
        };
        for (service, want, says) in [
            ("", StatusCode::OK, "SERVING"),
            ("shop.Cart", StatusCode::OK, "SERVING"),
            (
                "shop.Payments",
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT_SERVING",
            ),
            ("shop.Unknown", StatusCode::SERVICE_UNAVAILABLE, "NotFound"),
        ] {
            let (status, body) = run(&probe(service)).await;
            assert_eq!(status, want, "{service}: {body}");
            assert!(body.contains(says), "{service}: {body}");
        }
        reporter
            .set_service_status("shop.Cart", ServingStatus::NotServing)
            .await;
        assert_eq!(
            run(&probe("shop.Cart")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
