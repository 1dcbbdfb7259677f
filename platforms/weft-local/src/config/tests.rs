#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;

use weft_core::config::{ConfigError, Loader, MeshConfig};

use super::*;

const GOOD: &str = r#"
[mesh]
name = "dev"
trust_domain = "weft.test"

[ca]
data_dir = "/var/lib/weft"

[[platforms.local.workloads]]
name = "api"
namespace = "demo"
service = "api"
port = 7143
"#;

fn load(text: &str) -> Result<MeshConfig, ConfigError> {
    Loader::new()
        .with_platform::<LocalSettings>()
        .load_str(text, Path::new("mesh.toml"))
}

fn err(text: &str) -> ConfigError {
    load(text).unwrap_err()
}

/// GOOD with `extra` appended as one more workload's keys.
fn with_workload(extra: &str) -> String {
    format!("{GOOD}\n[[platforms.local.workloads]]\nname = \"x\"\nnamespace = \"demo\"\n{extra}\n")
}

fn key(e: &ConfigError) -> &str {
    e.key.as_deref().unwrap_or_default()
}

#[test]
fn good_file_loads() {
    let cfg = load(GOOD).unwrap();
    let local = LocalSettings::of(&cfg).unwrap();
    assert!(local.enabled);
    assert_eq!(local.workloads[0].port, 7143);
    assert_eq!(LocalSettings::workloads(&cfg).count(), 1);
    assert_eq!(
        token_file(&cfg, "demo", "api"),
        Path::new("/var/lib/weft/tokens/demo/api")
    );
    let off = load(&GOOD.replace(
        "[[platforms.local.workloads]]",
        "[platforms.local]\nenabled = false\n[[platforms.local.workloads]]",
    ))
    .unwrap();
    assert_eq!(LocalSettings::workloads(&off).count(), 0);
}

#[test]
fn unknown_and_bad_keys_name_key_and_line() {
    let e = err(&GOOD.replace("port = 7143", "port = 7143\nprot = 1"));
    assert!(e.message.contains("prot"), "{e}");
    assert_eq!(key(&e), "platforms.local.workloads[0].prot", "{e}");
    assert_eq!(e.line, Some(14), "{e}");
    let e = err(&GOOD.replace("port = 7143", "port = \"lots\""));
    assert_eq!(key(&e), "platforms.local.workloads[0].port", "{e}");
    assert_eq!(e.line, Some(13), "{e}");
    let e = err(&format!("{GOOD}[platforms.local]\nenabeld = true\n"));
    assert_eq!(key(&e), "platforms.local.enabeld", "{e}");
}

#[test]
fn names_are_checked() {
    let e = err(&with_workload("port = 7200\nidentity = \"..\""));
    assert_eq!(key(&e), "platforms.local.workloads[1].identity", "{e}");
    let e = err(&with_workload("port = 7200\nidentity = \"a&b\""));
    assert!(e.to_string().contains("invalid name \"a&b\""), "{e}");
    let e = err(&with_workload("port = 7200").replace("name = \"x\"", "name = \"api\""));
    assert_eq!(key(&e), "platforms.local.workloads[1].name", "{e}");
    assert!(e.message.contains("declared twice"), "{e}");
}

#[test]
fn control_namespace_is_reserved() {
    let e = err(&GOOD.replace("namespace = \"demo\"", "namespace = \"weft-system\""));
    assert_eq!(key(&e), "platforms.local.workloads[0].namespace", "{e}");
    assert_eq!(e.line, Some(11), "{e}");
    assert!(e.message.contains("reserved for the control plane"), "{e}");
}

#[test]
fn workload_ports_cannot_take_the_control_planes() {
    // The default control listeners are 127.0.0.1:7443 and 127.0.0.1:7080.
    for (extra, field, other) in [
        ("port = 7443", "port", "control.grpc_addr"),
        (
            "port = 7200\napp_port = 7080",
            "app_port",
            "control.http_addr",
        ),
        (
            "port = 7200\nadmin_port = 7443",
            "admin_port",
            "control.grpc_addr",
        ),
        (
            "port = 7200\nupstreams = { api = 7080 }",
            "upstreams.api",
            "control.http_addr",
        ),
        (
            "address = \"0.0.0.0\"\nport = 7443",
            "port",
            "control.grpc_addr",
        ),
        (
            "port = 7200\napp_port = 7143",
            "app_port",
            "platforms.local.workloads[0].port",
        ),
    ] {
        let e = err(&with_workload(extra));
        assert_eq!(
            key(&e),
            format!("platforms.local.workloads[1].{field}"),
            "{e}"
        );
        assert!(
            e.message.contains(&format!("already used by {other}")),
            "{e}"
        );
    }
    // A different address is fine.
    assert!(load(&with_workload("address = \"127.0.0.2\"\nport = 7443")).is_ok());
    let e = err(&with_workload("port = 0"));
    assert_eq!(e.message, "port 0 is not allowed", "{e}");
}

#[test]
fn keys_without_effect_are_warned_about_with_their_line() {
    let text = with_workload(
        "port = 7200\nmeshed = false\napp_port = 7201\nadmin_port = 7202\ndemo = \"echo\"\nupstreams = { api = 7203 }",
    );
    let cfg = load(&text).unwrap();
    let keys: Vec<_> = cfg.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "platforms.local.workloads[1].app_port",
            "platforms.local.workloads[1].upstreams",
            "platforms.local.workloads[1].demo",
            "platforms.local.workloads[1].admin_port",
        ]
    );
    assert_eq!(
        cfg.warnings[0].to_string(),
        "mesh.toml:20: key `platforms.local.workloads[1].app_port`: warning: \
         has no effect with meshed = false: no proxy runs for this workload"
    );
    // The same keys on a meshed workload are used, so not warned about.
    let meshed = load(&with_workload(
        "port = 7200\napp_port = 7201\nadmin_port = 7202",
    ))
    .unwrap();
    assert!(meshed.warnings.is_empty(), "{:?}", meshed.warnings);
}

#[test]
fn references_to_services_no_local_workload_serves_are_warnings() {
    let text = format!(
        "{}\n[[policy.authorizations]]\nservice = \"billing.demo\"\nallow = [\"*\"]\n",
        with_workload("port = 7200\napp_port = 7201\nupstreams = { payments = 7203, api = 7204 }")
    );
    let cfg = load(&text).unwrap();
    let warnings: Vec<_> = cfg.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "mesh.toml:20: key `platforms.local.workloads[1].upstreams.payments`: warning: \
             no local workload serves service payments.demo; calls to it fail until a platform reports it",
            "mesh.toml:23: key `policy.authorizations[0].service`: warning: \
             no local workload serves service billing.demo; the rule applies once a platform reports it",
        ]
    );
}

#[test]
fn extra_ports_and_states_are_checked() {
    let with = |extra: &str| format!("{GOOD}{extra}");
    let ok = load(&with(
        "state = \"terminating\"\n[[platforms.local.workloads.ports]]\nservice = \"admin\"\nport = 9090\nprotocol = \"grpc\"\n",
    ))
    .unwrap();
    let w = &LocalSettings::of(&ok).unwrap().workloads[0];
    assert_eq!(w.state, EndpointState::Terminating);
    assert_eq!(w.served_ports().count(), 2);
    // Two ports of one service port that disagree on the protocol: the second is named.
    let e = err(&with(
        "[[platforms.local.workloads.ports]]\nservice = \"api\"\nport = 9090\nprotocol = \"grpc\"\n",
    ));
    assert_eq!(
        key(&e),
        "platforms.local.workloads[0].ports[0].protocol",
        "{e}"
    );
    assert!(
        e.message
            .contains("is auto in platforms.local.workloads[0];"),
        "{e}"
    );
    // A port the workload already listens on.
    let e = err(&with(
        "[[platforms.local.workloads.ports]]\nservice = \"admin\"\nport = 7143\n",
    ));
    assert_eq!(key(&e), "platforms.local.workloads[0].ports[0].port", "{e}");
    let e = err(&with("state = \"gone\"\n"));
    assert_eq!(key(&e), "platforms.local.workloads[0].state", "{e}");
}

/// The commented example that `weft dev` embeds must stay valid.
#[test]
fn configs_mesh_toml_is_valid() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/mesh.toml"
    ));
    let cfg = Loader::new()
        .with_platform::<LocalSettings>()
        .load_str(&std::fs::read_to_string(path).unwrap(), path)
        .unwrap();
    assert_eq!(LocalSettings::workloads(&cfg).count(), 4);
    assert_eq!(cfg.authorization_rules.len(), 1);
    assert_eq!(cfg.http_routes.len(), 1, "the demo's canary");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn virtual_addresses_belong_to_one_service() {
    let vip = "virtual_ip = \"10.96.0.10\"";
    let cfg = load(&GOOD.replace("port = 7143", &format!("port = 7143\n{vip}"))).unwrap();
    let services = crate::LocalPlatform::services_of(&cfg);
    assert_eq!(
        services[0].virtual_ips,
        ["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    // A second workload of the same service may repeat it; another service may not take it.
    let same = with_workload(&format!("service = \"api\"\nport = 7200\n{vip}"));
    let same = same.replace("port = 7143", &format!("port = 7143\n{vip}"));
    assert!(load(&same).is_ok());
    let other = with_workload(&format!("service = \"web\"\nport = 7200\n{vip}"));
    let other = other.replace("port = 7143", &format!("port = 7143\n{vip}"));
    let e = err(&other);
    assert_eq!(key(&e), "platforms.local.workloads[1].virtual_ip", "{e}");
    assert!(
        e.message.contains("already a virtual address of api.demo"),
        "{e}"
    );
}
