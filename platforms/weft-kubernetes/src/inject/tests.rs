use serde_json::json;

use super::*;

/// An injector with the default settings, for this crate's tests.
pub(crate) fn injector() -> Injector {
    Injector {
        settings: InjectSettings::default(),
        trust_domain: "weft.test".into(),
        trust_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        token_audience: "weft".into(),
    }
}

fn deployment(annotations: serde_json::Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": "web",
                    "initContainers": [{"name": "migrate", "image": "web:1"}],
                    "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}],
                    "someFutureField": {"kept": true},
                },
            },
        },
    })
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn a_deployment_gets_the_init_container_and_a_native_sidecar() {
    let mut doc = deployment(
        json!({"weft.dev/skip-inbound-ports": "22, 9000-9010", "weft.dev/skip-outbound-ports": "5432"}),
    );
    let outcome = injector().inject_manifest(&mut doc).unwrap();
    assert_eq!(outcome, [Outcome::Injected]);
    let spec = &doc["spec"]["template"]["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["weft-init", "weft-proxy", "migrate"],
        "the proxy starts before the application's own init containers"
    );
    assert_eq!(names(&spec["containers"]), ["web"]);
    let init = &spec["initContainers"][0];
    assert_eq!(
        init["args"],
        json!([
            "init",
            "--proxy-uid",
            "2102",
            "--inbound-port",
            "7143",
            "--outbound-port",
            "7140",
            "--skip-inbound-ports",
            "7192,7191,7193,22,9000-9010",
            "--skip-outbound-ports",
            "5432"
        ])
    );
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    // Every kubelet probe goes to the probe listener, which has slots of its own: a flood of
    // the admin port (metrics) cannot fail them.
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/live"),
    ] {
        assert_eq!(
            proxy[probe]["httpGet"],
            json!({"path": path, "port": 7192}),
            "{probe}"
        );
    }
    assert_eq!(env(proxy, "WEFT_PROXY_PROBE_ADDR")["value"], "0.0.0.0:7192");
    assert_eq!(env(proxy, "WEFT_PROXY_ADMIN_ADDR")["value"], "0.0.0.0:7191");
    assert_eq!(env(proxy, "WEFT_PROXY_TAP_ADDR")["value"], "0.0.0.0:7193");
    assert_eq!(
        proxy["ports"],
        json!([
            {"name": "weft-inbound", "containerPort": 7143, "protocol": "TCP"},
            {"name": "weft-admin", "containerPort": 7191, "protocol": "TCP"},
            {"name": "weft-probe", "containerPort": 7192, "protocol": "TCP"},
            {"name": "weft-tap", "containerPort": 7193, "protocol": "TCP"},
        ])
    );
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(env(proxy, "WEFT_PROXY_PLATFORM")["value"], "kubernetes");
    assert_eq!(env(proxy, "WEFT_PROXY_TRANSPARENT")["value"], "true");
    assert_eq!(
        env(proxy, "WEFT_PROXY_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert!(
        env(proxy, "WEFT_PROXY_TRUST_BUNDLE_PEM")["value"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let volume = spec["volumes"].as_array().unwrap().last().unwrap();
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "weft"
    );
    assert_eq!(
        doc["spec"]["template"]["metadata"]["annotations"]["weft.dev/proxy-version"],
        env!("CARGO_PKG_VERSION")
    );
    // What the injector does not know passes through.
    assert_eq!(spec["someFutureField"], json!({"kept": true}));
    assert_eq!(doc["spec"]["replicas"], 2);
}

#[test]
fn older_clusters_get_a_classic_sidecar() {
    let mut inj = injector();
    inj.settings.native_sidecar = false;
    let mut doc = deployment(json!({}));
    inj.inject_manifest(&mut doc).unwrap();
    let spec = &doc["spec"]["template"]["spec"];
    assert_eq!(names(&spec["initContainers"]), ["weft-init", "migrate"]);
    assert_eq!(names(&spec["containers"]), ["weft-proxy", "web"]);
    assert!(spec["containers"][0].get("restartPolicy").is_none());
}

#[test]
fn each_kind_has_its_template_and_others_pass_through() {
    let template = json!({"metadata": {}, "spec": {"containers": [{"name": "app", "image": "a"}]}});
    let cases = [
        (
            "Pod",
            json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]}),
        ),
        (
            "StatefulSet",
            json!({"kind": "StatefulSet", "spec": {"template": template}}),
        ),
        (
            "DaemonSet",
            json!({"kind": "DaemonSet", "spec": {"template": template}}),
        ),
        (
            "ReplicaSet",
            json!({"kind": "ReplicaSet", "spec": {"template": template}}),
        ),
        (
            "Job",
            json!({"kind": "Job", "spec": {"template": template}}),
        ),
        (
            "CronJob",
            json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template}}}}),
        ),
    ];
    for (kind, mut doc) in cases {
        assert_eq!(
            injector().inject_manifest(&mut doc).unwrap(),
            [Outcome::Injected],
            "{kind}"
        );
        let pointer = template_pointer(kind).unwrap();
        let spec = &doc.pointer(pointer).unwrap()["spec"];
        assert_eq!(
            names(&spec["initContainers"]),
            ["weft-init", "weft-proxy"],
            "{kind}"
        );
    }
    let mut service = json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": []}});
    let before = service.clone();
    assert_eq!(
        injector().inject_manifest(&mut service).unwrap(),
        [Outcome::PassedThrough]
    );
    assert_eq!(service, before);
    let mut list = json!({"kind": "List", "items": [before.clone(), cases_pod()]});
    assert_eq!(
        injector().inject_manifest(&mut list).unwrap(),
        [Outcome::PassedThrough, Outcome::Injected]
    );
}

fn cases_pod() -> Value {
    json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}})
}

#[test]
fn pods_that_must_not_be_injected_are_left_alone() {
    let pod = |ns: &str, meta: Value, spec: Value| {
        let mut p = json!({"kind": "Pod", "metadata": meta, "spec": spec});
        p["metadata"]["namespace"] = json!(ns);
        p
    };
    let app = json!({"containers": [{"name": "app"}]});
    let cases = [
        (
            pod("kube-system", json!({}), app.clone()),
            Skip::SystemNamespace,
        ),
        (
            pod(
                "shop",
                json!({}),
                json!({"hostNetwork": true, "containers": [{"name": "app"}]}),
            ),
            Skip::HostNetwork,
        ),
        (
            pod(
                "shop",
                json!({}),
                json!({"containers": [{"name": "app"}, {"name": "weft-proxy"}]}),
            ),
            Skip::AlreadyInjected,
        ),
        (
            pod(
                "shop",
                json!({"labels": {"weft.dev/control-plane": "true"}}),
                app.clone(),
            ),
            Skip::ControlPlane,
        ),
        (
            pod(
                "shop",
                json!({"annotations": {"weft.dev/inject": "disabled"}}),
                app.clone(),
            ),
            Skip::Disabled,
        ),
    ];
    for (mut doc, why) in cases {
        let before = doc.clone();
        assert_eq!(
            injector().inject_manifest(&mut doc).unwrap(),
            [Outcome::Skipped(why.clone())],
            "{why}"
        );
        assert_eq!(doc, before, "{why}: the pod was changed");
    }
    // Already injected: injecting the output again changes nothing.
    let mut once = deployment(json!({}));
    injector().inject_manifest(&mut once).unwrap();
    let mut twice = once.clone();
    assert_eq!(
        injector().inject_manifest(&mut twice).unwrap(),
        [Outcome::Skipped(Skip::AlreadyInjected)]
    );
    assert_eq!(once, twice);
}

#[test]
fn the_pod_annotation_wins_over_the_namespace() {
    let t = |pod: Option<&str>| {
        let mut t = json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}});
        if let Some(v) = pod {
            t["metadata"]["annotations"] = json!({"weft.dev/inject": v});
        }
        t
    };
    assert_eq!(decide("shop", Some("enabled"), &t(None)).unwrap(), None);
    assert_eq!(
        decide("shop", Some("enabled"), &t(Some("disabled"))).unwrap(),
        Some(Skip::Disabled)
    );
    assert_eq!(
        decide("shop", Some("disabled"), &t(Some("enabled"))).unwrap(),
        None
    );
    assert_eq!(
        decide("shop", None, &t(None)).unwrap(),
        Some(Skip::NotEnabled)
    );
    assert!(matches!(
        decide("shop", None, &t(Some("yes"))),
        Err(InjectError::Annotation { .. })
    ));
}

#[test]
fn bad_port_annotations_are_refused_with_their_name() {
    for bad in ["0", "http", "90-80", "70000"] {
        let mut doc = deployment(json!({"weft.dev/skip-inbound-ports": bad}));
        let err = injector().inject_manifest(&mut doc).unwrap_err();
        assert!(
            err.to_string().contains("weft.dev/skip-inbound-ports"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_access_log_annotation_reaches_the_proxy_and_a_bad_one_is_refused() {
    let mut doc = deployment(json!({"weft.dev/access-log": "json"}));
    injector().inject_manifest(&mut doc).unwrap();
    let proxy = &doc["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(env(proxy, "WEFT_PROXY_ACCESS_LOG")["value"], "json");
    let mut quiet = deployment(json!({}));
    injector().inject_manifest(&mut quiet).unwrap();
    let proxy = &quiet["spec"]["template"]["spec"]["initContainers"][1];
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "WEFT_PROXY_ACCESS_LOG"),
        "without the annotation the mesh file decides"
    );
    let mut bad = deployment(json!({"weft.dev/access-log": "loud"}));
    let err = injector().inject_manifest(&mut bad).unwrap_err();
    assert!(err.to_string().contains("weft.dev/access-log"), "{err}");
}

#[test]
fn http_https_tcp_and_grpc_probes_go_through_the_proxys_probe_port() {
    let mut pod = json!({
        "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                               "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                              "periodSeconds": 3},
            "readinessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"grpc": {"port": 9090}, "failureThreshold": 30},
        }, {
            "name": "tls",
            "livenessProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
            "readinessProbe": {"grpc": {"port": 9090, "service": "shop.Cart"}},
            "startupProbe": {"exec": {"command": ["true"]}},
        }, {
            "name": "elsewhere",
            "livenessProbe": {"httpGet": {"path": "/", "port": 80, "host": "example.com"}},
            "readinessProbe": {"httpGet": {"path": "/", "port": "undeclared"}},
        }]},
    });
    injector().inject_manifest(&mut pod).unwrap();
    let rewritten = |c: usize, probe: &str| pod["spec"]["containers"][c][probe].clone();
    assert_eq!(
        rewritten(0, "livenessProbe"),
        json!({"httpGet": {"path": "/app-health/web/live", "port": 7192, "scheme": "HTTP"}, "periodSeconds": 3})
    );
    assert_eq!(
        rewritten(0, "readinessProbe"),
        json!({"httpGet": {"path": "/app-health/web/ready", "port": 7192, "scheme": "HTTP"}})
    );
    assert_eq!(
        rewritten(0, "startupProbe"),
        json!({"httpGet": {"path": "/app-health/web/startup", "port": 7192, "scheme": "HTTP"}, "failureThreshold": 30}),
        "a gRPC probe becomes an HTTP one on the probe port"
    );
    assert_eq!(
        rewritten(1, "livenessProbe"),
        json!({"httpGet": {"path": "/app-health/tls/live", "port": 7192, "scheme": "HTTP"}})
    );
    assert_eq!(
        rewritten(1, "startupProbe"),
        json!({"exec": {"command": ["true"]}})
    );
    assert_eq!(
        rewritten(2, "livenessProbe")["httpGet"]["host"],
        "example.com",
        "a probe of another host is left alone"
    );
    assert_eq!(
        rewritten(2, "readinessProbe")["httpGet"]["port"],
        "undeclared"
    );
    let proxy = &pod["spec"]["initContainers"][1];
    let probes: Value = serde_json::from_str(
        env(proxy, "WEFT_PROXY_APP_PROBES")["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        probes,
        json!({
            "web/live": {"port": 8080, "path": "/healthz", "scheme": "http",
                         "headers": [{"name": "X-Probe", "value": "1"}]},
            "web/ready": {"port": 8080},
            "web/startup": {"port": 9090, "grpc_service": ""},
            "tls/live": {"port": 8443, "path": "/", "scheme": "https", "headers": []},
            "tls/ready": {"port": 9090, "grpc_service": "shop.Cart"},
        })
    );
}
