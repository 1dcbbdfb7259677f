use std::time::SystemTime;

use http_body_util::BodyExt;
use weft_ca::CertificateAuthority;
use weft_core::{
    Endpoint, EndpointState, Identity, Protocol, Service, ServiceName, ServicePort, TrustDomain,
    WorkloadKey,
};

use super::views::{GoldenCells, Overview, Page, ServiceRow, TapRow};
use super::*;

fn state(token: Option<&str>) -> Arc<State> {
    let ca = CertificateAuthority::generate_ephemeral(
        &TrustDomain::new("weft.test").unwrap(),
        Duration::from_secs(86_400),
    )
    .unwrap();
    Arc::new(State::for_tests(ca, token.map(str::to_string)))
}

/// Service `name.shop` with `n` endpoints, the first `meshed` of them meshed.
fn service(name: &str, n: u8, meshed: u8) -> Service {
    let td = TrustDomain::new("weft.test").unwrap();
    Service {
        name: ServiceName::new("shop", name).unwrap(),
        virtual_ips: Vec::new(),
        ports: vec![ServicePort {
            port: 80,
            name: None,
            protocol: Protocol::Auto,
            endpoints: (0..n)
                .map(|i| Endpoint {
                    address: ([10, 0, 0, i + 1], 8080).into(),
                    identity: Some(Identity::new(td.clone(), "shop", name).unwrap()),
                    meshed: i < meshed,
                    workload: Some(WorkloadKey {
                        namespace: "shop".into(),
                        name: format!("{name}-{i}"),
                    }),
                    state: EndpointState::Ready,
                })
                .collect(),
        }],
    }
}

fn get(path: &str, token: Option<&str>) -> Request<()> {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(()).unwrap()
}

async fn body_text(rsp: Response<Body>) -> String {
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn what_peers_control_is_escaped() {
    let hostile = "<script>alert(1)</script>";
    let row = TapRow::of(&weft_api::TapEvent {
        at_unix_ms: 1_700_000_000_000,
        direction: "inbound".into(),
        method: "GET".into(),
        path: format!("/x?{hostile}"),
        authority: "web\"onmouseover=\"x".into(),
        status: 200,
        grpc_status: -1,
        latency_ms: 1.5,
        source_identity: "spiffe://weft.test/ns/shop/sa/load".into(),
        headers: vec![weft_api::Label {
            name: "user-agent".into(),
            value: hostile.into(),
        }],
        mtls: true,
        ..Default::default()
    });
    let html = pages::TapRowFragment { row: &row }.render().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("user-agent: &#60;script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(html.contains("/x?&#60;script&#62;"), "{html}");
    assert!(!html.contains("web\"onmouseover"), "{html}");
    assert!(html.contains("<time datetime=\"2023-11-14T22:13:20.000Z\">22:13:20.000</time>"));

    let overview = Overview {
        q: hostile.into(),
        platforms: Vec::new(),
        services: Page {
            rows: vec![ServiceRow {
                name: hostile.into(),
                link: views::service_link(hostile),
                platforms: vec![hostile.into()],
                endpoints: 1,
                meshed: "100 %".into(),
                golden: GoldenCells::default(),
            }],
            number: 1,
            pages: 1,
            matching: 1,
            total: 1,
        },
        previous: String::new(),
        next: String::new(),
        window_seconds: 60,
    };
    let html = pages::OverviewLive { view: &overview }.render().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("data-service=\"&#60;script&#62;"), "{html}");
    assert!(
        html.contains("href=\"/dashboard/service?name=%3Cscript%3Ealert%281%29%3C%2Fscript%3E\""),
        "{html}"
    );
    let page = pages::OverviewPage {
        frame: frame(hostile, "overview"),
        view: &overview,
        events: View::Overview {
            q: hostile.into(),
            page: 1,
        }
        .events(),
    }
    .render()
    .unwrap();
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    // The one script is our own, by address: the policy forbids inline ones.
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(page.contains("<script src=\"/dashboard/app.js\" defer></script>"));
}

#[test]
fn events_split_lines_so_no_value_can_end_an_event() {
    let e = sse("fragment", "<p>a</p>\r\n<p>b\rc</p>\n\ndata: x");
    assert_eq!(
        std::str::from_utf8(&e).unwrap(),
        "event: fragment\ndata: <p>a</p>\ndata: <p>b\ndata: c</p>\ndata: \ndata: data: x\n\n"
    );
}

#[test]
fn views_are_named_by_their_query() {
    let q = Query(vec![
        ("view".into(), "overview".into()),
        ("q".into(), " web ".into()),
        ("page".into(), "3".into()),
    ]);
    let view = View::parse("overview", &q).unwrap();
    assert_eq!(
        view,
        View::Overview {
            q: "web".into(),
            page: 3
        }
    );
    assert_eq!(
        view.events(),
        "/dashboard/events?view=overview&q=web&page=3"
    );
    assert_eq!(View::parse("service", &Query::default()), None);
    assert_eq!(View::parse("nothing", &q), None);
    let long = Query(vec![("q".into(), "x".repeat(10_000))]);
    assert_eq!(long.arg("q").unwrap().len(), MAX_PARAM);
}

#[tokio::test]
async fn off_loopback_the_dashboard_needs_the_token() {
    let state = state(Some("sesame"));
    for path in [
        "/dashboard",
        "/dashboard/app.js",
        "/dashboard/events?view=topology",
    ] {
        let rsp = respond(&state, &get(path, None), ());
        assert_eq!(rsp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let rsp = respond(&state, &get(path, Some("sesamx")), ());
        assert_eq!(rsp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let rsp = respond(&state, &get("/dashboard", Some("sesame")), ());
    assert_eq!(rsp.status(), StatusCode::OK);
    let csp = rsp.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let post = Request::post("/dashboard")
        .header(header::AUTHORIZATION, "Bearer sesame")
        .body(())
        .unwrap();
    assert_eq!(
        respond(&state, &post, ()).status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn a_thousand_services_are_paged_and_searched_on_the_server() {
    let state = state(None);
    let writer = state.registry.writer("local");
    writer.replace_all((0..1000).map(|i| service(&format!("svc-{i:04}"), 4, (i % 5) as u8)));

    let rsp = respond(&state, &get("/dashboard", None), ());
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let html = body_text(rsp).await;
    assert_eq!(html.matches("<tr data-service=").count(), PAGE_SIZE);
    assert!(html.contains("data-service=\"svc-0000.shop\""));
    assert!(!html.contains("data-service=\"svc-0050.shop\""));
    assert!(html.contains("1000 services; page 1 of 20"), "{html}");
    assert!(html.contains("href=\"/dashboard?page=2\" rel=\"next\""));
    // Three of four endpoints meshed.
    assert!(html.contains("<tr data-service=\"svc-0003.shop\">"));
    assert!(html.contains("75 % <span class=\"muted\">of 4</span>"));

    let html = body_text(respond(
        &state,
        &get("/dashboard?q=SVC-09&page=2", None),
        (),
    ))
    .await;
    assert!(html.contains("100 of 1000 services contain “SVC-09”; page 2 of 2"));
    assert_eq!(html.matches("<tr data-service=").count(), 50);
    assert!(html.contains("data-service=\"svc-0950.shop\""));
    assert!(html.contains("href=\"/dashboard?q=SVC-09\" rel=\"prev\""));

    // The fragment a live update swaps in is the same region.
    let rsp = respond(
        &state,
        &get("/dashboard/fragment?view=overview&q=svc-0999", None),
        (),
    );
    let html = body_text(rsp).await;
    assert_eq!(html.matches("<tr data-service=").count(), 1);
    assert!(!html.contains("<html"));

    // A service's page, and one that is not there.
    let html = body_text(respond(
        &state,
        &get("/dashboard/service?name=svc-0007.shop", None),
        (),
    ))
    .await;
    assert!(html.contains("<h1>svc-0007.shop</h1>"), "{html}");
    assert!(html.contains("spiffe://weft.test/ns/shop/sa/svc-0007"));
    assert_eq!(html.matches("<span class=\"state ready\">").count(), 4);
    let rsp = respond(&state, &get("/dashboard/service?name=nope.shop", None), ());
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);

    // The graph draws at most MAX_NODES of the 4,000 workloads, and says so.
    let html = body_text(respond(&state, &get("/dashboard/topology", None), ())).await;
    assert_eq!(html.matches("<rect ").count(), MAX_NODES, "{html}");
    assert!(html.contains("200 of 4000 nodes drawn: 3800 with the least traffic are left out"));
}

#[tokio::test]
async fn the_certificates_show_the_ca_and_the_leaves_that_end_soonest() {
    let state = state(None);
    let td = TrustDomain::new("weft.test").unwrap();
    let now = SystemTime::now();
    for i in 0..30u64 {
        state.leaves.record(
            &Identity::new(td.clone(), "shop", format!("w{i:02}")).unwrap(),
            now + Duration::from_secs(3600 + i * 60),
        );
    }
    let html = body_text(respond(&state, &get("/dashboard/certificates", None), ())).await;
    assert!(html.contains("<th scope=\"row\">Root</th>"), "{html}");
    assert!(html.contains("weft.test"), "{html}");
    assert!(html.contains("Intermediate"));
    assert!(html.contains("spiffe://weft.test/ns/weft-system/sa/weft-control"));
    assert!(html.contains("The latest leaf of 30 identities is known"));
    assert_eq!(html.matches("spiffe://weft.test/ns/shop/sa/").count(), 20);
    assert!(html.contains("spiffe://weft.test/ns/shop/sa/w00"));
    assert!(!html.contains("spiffe://weft.test/ns/shop/sa/w20"));
    assert!(html.contains(">59 min</td>"), "{html}");
}

#[tokio::test]
async fn streams_are_bounded_and_end_when_the_control_plane_stops() {
    let state = state(None);
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS {
        let rsp = respond(&state, &get("/dashboard/events?view=overview", None), ());
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()[header::CONTENT_TYPE], "text/event-stream");
        open.push(rsp.into_body());
    }
    let refused = respond(&state, &get("/dashboard/events?view=topology", None), ());
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = respond(&state, &get("/dashboard/tap-events", None), ());
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A stream sends its retry, then the region at once.
    let mut first = open.remove(0);
    let retry = first.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&retry[..], b"retry: 2000\n\n");
    let region = first.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(region.starts_with(b"event: fragment\ndata: "), "{region:?}");
    // A client that goes away gives its slot back.
    drop(first);
    let again = respond(
        &state,
        &get("/dashboard/events?view=certificates", None),
        (),
    );
    assert_eq!(again.status(), StatusCode::OK);
    open.push(again.into_body());

    // With no proxy to tap, the tap stream says so and ends, and its slot is free at once.
    drop(open.pop());
    let tap = respond(&state, &get("/dashboard/tap-events?to=web.shop", None), ());
    assert_eq!(tap.status(), StatusCode::OK);
    let text = body_text(tap).await;
    assert!(
        text.contains("event: status\ndata: Not tapping: no reporting proxy"),
        "{text}"
    );

    state.shutdown.cancel();
    for mut body in open {
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(frame) = body.frame().await {
                frame.unwrap();
            }
        })
        .await;
        assert!(ended.is_ok(), "a stream outlived the control plane");
    }
    assert_eq!(state.dashboard_streams.available_permits(), MAX_STREAMS);
}

#[test]
fn assets_are_our_own_and_record_errors() {
    assert!(APP_JS.contains("window.weftErrors"));
    assert!(APP_JS.contains("unhandledrejection"));
    assert!(APP_JS.contains("new EventSource("));
    assert!(STYLE_CSS.contains(":focus-visible"));
}
