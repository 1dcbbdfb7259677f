//! The control plane's dashboard in a real browser: headless Chromium driven through
//! chromedriver. Each view loads without a script error or a console error, shows the
//! services and calls that exist, and follows the traffic live; the tap view shows a request
//! as it happens; `weft dashboard --token-file` forwards to a control plane off loopback.
//! A screenshot of each view goes to `target/dashboard/`.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use http::Request;
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, admin_get, backends, upstream};

const MESH: &str = r#"[policy]
default_inbound = "allow"

[[policy.authorizations]]
name = "web-calls-api"
service = "api.test"
from = ["test/web"]

[[routes.http]]
name = "web"
namespace = "test"
parent_refs = [{ name = "web" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/api" } }]
backend_refs = [{ name = "web" }]

[[routes.http.rules]]
backend_refs = [{ name = "web" }]
"#;

/// WebDriver's codes of the keys pressed.
const TAB: char = '\u{E004}';
const ENTER: char = '\u{E007}';

/// Chromium and its chromedriver, for one test.
struct Browser {
    driver: tokio::process::Child,
    client: Client,
}

/// chromedriver's log of the browser's console, since it was last read: the legacy endpoint
/// `POST /session/{id}/se/log`, which WebDriver itself lacks.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

impl Browser {
    /// Starts chromedriver on a port it picks and opens a session of headless Chromium.
    async fn start() -> Self {
        let mut driver = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let mut lines = tokio::io::BufReader::new(driver.stdout.take().unwrap()).lines();
        // "ChromeDriver was started successfully on port 38717."
        let port: u16 = tokio::time::timeout(WAIT, async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("chromedriver ended");
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse().unwrap();
                }
            }
        })
        .await
        .expect("chromedriver starts in time");
        // Whatever else it prints is read, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = tokio::time::timeout(
            WAIT,
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("a browser session in time")
        .unwrap();
        Self { driver, client }
    }

    /// Ends the session (Chromium exits) and chromedriver.
    async fn stop(mut self) {
        let _ = tokio::time::timeout(WAIT, self.client.close()).await;
        let _ = self.driver.kill().await;
    }

    /// Presses and releases `key` where the focus is.
    async fn press(&self, key: char) {
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(keys).await.unwrap();
    }

    /// The value of the JavaScript expression `expr`.
    async fn eval(&self, expr: &str) -> Value {
        self.client
            .execute(&format!("return ({expr});"), Vec::new())
            .await
            .unwrap()
    }

    /// The value of `expr` once `ok` holds of it, polled every 100 ms for at most [`WAIT`].
    async fn wait_for(&self, what: &str, expr: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.eval(expr).await;
            if ok(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still {v} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element `css` selects, or null.
    async fn text(&self, css: &str) -> Value {
        self.eval(&format!(
            "(function () {{ const e = document.querySelector({}); return e ? e.textContent.trim() : null; }})()",
            json!(css)
        ))
        .await
    }

    /// Waits until the first element `css` selects shows `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        let expr = format!(
            "(function () {{ const e = document.querySelector({}); return e ? e.textContent.trim() : null; }})()",
            json!(css)
        );
        self.wait_for(css, &expr, |v| v == want).await;
    }

    /// The console's entries of level `level` since the log was last read.
    async fn console(&self, level: &str) -> Vec<Value> {
        let log = self.client.issue_cmd(BrowserLog).await.unwrap();
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == level)
            .cloned()
            .collect()
    }

    /// Checks that the page's script ran without errors, that the console logged none, and
    /// saves a screenshot as `target/dashboard/<name>.png`.
    async fn check(&self, name: &str) {
        let errors = self.eval("window.weftErrors").await;
        assert_eq!(
            errors,
            json!([]),
            "{name}: script errors (null: the script did not run)"
        );
        let severe = self.console("SEVERE").await;
        assert!(severe.is_empty(), "{name}: console errors {severe:#?}");
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// Where screenshots go: `target/dashboard/`.
fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("dashboard")
}

/// Runs `body` with a browser, which is closed whether it passes or panics.
async fn with_browser<F>(body: impl FnOnce(Arc<Browser>) -> F)
where
    F: std::future::Future<Output = ()>,
{
    let browser = Arc::new(Browser::start().await);
    let outcome = std::panic::AssertUnwindSafe(body(browser.clone()))
        .catch_unwind()
        .await;
    if let Ok(browser) = Arc::try_unwrap(browser) {
        browser.stop().await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn send(up: SocketAddr, path: &str) {
    let client = weft_tests::http_client();
    let req = Request::get(format!("http://{up}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200, "{path}");
    let _ = rsp.into_body().collect().await.unwrap();
}

/// Two services, `web` and `api`, and a client `load`: load calls web, web calls api.
struct Lab {
    _mesh: TestMesh,
    web: weft_proxy::Proxy,
    load: weft_proxy::Proxy,
    _api: weft_proxy::Proxy,
    http: SocketAddr,
}

async fn lab() -> Lab {
    let web_app = backends::http_echo("web").await;
    let api_app = backends::http_echo("api").await;
    let web = WorkloadDecl::serving("web", "web");
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[web.clone(), api.clone(), load.clone()], MESH).await;
    let fast = |mut cfg: weft_proxy::ProxyConfig| {
        cfg.report_interval = Duration::from_millis(200);
        cfg.tap_addr = Some(([127, 0, 0, 1], 0).into());
        cfg
    };
    let api_proxy = mesh
        .start_proxy(fast(mesh.proxy_config(&api, Some(api_app.port()), &[])))
        .await;
    let web_proxy = mesh
        .start_proxy(fast(mesh.proxy_config(
            &web,
            Some(web_app.port()),
            &["api"],
        )))
        .await;
    let load_proxy = mesh
        .start_proxy(fast(mesh.proxy_config(&load, None, &["web"])))
        .await;
    let http = mesh.control.as_ref().unwrap().http_addr;
    Lab {
        _mesh: mesh,
        web: web_proxy,
        load: load_proxy,
        _api: api_proxy,
        http,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_loads_shows_the_mesh_and_follows_it_live() {
    let lab = lab().await;
    let to_web = upstream(&lab.load, "web");
    let to_api = upstream(&lab.web, "api");
    for i in 0..5 {
        send(to_web, &format!("/api/{i}")).await;
    }
    for i in 0..3 {
        send(to_api, &format!("/items/{i}")).await;
    }
    let base = format!("http://{}", lab.http);
    with_browser(|b| async move {
        // The mesh at a glance.
        b.client.goto(&format!("{base}/dashboard")).await.unwrap();
        assert_eq!(b.text("h1").await, "The mesh");
        // The console's errors do reach the test (so that none seen means none there).
        b.eval("console.error('a probe of the console log') || true").await;
        let probe = b.console("SEVERE").await;
        assert!(
            probe.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("a probe of the console log"))),
            "{probe:#?}"
        );
        b.wait_text("tr[data-service=\"web.test\"] .requests", "5")
            .await;
        b.wait_text("tr[data-service=\"api.test\"] .requests", "3")
            .await;
        assert_eq!(
            b.text("tr[data-platform=\"local\"] .sync").await,
            "synced"
        );
        let web_row = b.text("tr[data-service=\"web.test\"]").await;
        assert!(web_row.as_str().unwrap().contains("100 %"), "{web_row}");
        // Live: more traffic shows without a reload.
        for i in 0..4 {
            send(to_web, &format!("/api/more/{i}")).await;
        }
        b.wait_text("tr[data-service=\"web.test\"] .requests", "9")
            .await;
        let status = b.text("#live-status").await;
        assert!(status.as_str().unwrap().starts_with("Updated at"), "{status}");
        b.check("overview").await;

        // By keyboard: the skip link comes first and leads to the content, and the search
        // submits with Enter.
        b.press(TAB).await;
        assert_eq!(b.eval("document.activeElement.className").await, "skip");
        b.press(ENTER).await;
        assert_eq!(b.eval("location.hash").await, "#main");
        assert_eq!(b.eval("document.activeElement.id").await, "main");
        let search = b.client.find(Locator::Id("q")).await.unwrap();
        search.send_keys(&format!("api{ENTER}")).await.unwrap();
        b.wait_for("the search", "location.search", |v| v == "?q=api")
            .await;
        b.wait_text("tr[data-service=\"api.test\"] .requests", "3")
            .await;
        assert_eq!(
            b.eval("document.querySelectorAll('tr[data-service]').length")
                .await,
            1
        );
        assert_eq!(
            b.text(".summary").await,
            json!("1 of 2 services contain “api”; page 1 of 1. Rates and latencies over the last 60 seconds; meshed: the share of endpoints behind a proxy.")
        );
        b.check("overview-search").await;

        // A service: routes, endpoints, rules and callers.
        b.client
            .goto(&format!("{base}/dashboard/service?name=web.test"))
            .await
            .unwrap();
        assert_eq!(b.text("h1").await, "web.test");
        b.wait_text("dd.requests", "9").await;
        assert_eq!(b.text("article.route h3").await, "HTTP route test/web");
        let rules = b.text("article.route table").await;
        assert!(rules.as_str().unwrap().contains("path /api*"), "{rules}");
        assert!(rules.as_str().unwrap().contains("web.test weight 1"), "{rules}");
        let endpoints = b.text("table.endpoints tbody").await;
        let endpoints = endpoints.as_str().unwrap();
        assert!(endpoints.contains("spiffe://weft.test/ns/test/sa/web"), "{endpoints}");
        assert!(endpoints.contains("ready") && endpoints.contains("yes"), "{endpoints}");
        b.wait_for(
            "web's callers",
            "document.querySelector('table.callers tbody').textContent",
            |v| v.as_str().is_some_and(|t| t.contains("test/load") && t.contains("spiffe://weft.test/ns/test/sa/load")),
        )
        .await;
        send(to_web, "/api/last").await;
        b.wait_text("dd.requests", "10").await;
        b.wait_text("table.route-stats .requests", "10").await;
        b.check("service-web").await;

        b.client
            .goto(&format!("{base}/dashboard/service?name=api.test"))
            .await
            .unwrap();
        let rules = b.text("table.rules tbody").await;
        let rules = rules.as_str().unwrap();
        assert!(rules.contains("test/web-calls-api") || rules.contains("web-calls-api"), "{rules}");
        assert!(rules.contains("allow") && rules.contains("test/web"), "{rules}");
        b.wait_text("table.callers tbody th", "test/web").await;
        b.wait_text("table.callers .requests", "3").await;
        b.check("service-api").await;

        // The topology: three workloads, and load -> web -> api, healthy.
        b.client
            .goto(&format!("{base}/dashboard/topology"))
            .await
            .unwrap();
        b.wait_for(
            "the graph's edges",
            "document.querySelectorAll('svg path.edge.good').length",
            |v| v == 2,
        )
        .await;
        let labels = b
            .eval("Array.from(document.querySelectorAll('svg .node .label')).map(e => e.textContent).sort()")
            .await;
        assert_eq!(labels, json!(["api", "load", "web"]));
        let details = b
            .eval("Array.from(document.querySelectorAll('svg .node .detail')).map(e => e.textContent)")
            .await;
        assert_eq!(details, json!(["local", "local", "local"]), "labelled with the platform");
        b.wait_text("tr[data-from=\"test/web\"][data-to=\"test/api\"] .requests", "3")
            .await;
        send(to_api, "/items/more").await;
        b.wait_text("tr[data-from=\"test/web\"][data-to=\"test/api\"] .requests", "4")
            .await;
        b.wait_text("tr[data-from=\"test/load\"][data-to=\"test/web\"] .requests", "10")
            .await;
        b.check("topology").await;

        // The tap: a request shows as it happens.
        b.client
            .goto(&format!("{base}/dashboard/tap?to=web.test&path=%2Ftapped"))
            .await
            .unwrap();
        assert_eq!(
            b.eval("document.getElementById('path').value").await,
            "/tapped"
        );
        let row = "(function () { const cells = Array.from(document.querySelectorAll('#tap td.path')); \
                   const c = cells.find(c => c.textContent.startsWith('/tapped/')); \
                   return c ? c.closest('tr').textContent : null; })()";
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Value::Null;
        for n in 0..200 {
            send(to_web, &format!("/tapped/{n}")).await;
            seen = b.eval(row).await;
            if !seen.is_null() || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen = seen.as_str().expect("a tapped request shows in time").to_string();
        assert!(seen.contains("inbound") && seen.contains("GET"), "{seen}");
        assert!(seen.contains("spiffe://weft.test/ns/test/sa/load"), "{seen}");
        assert!(seen.contains("200"), "{seen}");
        let others = b
            .eval("Array.from(document.querySelectorAll('#tap td.path')).filter(c => !c.textContent.startsWith('/tapped/')).length")
            .await;
        assert_eq!(others, 0, "only the filtered path");
        assert!(b.eval("document.querySelectorAll('#tap tbody tr').length").await.as_u64().unwrap() <= 200);
        b.check("tap").await;

        // The certificates: the CA and each proxy's leaf.
        b.client
            .goto(&format!("{base}/dashboard/certificates"))
            .await
            .unwrap();
        let ca = b.text("table.certs tbody").await;
        let ca = ca.as_str().unwrap();
        assert!(ca.contains("Root") && ca.contains("Intermediate"), "{ca}");
        assert!(ca.contains("spiffe://weft.test/ns/weft-system/sa/weft-control"), "{ca}");
        let leaves = b.text("table.leaves tbody").await;
        let leaves = leaves.as_str().unwrap();
        for name in ["web", "api", "load"] {
            assert!(
                leaves.contains(&format!("spiffe://weft.test/ns/test/sa/{name}")),
                "{leaves}"
            );
        }
        b.check("certificates").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_dashboard_forwards_to_a_control_plane_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"0.0.0.0:0\"\n",
        dir.path().display()
    );
    let cfg = weft_control::platforms::loader()
        .load_str(&text, std::path::Path::new("m.toml"))
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(cfg));
    let control = weft_control::ControlPlane::start(rx, Vec::new())
        .await
        .unwrap();
    // Reached over loopback, although it listens on every address.
    let http: SocketAddr = ([127, 0, 0, 1], control.http_addr.port()).into();
    assert_eq!(admin_get(http, "GET", "/dashboard").await.0, 401);

    let token_file = dir.path().join("http-token").display().to_string();
    let (mut weft, url) =
        weft_tests::weft_dashboard(&["--control", &http.to_string(), "--token-file", &token_file])
            .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    with_browser(|b| async move {
        b.client.goto(&url).await.unwrap();
        assert_eq!(b.text("h1").await, "The mesh");
        assert!(
            b.eval("location.pathname").await == "/dashboard",
            "the key traded for a cookie"
        );
        // Server-sent events pass through the forwarder.
        b.wait_for(
            "a live update",
            "document.getElementById('live-status').textContent",
            |v| v.as_str().is_some_and(|s| s.starts_with("Updated at")),
        )
        .await;
        let local = url.split("/open/").next().unwrap();
        b.client
            .goto(&format!("{local}/dashboard/certificates"))
            .await
            .unwrap();
        assert_eq!(b.text("h1").await, "Certificates");
        b.check("forwarded").await;
    })
    .await;
    let _ = weft.kill().await;
    control.shutdown().await;
}

/// A live stream of the dashboard opened from `from` (a loopback address): the answer's head,
/// the body, and the connection's task (aborted: the client goes away).
async fn open_stream(
    http: SocketAddr,
    from: [u8; 4],
) -> (
    http::StatusCode,
    hyper::body::Incoming,
    tokio::task::JoinHandle<()>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let tcp = socket.connect(http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get("/dashboard/events?view=certificates")
        .header(http::header::HOST, http.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    (rsp.status(), rsp.into_body(), task)
}

/// The next frame of a stream, if it has one within [`WAIT`].
async fn next_frame(body: &mut hyper::body::Incoming) -> Option<Bytes> {
    match tokio::time::timeout(WAIT, body.frame()).await.unwrap() {
        Some(Ok(frame)) => frame.into_data().ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_bounded_outlive_the_idle_timeout_and_end_with_their_clients() {
    use weft_control::admin::{IDLE_TIMEOUT, MAX_PER_ADDRESS};
    use weft_control::dashboard::MAX_STREAMS;

    let mut mesh = TestMesh::start(&[WorkloadDecl::client("load")], "").await;
    let http = mesh.control.as_ref().unwrap().http_addr;
    // One client address holds MAX_PER_ADDRESS connections: the streams come from several.
    let from = |i: usize| [127, 0, 0, 2 + u8::try_from(i / MAX_PER_ADDRESS).unwrap()];
    let opened = tokio::time::Instant::now();
    let mut streams = Vec::new();
    for i in 0..MAX_STREAMS {
        let (status, mut body, task) = open_stream(http, from(i)).await;
        assert_eq!(status, 200, "stream {i}");
        assert_eq!(next_frame(&mut body).await.unwrap(), "retry: 2000\n\n");
        streams.push((body, task));
    }
    let spare = from(MAX_STREAMS);
    let (status, _, refused) = open_stream(http, spare).await;
    assert_eq!(status, 503, "one stream more than the bound");
    refused.abort();

    // Clients that go away give their slots back, once the control plane writes to them.
    for (_, task) in streams.drain(..4) {
        task.abort();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut replacement, replacement_task) = loop {
        let (status, body, task) = open_stream(http, spare).await;
        if status == 200 {
            break (body, task);
        }
        task.abort();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot came free after clients went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(next_frame(&mut replacement).await.is_some());
    streams.push((replacement, replacement_task));

    // A stream keeps its connection past the idle timeout: it is an answer being sent.
    let (first, _) = &mut streams[0];
    while opened.elapsed() < IDLE_TIMEOUT * 2 {
        assert!(next_frame(first).await.is_some(), "the stream ended early");
    }
    assert!(next_frame(first).await.is_some(), "closed as idle");

    // Every stream ends when the control plane stops.
    mesh.control.take().unwrap().shutdown().await;
    for (mut body, _) in streams {
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
        assert!(ended.is_ok(), "a stream outlived the control plane");
    }
}
