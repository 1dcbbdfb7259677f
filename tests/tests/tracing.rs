//! Tracing and access logs, end to end: a real proxy pair on the local platform exports spans
//! over OTLP/gRPC to a collector in the test. A two-hop call's spans link up (caller's span,
//! client span, server span, the application's parent) for W3C and B3 callers; unsampled
//! requests record nothing; proxies start traces only where the mesh says; retries are child
//! spans of the call; exemplars name sampled traces; a collector that does not answer costs
//! dropped spans, never a slow request; access log lines parse.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::io::AsyncBufReadExt;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, upstream, wait_metric};

/// A span with the `service.name` of the proxy that sent it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(n) => n.to_string(),
                other => format!("{other:?}"),
            })
    }
}

/// An OTLP/gRPC trace receiver on loopback.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    arrived: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (SocketAddr, Self) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let me = Self::default();
        let svc = TraceServiceServer::new(me.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        (addr, me)
    }

    /// The spans of `trace` once there are `n` of them.
    async fn wait(&self, trace: &[u8], n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            let got = self.of(trace);
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::timeout_at(deadline, arrived).await.is_ok(),
                "{} of {n} spans of the trace arrived: {got:#?}",
                got.len()
            );
        }
    }

    fn of(&self, trace: &[u8]) -> Vec<Got> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.span.trace_id == trace)
            .cloned()
            .collect()
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

const WEB_ID: &str = "spiffe://weft.test/ns/test/sa/web";
const LOAD_ID: &str = "spiffe://weft.test/ns/test/sa/load";

/// The mesh file: every mesh client admitted, spans to `collector`, traces started by
/// `starter`'s proxy, web's proxy logging JSON, and `extra`.
fn mesh_file(collector: SocketAddr, extra: &str) -> String {
    format!(
        r#"[policy]
default_inbound = "allow"

[observability.tracing]
collector = "{collector}"

[[observability.tracing.start]]
namespace = "test"
workload = "starter"
sampling = 1.0

[[observability.access_log]]
namespace = "test"
workload = "web"
format = "json"
{extra}"#
    )
}

struct Lab {
    mesh: TestMesh,
    collector: Collector,
    load: weft_proxy::Proxy,
    starter: weft_proxy::Proxy,
    web_log: tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>,
    load_log: tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>,
    _web: weft_proxy::Proxy,
}

async fn lab(extra: &str) -> Lab {
    let (collector_addr, collector) = Collector::start().await;
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let starter = WorkloadDecl::client("starter");
    let mesh = TestMesh::start(
        &[web.clone(), load.clone(), starter.clone()],
        &mesh_file(collector_addr, extra),
    )
    .await;
    let (web_out, web_in) = log_pipe();
    let web_proxy = start_logged(
        &mesh,
        mesh.proxy_config(&web, Some(app.port()), &[]),
        web_out,
    )
    .await;
    let (load_out, load_in) = log_pipe();
    let mut load_cfg = mesh.proxy_config(&load, None, &["web"]);
    // The flag wins over the mesh file, which says nothing of `load`.
    load_cfg.access_log = Some(weft_core::observability::AccessLogFormat::Common);
    let load_proxy = start_logged(&mesh, load_cfg, load_out).await;
    let starter_proxy = mesh.proxy(&starter, None, &["web"]).await;
    Lab {
        mesh,
        collector,
        load: load_proxy,
        starter: starter_proxy,
        web_log: tokio::io::BufReader::new(web_in).lines(),
        load_log: tokio::io::BufReader::new(load_in).lines(),
        _web: web_proxy,
    }
}

/// A socket pair for an access log: the end its writer thread writes to (blocking, as
/// stderr), and the end the test reads.
fn log_pipe() -> (std::os::unix::net::UnixStream, tokio::net::UnixStream) {
    let (out, test_end) = std::os::unix::net::UnixStream::pair().unwrap();
    test_end.set_nonblocking(true).unwrap();
    (out, tokio::net::UnixStream::from_std(test_end).unwrap())
}

/// Starts a proxy as [`TestMesh::start_proxy`] does, with its access log written to `log`.
async fn start_logged(
    mesh: &TestMesh,
    cfg: weft_proxy::ProxyConfig,
    log: std::os::unix::net::UnixStream,
) -> weft_proxy::Proxy {
    let name = cfg.workload.clone();
    let proxy = weft_proxy::Proxy::start_with_access_log(cfg, log)
        .await
        .unwrap();
    if let Some(inbound) = proxy.inbound_addr {
        mesh.set_port(&name, inbound.port()).await;
        weft_tests::wait_serving(&proxy, inbound.port()).await;
    }
    weft_tests::wait_ready(&proxy).await;
    proxy
}

/// Sends a GET of `path` with `headers` through `up`; the status and the request headers the
/// application received (the echo backend writes them back, one `name: value` per line).
async fn get(up: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Vec<String>) {
    let client = weft_tests::http_client();
    let mut req = Request::get(format!("http://{up}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = tokio::time::timeout(
        WAIT,
        client.request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let lines = String::from_utf8_lossy(&body)
        .lines()
        .map(str::to_string)
        .collect();
    (status, lines)
}

/// The value of the request header `name` the application saw.
fn seen(lines: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}: ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// The two spans of a hop: the caller's proxy's client span and the server's proxy's.
fn hop(spans: &[Got]) -> (Got, Got) {
    let client = spans
        .iter()
        .find(|g| g.span.kind == SpanKind::Client as i32)
        .expect("a client span")
        .clone();
    let server = spans
        .iter()
        .find(|g| g.span.kind == SpanKind::Server as i32)
        .expect("a server span")
        .clone();
    (client, server)
}

fn check_hop_attributes(client: &Got, server: &Got, path: &str) {
    assert_eq!(client.service, "load");
    assert_eq!(server.service, "web");
    for g in [client, server] {
        assert_eq!(g.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(g.attr("url.path").as_deref(), Some(path));
        assert_eq!(g.attr("http.response.status_code").as_deref(), Some("200"));
        assert!(g.span.end_time_unix_nano >= g.span.start_time_unix_nano);
    }
    assert_eq!(client.attr("weft.direction").as_deref(), Some("outbound"));
    assert_eq!(client.attr("weft.peer.identity").as_deref(), Some(WEB_ID));
    assert_eq!(client.attr("weft.service").as_deref(), Some("web.test"));
    assert_eq!(server.attr("weft.direction").as_deref(), Some("inbound"));
    assert_eq!(server.attr("weft.peer.identity").as_deref(), Some(LOAD_ID));
    assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_w3c_callers_trace_gets_a_span_on_each_side_of_the_hop() {
    let lab = lab("").await;
    let up = upstream(&lab.load, "web");
    let (status, app_saw) = get(
        up,
        "/w3c",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=kept"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let spans = lab.collector.wait(&unhex(TRACE), 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (client, server) = hop(&spans);
    assert_eq!(
        client.span.parent_span_id,
        unhex(PARENT),
        "the caller's span"
    );
    assert_eq!(server.span.parent_span_id, client.span.span_id);
    // The application's parent is the server's span; tracestate is passed on untouched.
    assert_eq!(
        seen(&app_saw, "traceparent"),
        Some(format!("00-{TRACE}-{}-01", hex(&server.span.span_id)))
    );
    assert_eq!(seen(&app_saw, "tracestate").as_deref(), Some("vendor=kept"));
    check_hop_attributes(&client, &server, "/w3c");
    assert_eq!(client.span.name, "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_callers_traces_link_up_in_both_forms() {
    let lab = lab("").await;
    let up = upstream(&lab.load, "web");

    // Multi-header, with a 64-bit trace ID.
    let short = "a3ce929d0e0e4736";
    let (status, app_saw) = get(
        up,
        "/b3-multi",
        &[
            ("x-b3-traceid", short),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let trace = unhex(&format!("{}{short}", "0".repeat(16)));
    let spans = lab.collector.wait(&trace, 2).await;
    let (client, server) = hop(&spans);
    assert_eq!(client.span.parent_span_id, unhex(PARENT));
    assert_eq!(server.span.parent_span_id, client.span.span_id);
    assert_eq!(seen(&app_saw, "x-b3-traceid").as_deref(), Some(short));
    assert_eq!(
        seen(&app_saw, "x-b3-spanid"),
        Some(hex(&server.span.span_id))
    );
    assert_eq!(
        seen(&app_saw, "x-b3-parentspanid"),
        Some(hex(&client.span.span_id))
    );
    assert_eq!(
        seen(&app_saw, "traceparent"),
        None,
        "no form the caller did not use"
    );
    check_hop_attributes(&client, &server, "/b3-multi");

    // Single header.
    let other = "80f198ee56343ba864fe8b2a57d3eff7";
    let (status, app_saw) = get(up, "/b3-single", &[("b3", &format!("{other}-{PARENT}-1"))]).await;
    assert_eq!(status, StatusCode::OK);
    let spans = lab.collector.wait(&unhex(other), 2).await;
    let (client, server) = hop(&spans);
    assert_eq!(client.span.parent_span_id, unhex(PARENT));
    assert_eq!(server.span.parent_span_id, client.span.span_id);
    assert_eq!(
        seen(&app_saw, "b3"),
        Some(format!(
            "{other}-{}-1-{}",
            hex(&server.span.span_id),
            hex(&client.span.span_id)
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_record_nothing_and_pass_their_context_on_unchanged() {
    let lab = lab("").await;
    let up = upstream(&lab.load, "web");
    let unsampled = "11111111111111111111111111111111";
    let header = format!("00-{unsampled}-{PARENT}-00");
    let (status, app_saw) = get(up, "/quiet", &[("traceparent", &header)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&app_saw, "traceparent"), Some(header));
    // Without a context, a proxy told nothing about starting traces starts none.
    let (_, app_saw) = get(up, "/bare", &[]).await;
    assert_eq!(seen(&app_saw, "traceparent"), None);
    // A sampled request after them: its spans come in the same order from the same proxies,
    // so once they are in, any span of the unsampled request would be too.
    let (status, _) = get(
        up,
        "/loud",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    lab.collector.wait(&unhex(TRACE), 2).await;
    assert!(lab.collector.of(&unhex(unsampled)).is_empty());
    let all = lab.collector.spans.lock().unwrap().clone();
    assert_eq!(all.len(), 2, "only the sampled request's spans: {all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_starts_traces_where_the_mesh_says_and_exemplars_name_them() {
    let lab = lab("").await;
    let up = upstream(&lab.starter, "web");
    let (status, app_saw) = get(up, "/started", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let parent = seen(&app_saw, "traceparent").expect("the starter's proxy began a trace");
    let parts: Vec<&str> = parent.split('-').collect();
    assert_eq!((parts[0], parts[3]), ("00", "01"));
    let spans = lab.collector.wait(&unhex(parts[1]), 2).await;
    let client = spans
        .iter()
        .find(|g| g.span.kind == SpanKind::Client as i32)
        .unwrap();
    assert!(client.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(client.service, "starter");
    // The latency histogram's bucket names the trace (OpenMetrics exemplar).
    let text = weft_tests::wait_metrics(lab.starter.admin_addr, "an exemplar", |t| {
        t.contains(&format!("trace_id=\"{}\"", parts[1]))
    })
    .await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("weft_response_latency_seconds_bucket")
                && l.contains(&format!("# {{trace_id=\"{}\"}}", parts[1]))),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_start_traces_for_their_requests_and_retries_are_child_spans() {
    let (flaky, _) = backends::http_echo_failing("flaky", 1, 503).await;
    let routes = r#"
[[routes.http]]
name = "web"
namespace = "test"
parent_refs = [{ name = "web" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/retried" } }]
backend_refs = [{ name = "flaky" }]
retry = { attempts = 2, codes = [503], backoff = "10ms" }

[[routes.http.rules]]
backend_refs = [{ name = "web" }]

[[observability.tracing.start]]
route = "test/web"
sampling = 1.0
"#;
    let lab = lab(routes).await;
    let flaky_decl = WorkloadDecl::serving("flaky", "flaky");
    let mut all = vec![
        WorkloadDecl::serving("web", "web"),
        WorkloadDecl::client("load"),
        WorkloadDecl::client("starter"),
        flaky_decl.clone(),
    ];
    all[0].port = Some(lab.mesh.port_of("web"));
    lab.mesh.set_workloads(&all).await;
    let _flaky_proxy = lab.mesh.proxy(&flaky_decl, Some(flaky.port()), &[]).await;
    let up = upstream(&lab.load, "web");
    weft_tests::wait_resolved(&lab.load, "flaky", |s| {
        !weft_tests::usable_ports(s).is_empty()
    })
    .await;

    // `load` starts no trace of its own, but the route says to.
    let (status, app_saw) = get(up, "/retried", &[]).await;
    assert_eq!(status, StatusCode::OK, "the retry masks the first 503");
    let parent = seen(&app_saw, "traceparent").expect("the route began a trace");
    let trace = unhex(parent.split('-').nth(1).unwrap());
    // The call, its two attempts, and the server span of each attempt.
    let spans = lab.collector.wait(&trace, 5).await;
    let call = spans
        .iter()
        .find(|g| g.span.kind == SpanKind::Client as i32 && g.span.name.starts_with("GET"))
        .expect("the call's span");
    assert_eq!(call.attr("weft.route").as_deref(), Some("test/web"));
    assert_eq!(call.attr("weft.retries").as_deref(), Some("1"));
    assert_eq!(call.attr("weft.backend").as_deref(), Some("flaky.test"));
    let mut attempts: Vec<&Got> = spans
        .iter()
        .filter(|g| g.span.name.starts_with("attempt"))
        .collect();
    attempts.sort_by_key(|g| g.attr("http.request.resend_count"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(
            a.span.parent_span_id, call.span.span_id,
            "a child of the call"
        );
        assert_eq!(a.attr("http.request.resend_count"), Some(n.to_string()));
    }
    assert_eq!(
        attempts[0].attr("http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(
        attempts[1].attr("http.response.status_code").as_deref(),
        Some("200")
    );
    // Each attempt's server span hangs under that attempt.
    let servers: Vec<&Got> = spans
        .iter()
        .filter(|g| g.span.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 2);
    for s in servers {
        assert!(
            attempts
                .iter()
                .any(|a| a.span.span_id == s.span.parent_span_id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_parse() {
    let mut lab = lab("").await;
    let up = upstream(&lab.load, "web");
    let (status, _) = get(
        up,
        "/logged?secret=1",
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The server's side, JSON from the mesh file.
    let line = tokio::time::timeout(WAIT, lab.web_log.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(v["direction"], "inbound");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/logged", "no query string");
    assert_eq!(v["status"], 200);
    assert_eq!(v["client_identity"], LOAD_ID);
    assert!(
        v.get("peer_identity").is_none(),
        "inbound, the client is the peer"
    );
    assert_eq!(
        v["protocol"], "HTTP/1.1",
        "as the client sent it, not as carried"
    );
    assert_eq!(v["trace_id"], TRACE);
    assert!(v["response_bytes"].as_u64().unwrap() > 0);
    assert!(v["duration_ms"].as_f64().unwrap() >= v["first_byte_ms"].as_f64().unwrap());
    // The caller's side, common-like from its flag.
    let line = tokio::time::timeout(WAIT, lab.load_log.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let re = regex_lite(&line);
    assert_eq!(re.0, "127.0.0.1");
    assert!(re.1.starts_with("\"GET /logged HTTP/1.1\" 200 "), "{line}");
    for field in [
        "direction=outbound",
        "service=web.test",
        &format!("peer={WEB_ID}"),
        &format!("trace_id={TRACE}"),
    ] {
        assert!(line.split(' ').any(|w| w == field), "{field} in {line}");
    }
    // A request nobody traces is logged with what the layers below learnt all the same.
    let (status, _) = get(up, "/untraced", &[]).await;
    assert_eq!(status, StatusCode::OK);
    loop {
        let line = tokio::time::timeout(WAIT, lab.load_log.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if line.contains("/untraced") {
            assert!(line.contains(&format!(" peer={WEB_ID}")), "{line}");
            assert!(!line.contains("trace_id="), "{line}");
            break;
        }
    }
}

/// The client address and what follows the bracketed time of a common-like line.
fn regex_lite(line: &str) -> (String, String) {
    let addr = line.split(' ').next().unwrap().to_string();
    let after = line
        .split_once("] ")
        .expect("a bracketed time")
        .1
        .to_string();
    (addr, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_dropped_spans_not_slow_requests() {
    // Accepts connections and reads nothing: every export hangs until its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let accepted = Arc::new(tokio::sync::Semaphore::new(0));
    let signal = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
            signal.add_permits(1);
        }
    });
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let file = format!(
        "[policy]\ndefault_inbound = \"allow\"\n\n[observability.tracing]\ncollector = \"{silent_addr}\"\nbuffer = 2\n"
    );
    let mesh = TestMesh::start(&[web.clone(), load.clone()], &file).await;
    let _web = mesh.proxy(&web, Some(app.port()), &[]).await;
    let load_proxy = mesh.proxy(&load, None, &["web"]).await;
    let up = upstream(&load_proxy, "web");
    let traced = |i: u32| format!("00-{i:032x}-{PARENT}-01");
    // The first spans' exports (one from each proxy) connect and then hang: from then on
    // neither exporter takes a span from its buffer.
    let (status, _) = get(up, "/", &[("traceparent", &traced(1))]).await;
    assert_eq!(status, StatusCode::OK);
    let _ = tokio::time::timeout(WAIT, accepted.acquire_many(2))
        .await
        .unwrap();
    // Each request is answered at once (`get` gives it `WAIT`); two spans fit the buffer and
    // the rest are dropped.
    for i in 2..42 {
        let (status, _) = get(up, "/", &[("traceparent", &traced(i))]).await;
        assert_eq!(status, StatusCode::OK);
    }
    wait_metric(
        load_proxy.admin_addr,
        "weft_trace_spans_total",
        &["outcome=\"dropped\""],
        38.0,
    )
    .await;
}
