#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use super::*;

const WEB_API: &str = include_str!("../../../../tests/nomad/jobs/web-api.nomad.hcl");
const BATCH: &str = include_str!("../../../../tests/nomad/jobs/batch.nomad.hcl");
const WEB_API_EXAMPLE: &str = include_str!("../../../../deploy-nomad/examples/web-api.nomad.hcl");
const BATCH_EXAMPLE: &str = include_str!("../../../../deploy-nomad/examples/batch.nomad.hcl");

fn opts() -> Options {
    Options::new("weft.test")
}

fn explicit(upstreams: &[&str]) -> Options {
    Options {
        explicit: true,
        upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
        ..opts()
    }
}

fn ok(text: &str, opts: &Options) -> Injected {
    match inject(text, "job.nomad.hcl", opts) {
        Ok(i) => {
            assert_kept(text, &i.text);
            i
        }
        Err(e) => panic!("refused: {e:#}"),
    }
}

fn refused(text: &str, opts: &Options) -> String {
    match inject(text, "job.nomad.hcl", opts) {
        Ok(i) => panic!("injected:\n{}", i.text),
        Err(e) => format!("{e:#}"),
    }
}

/// The output is the input with text inserted, nothing removed or changed: every byte of the
/// input is found in the output, in order (a greedy match finds a subsequence when one
/// exists), and the output is HCL that parses and prints back unchanged.
fn assert_kept(input: &str, output: &str) {
    let mut rest = output.as_bytes().iter();
    for (i, b) in input.as_bytes().iter().enumerate() {
        assert!(
            rest.any(|o| o == b),
            "input byte {i} ({:?}, line {}) is not in the output:\n{output}",
            *b as char,
            line_of(input, i)
        );
    }
    if let Err(e) = hcl_edit::parser::parse_body(output) {
        panic!("the output does not parse: {e}\n{output}");
    }
}

/// The task blocks of a group of the output.
fn group<'a>(body: &'a Body, name: &str) -> &'a Block {
    body.get_blocks("job")
        .flat_map(|j| j.body.get_blocks("group"))
        .find(|g| label(g) == name)
        .unwrap()
}

fn task<'a>(g: &'a Block, name: &str) -> Option<&'a Block> {
    g.body.get_blocks("task").find(|t| label(t) == name)
}

fn strings(e: &Expression, text: &str) -> Vec<String> {
    e.as_array()
        .unwrap()
        .iter()
        .map(|v| text[v.span().unwrap()].trim_matches('"').to_string())
        .collect()
}

#[test]
fn the_examples_are_what_weft_inject_prints() {
    // deploy-nomad/examples/web-api.nomad.hcl: api transparent, then web explicit, in the
    // trust domain weft inject defaults to.
    let local = Options::new("weft.local");
    let api = Options {
        services: vec!["api".into()],
        ..local.clone()
    };
    let step = ok(WEB_API, &api);
    assert_eq!(
        step.report,
        [
            "job \"web-api\" group \"api\": meshed (transparent) as spiffe://weft.local/ns/<namespace>/sa/api",
            "job \"web-api\" group \"web\": left as it is: no service named by --service",
        ]
    );
    let upstream = Options {
        explicit: true,
        upstreams: vec!["api=127.0.0.1:9001".into()],
        ..local
    };
    let web = Options {
        services: vec!["web".into()],
        ..upstream.clone()
    };
    let out = ok(&step.text, &web);
    // The command is in the example's first lines.
    assert_eq!(
        out.text, WEB_API_EXAMPLE,
        "regenerate deploy-nomad/examples/web-api.nomad.hcl"
    );
    assert_kept(WEB_API, &out.text);

    let out = ok(BATCH, &upstream);
    assert_eq!(
        out.text, BATCH_EXAMPLE,
        "regenerate deploy-nomad/examples/batch.nomad.hcl"
    );
}

#[test]
fn transparent_mode_adds_the_init_task_the_sidecar_and_the_tag() {
    let out = ok(WEB_API, &opts());
    let body = hcl_edit::parser::parse_body(&out.text).unwrap();
    for name in ["api", "web"] {
        let g = group(&body, name);
        let proxy = task(g, PROXY_TASK).unwrap();
        let lifecycle = proxy.body.get_blocks("lifecycle").next().unwrap();
        assert_eq!(attr_str(&lifecycle.body, "hook"), Some("prestart"));
        assert_eq!(
            attr(&lifecycle.body, "sidecar").unwrap().as_bool(),
            Some(true)
        );
        assert_eq!(attr_str(&proxy.body, "user"), Some("2102"));
        let identity = proxy.body.get_blocks("identity").next().unwrap();
        assert_eq!(attr_str(&identity.body, "name"), Some("weft"));
        assert_eq!(attr(&identity.body, "file").unwrap().as_bool(), Some(true));
        let config = proxy.body.get_blocks("config").next().unwrap();
        let args = strings(attr(&config.body, "args").unwrap(), &out.text);
        let flag = |f: &str| {
            args.iter()
                .position(|a| a == f)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(flag("--platform").as_deref(), Some("nomad"));
        assert_eq!(flag("--workload").as_deref(), Some("${NOMAD_ALLOC_ID}"));
        assert_eq!(flag("--account").as_deref(), Some(name));
        assert_eq!(flag("--trust-domain").as_deref(), Some("weft.test"));
        assert_eq!(
            flag("--token-file").as_deref(),
            Some("${NOMAD_SECRETS_DIR}/nomad_weft.jwt")
        );
        assert!(args.contains(&"--transparent".to_string()), "{args:?}");
        // Tap listens inside the group and is dialled at the host's mapping of weft_tap; the
        // admin listener too, for Prometheus, at the mapping the service's tag names.
        assert_eq!(flag("--tap-addr").as_deref(), Some("0.0.0.0:7193"));
        assert_eq!(flag("--admin-addr").as_deref(), Some("0.0.0.0:7191"));
        for s in g.body.get_blocks("service") {
            let tags = strings(attr(&s.body, "tags").unwrap(), &out.text);
            assert!(
                tags.contains(&"weft-admin=${NOMAD_HOST_PORT_weft_admin}".to_string()),
                "{tags:?}"
            );
        }
        let network = g.body.get_blocks("network").next().unwrap();
        let port_labels: Vec<&str> = network
            .body
            .get_blocks("port")
            .filter_map(|p| p.labels.first().map(|l| l.as_str()))
            .collect();
        assert!(port_labels.contains(&"weft_admin"), "{port_labels:?}");
        assert_eq!(
            flag("--tap-advertise").as_deref(),
            Some("${NOMAD_HOST_ADDR_weft_tap}")
        );
        let destinations: Vec<&str> = proxy
            .body
            .get_blocks("template")
            .filter_map(|t| attr_str(&t.body, "destination"))
            .collect();
        assert_eq!(
            destinations,
            [
                "secrets/weft-trust-bundle.pem",
                "local/weft-control.env",
                "local/weft-access-log.env"
            ]
        );
        let init = task(g, INIT_TASK).unwrap();
        let lifecycle = init.body.get_blocks("lifecycle").next().unwrap();
        assert_eq!(
            attr(&lifecycle.body, "sidecar").unwrap().as_bool(),
            Some(false)
        );
        let config = init.body.get_blocks("config").next().unwrap();
        let args = strings(attr(&config.body, "args").unwrap(), &out.text);
        assert_eq!(
            args[..7],
            [
                "init",
                "--proxy-uid",
                "2102",
                "--inbound-port",
                "7143",
                "--outbound-port",
                "7140"
            ]
        );
        assert_eq!(
            strings(attr(&config.body, "cap_add").unwrap(), &out.text),
            ["NET_ADMIN", "NET_RAW"]
        );
        let service = g.body.get_blocks("service").next().unwrap();
        let tags = strings(attr(&service.body, "tags").unwrap(), &out.text);
        assert!(tags.contains(&"weft".to_string()), "{tags:?}");
        assert!(!tags.iter().any(|t| t.starts_with(INBOUND_TAG)), "{tags:?}");
        // No port of the proxy's own: peers reach the service where it registers.
        let network = g.body.get_blocks("network").next().unwrap();
        assert!(network.body.get_blocks("port").all(|p| label(p) != "weft"));
    }
    // web's check dials its service port, which the proxy now holds: said on stderr.
    let check = line_of(WEB_API, WEB_API.find("      check {").unwrap());
    let warning = format!(
        "job \"web-api\" group \"web\": warning: the http check (line {check}) dials the service port \"http\" through the proxy"
    );
    assert!(
        out.report.iter().any(|l| l.starts_with(&warning)),
        "{:?}",
        out.report
    );
}

#[test]
fn explicit_mode_adds_the_inbound_port_and_its_tag_and_no_init_task() {
    let out = ok(
        WEB_API,
        &explicit(&["api=127.0.0.1:9001", "db.data=127.0.0.1:9002"]),
    );
    let body = hcl_edit::parser::parse_body(&out.text).unwrap();
    let g = group(&body, "web");
    assert!(task(g, INIT_TASK).is_none());
    let network = g.body.get_blocks("network").next().unwrap();
    let port = network
        .body
        .get_blocks("port")
        .find(|p| label(p) == "weft")
        .unwrap();
    assert_eq!(
        attr(&port.body, "to")
            .unwrap()
            .as_number()
            .unwrap()
            .as_u64(),
        Some(7143)
    );
    let service = g.body.get_blocks("service").next().unwrap();
    let tags = strings(attr(&service.body, "tags").unwrap(), &out.text);
    assert_eq!(
        tags,
        [
            "weft",
            "weft-admin=${NOMAD_HOST_PORT_weft_admin}",
            "weft-inbound=${NOMAD_HOST_PORT_weft}"
        ]
    );
    let proxy = task(g, PROXY_TASK).unwrap();
    let config = proxy.body.get_blocks("config").next().unwrap();
    let args = strings(attr(&config.body, "args").unwrap(), &out.text);
    let joined = args.join(" ");
    assert!(
        joined.contains("--app-port ${NOMAD_PORT_http} --upstream api=127.0.0.1:9001 --upstream db.data=127.0.0.1:9002"),
        "{joined}"
    );
    assert!(!args.contains(&"--transparent".to_string()));
    // Checks reach the application's own port, which explicit mode leaves alone.
    assert!(
        !out.report.iter().any(|l| l.contains("warning")),
        "{:?}",
        out.report
    );
    // The api group's tags list keeps its element and gets the new ones after it.
    assert!(
        out.text
            .contains("tags     = [\"v1\", \"weft\", \"weft-admin=${NOMAD_HOST_PORT_weft_admin}\", \"weft-inbound=${NOMAD_HOST_PORT_weft}\"]"),
        "{}",
        out.text
    );
}

const PLAIN: &str = r#"job "shop" {
  group "cart" {
    network {
      mode = "bridge"
      port "http" { to = 8080 }
      port "health" { to = 8081 }
    }
    service {
      name = "cart" # the identity
      port = "http"
      check {
        type     = "http"
        port     = "health"
        path     = "/healthz"
        interval = "5s"
        timeout  = "1s"
      }
    }
    task "cart" {
      driver = "docker"
      config {
        image = "cart:1"
      }
    }
  }
}
"#;

#[test]
fn a_check_on_a_port_of_its_own_is_left_out_of_interception() {
    let out = ok(PLAIN, &opts());
    assert!(
        out.text.contains(
            r#"args       = ["init", "--proxy-uid", "2102", "--inbound-port", "7143", "--outbound-port", "7140", "--skip-inbound-ports", "7193,7191,${NOMAD_PORT_health}"]"#
        ),
        "{}",
        out.text
    );
    assert!(
        !out.report.iter().any(|l| l.contains("warning")),
        "{:?}",
        out.report
    );
    // A service without tags gets them on a line of its own, after the last attribute's
    // line, whose comment stays where it was.
    assert!(
        out.text
            .contains("      port = \"http\"\n      tags = [\"weft\", \"weft-admin=${NOMAD_HOST_PORT_weft_admin}\"]\n      check {"),
        "{}",
        out.text
    );
    assert!(out.text.contains("name = \"cart\" # the identity\n"));
}

#[test]
fn a_network_that_already_has_the_proxys_ports_is_refused() {
    for (label, what) in [
        ("weft_tap", "tap listener"),
        ("weft_admin", "admin listener"),
    ] {
        let text = PLAIN.replace(
            "      port \"health\" { to = 8081 }\n",
            &format!(
                "      port \"health\" {{ to = 8081 }}\n      port \"{label}\" {{ to = 9000 }}\n"
            ),
        );
        let err = refused(&text, &opts());
        assert!(
            err.contains(&format!("port labelled \"{label}\"")) && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn tags_are_added_to_whatever_form_the_list_has() {
    let with_tags = |tags: &str| {
        PLAIN.replace(
            "      port = \"http\"\n      check",
            &format!("      port = \"http\"\n      tags = {tags}\n      check"),
        )
    };
    // Each gets "weft" and the admin port's tag, `A`.
    let cases = [
        ("[]", "tags = [\"weft\", A]"),
        ("[ ]", "tags = [\"weft\", A ]"),
        ("[\"a\"]", "tags = [\"a\", \"weft\", A]"),
        ("[\"a\",]", "tags = [\"a\", \"weft\", A,]"),
        ("[\"weft\", \"a\"]", "tags = [\"weft\", \"a\", A]"),
        (
            "[\n        \"a\",\n        \"b\", # last\n      ]",
            "tags = [\n        \"a\",\n        \"b\",\n        \"weft\",\n        A, # last\n      ]",
        ),
        (
            "[\n        \"a\"\n      ]",
            "tags = [\n        \"a\",\n        \"weft\",\n        A\n      ]",
        ),
        ("var.tags", "tags = concat(var.tags, [\"weft\", A])"),
    ];
    for (tags, want) in cases {
        let out = ok(&with_tags(tags), &opts());
        let want = want.replace('A', "\"weft-admin=${NOMAD_HOST_PORT_weft_admin}\"");
        assert!(out.text.contains(&want), "{tags}: {}", out.text);
    }
    // Explicit mode's inbound tag is not added twice either.
    let out = ok(
        &with_tags("[\"weft\", \"weft-inbound=${NOMAD_HOST_PORT_weft}\"]"),
        &explicit(&[]),
    );
    assert!(
        out.text.contains(
            "tags = [\"weft\", \"weft-inbound=${NOMAD_HOST_PORT_weft}\", \"weft-admin=${NOMAD_HOST_PORT_weft_admin}\"]\n"
        ),
        "{}",
        out.text
    );
}

#[test]
fn a_network_block_on_one_line_gets_the_inbound_port_on_a_line_of_its_own() {
    let text = PLAIN.replace(
        "    network {\n      mode = \"bridge\"\n      port \"http\" { to = 8080 }\n      port \"health\" { to = 8081 }\n    }",
        "    network { mode = \"bridge\" }",
    )
    .replace("      port = \"http\"\n", "      port = 8080\n");
    let out = ok(&text, &explicit(&[]));
    assert!(
        out.text.contains(
            "    network { \n      mode = \"bridge\" \n      port \"weft\" { to = 7143 } # weft inject: the proxy's inbound listener\n      port \"weft_tap\" { to = 7193 } # weft inject: the proxy's tap listener (mutual TLS, for the control plane)\n      port \"weft_admin\" { to = 7191 } # weft inject: the proxy's admin listener (/metrics and probes, for Prometheus)\n    }"
        ),
        "{}",
        out.text
    );
    // A port given as a number is the application's port as it is.
    assert!(
        out.text.contains("\"--app-port\", \"8080\","),
        "{}",
        out.text
    );
}

#[test]
fn windows_line_endings_stay_windows_line_endings() {
    let text = PLAIN.replace('\n', "\r\n");
    let out = ok(&text, &opts());
    assert!(
        !out.text.replace("\r\n", "").contains('\n'),
        "{:?}",
        out.text
    );
}

#[test]
fn twice_injected_is_refused_naming_the_group() {
    let once = ok(WEB_API, &opts());
    let err = refused(&once.text, &opts());
    let api = once.text.find("task \"weft-proxy\"").unwrap();
    assert!(
        err.contains(&format!(
            "job.nomad.hcl:{}: job \"web-api\" group \"api\": already has the weft-proxy task",
            line_of(&once.text, api)
        )),
        "{err}"
    );
    assert!(err.contains("job \"web-api\" group \"web\": already has the weft-proxy task"));
    assert!(err.contains("nothing was injected"), "{err}");
}

#[test]
fn what_cannot_be_meshed_is_refused_naming_the_group_and_line() {
    let cases: &[(String, &str)] = &[
        (
            PLAIN.replace("mode = \"bridge\"", "mode = \"host\""),
            "job.nomad.hcl:3: job \"shop\" group \"cart\": network mode \"host\": the proxy needs mode = \"bridge\"",
        ),
        (
            PLAIN.replace("      mode = \"bridge\"\n", ""),
            "job.nomad.hcl:3: job \"shop\" group \"cart\": the network has the host's namespace (no mode means host): set mode = \"bridge\"",
        ),
        (
            PLAIN.replace(
                "    network {\n      mode = \"bridge\"\n      port \"http\" { to = 8080 }\n      port \"health\" { to = 8081 }\n    }\n",
                "",
            ),
            "job.nomad.hcl:2: job \"shop\" group \"cart\": no network block: the proxy needs the group's own network namespace; add network { mode = \"bridge\" }",
        ),
        (
            PLAIN.replace("      driver = \"docker\"\n", "      driver = \"docker\"\n      service {\n        name = \"side\"\n      }\n"),
            "job.nomad.hcl:21: job \"shop\" group \"cart\": task \"cart\" declares a service: meshing needs group-level services (move the service block from the task to the group)",
        ),
        (
            PLAIN.replace("      name = \"cart\" # the identity\n", "      name = \"cart\"\n      connect {\n        sidecar_service {}\n      }\n"),
            "job.nomad.hcl:8: job \"shop\" group \"cart\": a service with a connect block (Consul service mesh)",
        ),
        (
            PLAIN.replace("      name = \"cart\" # the identity\n", ""),
            "job.nomad.hcl:8: job \"shop\" group \"cart\": a service without a name",
        ),
        (
            PLAIN.replace("      name = \"cart\" # the identity\n", "      name = \"cart\"\n      provider = \"elsewhere\"\n"),
            "job.nomad.hcl:8: job \"shop\" group \"cart\": service provider \"elsewhere\"",
        ),
        (
            PLAIN.replace("    task \"cart\" {", "    task \"weft-init\" {"),
            "job.nomad.hcl:19: job \"shop\" group \"cart\": already has a task named weft-init",
        ),
    ];
    for (text, want) in cases {
        let err = refused(text, &opts());
        assert!(err.contains(want), "want {want}\ngot {err}");
    }
    // Explicit mode forwards to one port.
    let two = PLAIN.replace(
        "    task \"cart\" {",
        "    service {\n      name = \"cart-admin\"\n      port = \"health\"\n    }\n    task \"cart\" {",
    );
    let err = refused(&two, &explicit(&[]));
    assert!(
        err.contains("job \"shop\" group \"cart\": explicit mode forwards to one application port, and the services use \"health\", \"http\""),
        "{err}"
    );
    // ...and transparent mode meshes both, with the first service's identity, which both
    // services' instances then have (one proxy, one certificate).
    let out = ok(&two, &opts());
    assert!(out.report[0].ends_with("/sa/cart"), "{:?}", out.report);
    assert!(
        out.text
            .contains("      tags = [\"weft\", \"weft-account=cart\", \"weft-admin=${NOMAD_HOST_PORT_weft_admin}\"]\n      check {"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains(
            "      port = \"health\"\n      tags = [\"weft\", \"weft-account=cart\", \"weft-admin=${NOMAD_HOST_PORT_weft_admin}\"]\n    }"
        ),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("\"--account\", \"cart\","),
        "{}",
        out.text
    );
    // An account the services already share is the proxy's; differing ones are refused.
    let shared = two
        .replace(
            "      port = \"http\"\n",
            "      port = \"http\"\n      tags = [\"weft-account=shop\"]\n",
        )
        .replace(
            "      port = \"health\"\n",
            "      port = \"health\"\n      tags = [\"weft-account=shop\"]\n",
        );
    let out = ok(&shared, &opts());
    assert!(
        out.text.contains("\"--account\", \"shop\","),
        "{}",
        out.text
    );
    assert!(
        out.text.contains(
            "tags = [\"weft-account=shop\", \"weft\", \"weft-admin=${NOMAD_HOST_PORT_weft_admin}\"]"
        ),
        "{}",
        out.text
    );
    assert!(out.report[0].ends_with("/sa/shop"), "{:?}", out.report);
    let differing = two.replace(
        "      port = \"http\"\n",
        "      port = \"http\"\n      tags = [\"weft-account=shop\"]\n",
    );
    let err = refused(&differing, &opts());
    assert!(
        err.contains(
            "job \"shop\" group \"cart\": the services' weft-account= tags differ or some have none"
        ),
        "{err}"
    );
}

#[test]
fn files_that_are_not_jobs_are_refused_with_the_place() {
    let err = refused(
        "job \"x\" {\n  group \"g\" {\n    count = \n  }\n}\n",
        &opts(),
    );
    assert!(err.starts_with("job.nomad.hcl:3:"), "{err}");
    assert!(err.contains("not HCL that can be read"), "{err}");
    let err = refused("variable \"x\" {}\n", &opts());
    assert!(err.contains("job.nomad.hcl: no job block"), "{err}");
    let err = refused(
        "job \"x\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"docker\"\n    }\n  }\n}\n",
        &opts(),
    );
    assert!(
        err.contains("job.nomad.hcl: no group has a group-level service: nothing to mesh"),
        "{err}"
    );
}

#[test]
fn the_service_filter_picks_groups_and_must_match() {
    let only_web = Options {
        services: vec!["web".into()],
        ..opts()
    };
    let out = ok(WEB_API, &only_web);
    let body = hcl_edit::parser::parse_body(&out.text).unwrap();
    assert!(task(group(&body, "api"), PROXY_TASK).is_none());
    assert!(task(group(&body, "web"), PROXY_TASK).is_some());
    let none = Options {
        services: vec!["nope".into()],
        ..opts()
    };
    let err = refused(WEB_API, &none);
    assert!(
        err.contains("no group has a service named \"nope\" (--service)"),
        "{err}"
    );
    // A group the filter leaves out is not refused for what it lacks.
    let broken = WEB_API.replacen("mode = \"bridge\"", "mode = \"host\"", 1);
    ok(&broken, &only_web);
    refused(&broken, &opts());
}

#[test]
fn bad_options_are_refused() {
    let err = refused(PLAIN, &Options::new("Not A Domain"));
    assert!(err.contains("--trust-domain"), "{err}");
    let err = refused(
        PLAIN,
        &Options {
            upstreams: vec!["api=127.0.0.1:9001".into()],
            ..opts()
        },
    );
    assert!(err.contains("--upstream needs --explicit"), "{err}");
    let err = refused(PLAIN, &explicit(&["api"]));
    assert!(err.contains("expected service=ip:port"), "{err}");
    let err = refused(PLAIN, &explicit(&["api=10.0.0.1:9001"]));
    assert!(err.contains("listen on loopback"), "{err}");
}

#[test]
fn user_values_are_quoted_as_literals() {
    assert_eq!(quote("a\"b\\c${x}%{y}$z"), r#""a\"b\\c$${x}%%{y}$z""#);
    let image = Options {
        proxy_image: "registry.example:5000/weft-proxy@sha256:abc".into(),
        ..opts()
    };
    let out = ok(PLAIN, &image);
    assert!(
        out.text
            .contains("image      = \"registry.example:5000/weft-proxy@sha256:abc\"")
    );
}

#[test]
fn a_service_name_nomad_interpolates_is_handed_to_the_proxy_as_it_is() {
    let text = PLAIN.replace(
        "name = \"cart\" # the identity",
        "name = \"${NOMAD_JOB_NAME}-cart\"",
    );
    let out = ok(&text, &opts());
    assert!(
        out.text
            .contains("\"--account\", \"${NOMAD_JOB_NAME}-cart\","),
        "{}",
        out.text
    );
    assert!(
        out.report[0].ends_with("/sa/${NOMAD_JOB_NAME}-cart"),
        "{:?}",
        out.report
    );
    // With a second service, the account tag carries the same interpolation.
    let two = text.replace(
        "    task \"cart\" {",
        "    service {\n      name = \"cart-admin\"\n    }\n    task \"cart\" {",
    );
    let out = ok(&two, &opts());
    assert!(
        out.text.contains("\"weft-account=${NOMAD_JOB_NAME}-cart\""),
        "{}",
        out.text
    );
}
