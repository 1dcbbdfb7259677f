//! The application's health probes, run by the proxy for the kubelet.
//!
//! Under interception every connection to the pod goes through the proxy's inbound port,
//! which admits mesh peers only, so the kubelet's own HTTP and TCP probes of the application
//! would be refused. The injector rewrites each such probe to `GET /app-health/<name>` on the
//! proxy's admin port (which interception skips) and hands the original probes over in
//! `WEFT_PROXY_APP_PROBES`: a JSON object from `<name>` (`<container>/<live|ready|startup>`) to
//! `{"port": 8080, "path": "/healthz", "headers": [{"name": "X", "value": "y"}]}`, or without
//! `path` for a TCP probe. The proxy runs the original probe against the application on
//! loopback (its own traffic is never intercepted) and answers 200 when it passes, as the
//! kubelet would judge it (an HTTP status from 200 to 399, or a TCP connection), else the
//! application's status, or 503 when it cannot be reached.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

/// The path prefix of rewritten probes on the admin listener.
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
        Ok(Ok(status)) if (200..400).contains(&status.as_u16()) => {
            (StatusCode::OK, format!("ok ({status})\n"))
        }
        Ok(Ok(status)) => (status, format!("the application answered {status}\n")),
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

async fn attempt(probe: &AppProbe) -> Result<StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", probe.port))
        .await
        .map_err(|e| e.to_string())?;
    let Some(path) = &probe.path else {
        return Ok(StatusCode::OK);
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
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
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(rsp.status())
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
        for bad in [
            r#"{"web/live": {"port": 0}}"#,
            r#"{"web/live": {"port": 8080, "path": "healthz"}}"#,
            r#"{"web/live": {"port": 8080, "headers": [{"name": "bad header", "value": "v"}]}}"#,
            r#"{"web live": {"port": 8080}}"#,
            r#"{"web/live": {"port": 8080, "scheme": "HTTPS"}}"#,
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
        };
        assert_eq!(run(&down).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
