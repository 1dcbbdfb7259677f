//! Heap allocations per request through the proxies, counted by a global allocator in this test
//! binary: a keep-alive HTTP/1.1 client calls the application through the pair (outbound proxy
//! -> mutual TLS, HTTP/2 -> inbound proxy -> application) and, in the same run, directly. The
//! difference, divided by the requests, is what the two proxies allocate per request; the test
//! holds it under a ceiling, so a change that adds allocations to the request path fails here.
//! README › Performance gives the figures.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::alloc::System;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use weft_tests::{backends, pair};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Requests counted per path, after a warm-up that opens the connections and fills the pools.
const REQUESTS: usize = 2_000;
const WARM_UP: usize = 200;

/// Allocations per request the two proxies together may make (client proxy and server proxy,
/// HTTP/1.1 in, HTTP/2 over mutual TLS between them): 52 when this test was written, 38 with
/// the request stack, 36.8 with the mesh's own TLS streams, with room for noise from the rest
/// of the process (the control plane's and the proxies' idle tasks). Lower it as the request
/// path sheds allocations.
const CEILING: f64 = 40.0;

/// The allocations (all threads of the process) while `REQUESTS` GETs go to `to` on one
/// keep-alive connection, each read to its end.
async fn allocations_for(to: SocketAddr) -> usize {
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut get = async || {
        send.ready().await.unwrap();
        let req = http::Request::get("/count")
            .header("host", "api.test")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), http::StatusCode::OK);
        rsp.into_body().collect().await.unwrap();
    };
    for _ in 0..WARM_UP {
        get().await;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        get().await;
    }
    region.change().allocations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxies_allocate_per_request_under_a_ceiling() {
    let app = backends::http_echo("api").await;
    let p = pair(app, "http1").await;
    // Each path twice, interleaved; the lower count of each is the one least disturbed by the
    // process's background work.
    let mut direct = usize::MAX;
    let mut proxied = usize::MAX;
    for _ in 0..2 {
        direct = direct.min(allocations_for(app).await);
        proxied = proxied.min(allocations_for(p.upstream).await);
    }
    let per_request = proxied.saturating_sub(direct) as f64 / REQUESTS as f64;
    let direct_per_request = direct as f64 / REQUESTS as f64;
    eprintln!(
        "allocations per request: {per_request:.1} in the proxies ({direct_per_request:.1} in the client and application alone)"
    );
    assert!(
        per_request > 1.0,
        "the count saw nothing of the proxies ({per_request:.1} per request)"
    );
    assert!(
        per_request <= CEILING,
        "the proxies allocate {per_request:.1} times per request, over the ceiling of {CEILING}"
    );
}
