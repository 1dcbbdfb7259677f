//! A mesh driven by a YAML config file: the same workloads, policy and live edits as TOML.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;

use http::StatusCode;
use weft_tests::{
    Format, TestMesh, WorkloadDecl, backends, upstream, usable_ports, wait_resolution,
    wait_resolved,
};

/// Only test/load may call api; nothing else is allowed by default.
const POLICY: &str = "policy:\n  default_inbound: deny\n  authorizations:\n    - service: api.test\n      allow: [\"test/load\"]";

async fn get(up: SocketAddr) -> (StatusCode, String) {
    let (status, backend, _) = weft_tests::get_through(&weft_tests::http_client(), up, "/").await;
    (status, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_mesh_file_runs_the_mesh_and_its_edits_apply() {
    let one = backends::http_echo("one").await;
    let two = backends::http_echo("two").await;
    let api1 = WorkloadDecl::serving("api-1", "api");
    let api2 = WorkloadDecl::client("api-2");
    let load = WorkloadDecl::client("load");
    let intruder = WorkloadDecl::client("intruder");
    let all = [api1.clone(), api2.clone(), load.clone(), intruder.clone()];
    let mesh = TestMesh::start_with(Format::Yaml, &all, POLICY, "").await;
    assert_eq!(
        mesh.config_path.extension().and_then(|e| e.to_str()),
        Some("yaml")
    );
    let _p1 = mesh.proxy(&api1, Some(one.port()), &[]).await;
    let p2 = mesh.proxy(&api2, Some(two.port()), &[]).await;
    let lp = mesh.proxy(&load, None, &["api"]).await;
    let ip = mesh.proxy(&intruder, None, &["api"]).await;

    // The workloads and the policy of the YAML file.
    assert_eq!(
        get(upstream(&lp, "api")).await,
        (StatusCode::OK, "one".to_string())
    );
    // Not allowed to call api, the intruder is told nothing about it, and its call is
    // refused with 403.
    wait_resolution(&ip, "api", |r| {
        matches!(r, weft_proxy::discovery::Resolution::Denied(_))
    })
    .await;
    assert_eq!(get(upstream(&ip, "api")).await.0, StatusCode::FORBIDDEN);

    // An edit of the YAML file moves the service.
    let mut moved1 = api1.clone();
    moved1.service = None;
    let mut moved2 = api2.clone();
    moved2.service = Some("api".into());
    mesh.set_workloads(&[moved1, moved2, load.clone(), intruder.clone()])
        .await;
    let port = mesh.port_of("api-2");
    // api-2's proxy must know that it serves api before it admits load.
    weft_tests::wait_serving(&p2, port).await;
    wait_resolved(&lp, "api", |s| usable_ports(s) == [port]).await;
    assert_eq!(
        get(upstream(&lp, "api")).await,
        (StatusCode::OK, "two".to_string())
    );
    assert!(
        std::fs::read_to_string(&mesh.config_path)
            .unwrap()
            .starts_with("mesh:\n"),
        "not a YAML file"
    );
}
