//! The proxies' connections to applications and unmeshed endpoints: one bounded pool per
//! address whatever the Host a peer sends, and no request lost when the application ends a
//! connection (an HTTP/1.1 keep-alive connection closed without notice, HTTP/2 GOAWAY and
//! REFUSED_STREAM).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weft_proxy::Proxy;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, upstream};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

/// Client connections used at once; the requests of one client go one after the other.
const CLIENTS: usize = 4;

/// A client workload calling `api` through its proxy, `api`'s proxy fronting `app`, and an
/// unmeshed workload `ext` at `ext_app` that the client may call directly.
struct Mesh {
    _mesh: TestMesh,
    _client: Proxy,
    _server: Proxy,
    /// The client proxy's listener for `api` (meshed: two proxies, then the app).
    api: SocketAddr,
    /// The client proxy's listener for `ext` (unmeshed: one proxy, then the app).
    ext: SocketAddr,
}

async fn mesh(app: SocketAddr, ext_app: SocketAddr) -> Mesh {
    let api = WorkloadDecl::serving("api", "api");
    let ext = WorkloadDecl::unmeshed("ext", "ext", ext_app);
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), ext, load.clone()], ALLOW_ALL).await;
    let server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["api", "ext"]).await;
    Mesh {
        _mesh: mesh,
        api: upstream(&client, "api"),
        ext: upstream(&client, "ext"),
        _client: client,
        _server: server,
    }
}

/// Sends `per_client` HTTP/1.1 requests from each of [`CLIENTS`] keep-alive connections to
/// `addr`; `request(client, i)` makes each. Returns every response's status and body.
async fn drive_http1<F>(
    addr: SocketAddr,
    per_client: usize,
    request: F,
) -> Vec<(StatusCode, String)>
where
    F: Fn(usize, usize) -> Request<Full<Bytes>> + Clone + Send + 'static,
{
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let request = request.clone();
        clients.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut out = Vec::new();
            for i in 0..per_client {
                send.ready().await.unwrap();
                let rsp = send.send_request(request(c, i)).await.unwrap();
                let status = rsp.status();
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                out.push((status, String::from_utf8_lossy(&body).into_owned()));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(tokio::time::timeout(WAIT, c).await.unwrap().unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_hosts_share_one_bounded_pool_per_application() {
    let (app, app_seen) = backends::http_echo_tallied("api").await;
    let (ext_app, ext_seen) = backends::http_echo_tallied("ext").await;
    let m = mesh(app, ext_app).await;
    let per_client = 50; // 200 requests, each with a Host of its own

    for (listener, seen) in [(m.api, &app_seen), (m.ext, &ext_seen)] {
        let responses = drive_http1(listener, per_client, |c, i| {
            Request::get(format!("/hosts/{c}/{i}?q=1"))
                .header("host", format!("h{c}-{i}.example.test"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        })
        .await;
        for (status, text) in &responses {
            assert_eq!(*status, StatusCode::OK, "{text}");
            // The request target and Host arrive as the client sent them.
            let (c, i) = text
                .strip_prefix("GET /hosts/")
                .and_then(|t| t.split_once(' '))
                .and_then(|(path, _)| path.split_once("?q=1").map(|(p, _)| p.to_string()))
                .and_then(|p| {
                    let (c, i) = p.split_once('/')?;
                    Some((c.to_string(), i.to_string()))
                })
                .unwrap_or_else(|| panic!("unexpected request line: {text}"));
            assert!(
                text.contains(&format!("\nhost: h{c}-{i}.example.test\n")),
                "{text}"
            );
            assert!(
                !text.contains("weft-"),
                "mesh-internal headers leaked: {text}"
            );
        }
        assert_eq!(responses.len(), CLIENTS * per_client);
        assert_eq!(seen.answered(), CLIENTS * per_client);
        // At most one connection per request in flight at once; a pool keyed by Host would
        // have opened one per request.
        let connections = seen.connections();
        assert!(
            (1..=CLIENTS).contains(&connections),
            "{connections} connections to the application for {} Host values",
            CLIENTS * per_client
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_the_application_closes_lose_no_request() {
    // Each application connection serves 3 requests and closes: every pooled connection is
    // dead when its fourth request would go.
    let (app, app_seen) = backends::http1_closing_after(3).await;
    let (ext_app, ext_seen) = backends::http1_closing_after(3).await;
    let m = mesh(app, ext_app).await;
    let per_client = 500;

    for (listener, seen) in [(m.api, &app_seen), (m.ext, &ext_seen)] {
        let responses = drive_http1(listener, per_client, |c, i| {
            // Bodies too: a request handed back unsent is replayed whole.
            let builder = Request::builder().uri(format!("/ka/{c}/{i}"));
            if i % 3 == 0 {
                builder
                    .method("POST")
                    .body(Full::new(Bytes::from(format!("body {c} {i}"))))
                    .unwrap()
            } else {
                builder.body(Full::new(Bytes::new())).unwrap()
            }
        })
        .await;
        let failed: Vec<_> = responses
            .iter()
            .filter(|(s, _)| *s != StatusCode::OK)
            .collect();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(
            seen.faults() >= 100,
            "the application closed only {} connections",
            seen.faults()
        );
        // Each request reached the application exactly once.
        let targets = seen.targets();
        assert_eq!(targets.len(), CLIENTS * per_client);
        assert!(
            targets.values().all(|n| *n == 1),
            "a request was sent twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_and_refused_streams_lose_no_request() {
    // On each connection: the 25th stream refused, GOAWAY once 50 requests are answered. The
    // pool retries a request twice; with at most CLIENTS requests in flight, faults this far
    // apart do not meet one request three times in a row.
    let (app, app_seen) = backends::http2_goaway_after(50, 25).await;
    let (ext_app, ext_seen) = backends::http2_goaway_after(50, 25).await;
    let m = mesh(app, ext_app).await;
    let per_client = 500;

    for (listener, seen) in [(m.api, &app_seen), (m.ext, &ext_seen)] {
        // HTTP/2 from the clients, so HTTP/2 to the application.
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            clients.push(tokio::spawn(async move {
                let tcp = TcpStream::connect(listener).await.unwrap();
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut failed = Vec::new();
                for i in 0..per_client {
                    let req = Request::get(format!("http://api.test/h2/{c}/{i}"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let rsp = send.send_request(req).await.unwrap();
                    let status = rsp.status();
                    let body = rsp.into_body().collect().await.unwrap().to_bytes();
                    if status != StatusCode::OK || body != "ok" {
                        failed.push((status, String::from_utf8_lossy(&body).into_owned()));
                    }
                }
                failed
            }));
        }
        let mut failed = Vec::new();
        for c in clients {
            failed.extend(tokio::time::timeout(WAIT, c).await.unwrap().unwrap());
        }
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        let sent = CLIENTS * per_client;
        assert!(
            seen.faults() >= sent / 50,
            "the application sent GOAWAY or refused only {} times",
            seen.faults()
        );
        // Every request got the application's 200. A GET that failed with GOAWAY is sent again
        // even though, when the GOAWAY arrived just as hyper opened its stream, the
        // application may process it too: at most one extra per GOAWAY and request in flight.
        assert!(
            seen.answered() >= sent && seen.answered() - sent <= seen.faults() * CLIENTS,
            "{} requests answered by the application for {sent} sent",
            seen.answered()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_caught_by_a_goaway_are_sent_again() {
    // The 5th request of each connection to the application is left out of a GOAWAY. A GET
    // caught so is sent again on a new connection; a POST is not (hyper cannot tell it from
    // one the application is processing), and fails with a 502.
    let (app, seen) = backends::http2_goaway_excluding(5).await;
    let (ext_app, _) = backends::http2_goaway_excluding(5).await;
    let m = mesh(app, ext_app).await;
    let tcp = TcpStream::connect(m.api).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    // Four GETs and a POST per connection, so the POSTs are the ones caught; then GETs only.
    let pattern = ["GET", "GET", "GET", "GET", "POST"];
    let methods = pattern.iter().cycle().take(15).chain(["GET"; 12].iter());
    for (i, method) in methods.enumerate() {
        let req = Request::builder()
            .method(*method)
            .uri(format!("http://api.test/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        statuses.push((*method, rsp.status()));
        let _ = rsp.into_body().collect().await;
    }
    let ok = statuses
        .iter()
        .filter(|(_, s)| *s == StatusCode::OK)
        .count();
    assert!(
        statuses
            .iter()
            .all(|(m, s)| *s == StatusCode::OK || (*m == "POST" && *s == StatusCode::BAD_GATEWAY)),
        "{statuses:?}"
    );
    let refused_posts = statuses
        .iter()
        .filter(|(_, s)| *s == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(refused_posts, 3, "{statuses:?}");
    // Each 200 is exactly one processing: nothing went twice; and GETs were caught too (one
    // GOAWAY per five requests), and answered all the same.
    assert_eq!(seen.answered(), ok, "{statuses:?}");
    assert!(seen.faults() > 3, "{}", seen.faults());
}
