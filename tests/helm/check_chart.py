"""The Helm chart, checked by Helm's own library (helm-python-sdk) and the Kubernetes 1.33
schemas (kubernetes-validate): lint, values schema, rendering of each documented variation,
every rendered object validated strictly, the mesh config file it renders accepted by
`weft check`, Weft's CRDs typed and described throughout and taking the objects users write,
and the ClusterRole granting no more than the adapter needs, in weft.dev exactly the CRDs'
resources. The Prometheus Operator's ServiceMonitor and PodMonitor, off by default, are checked
against what they scrape: the control plane's Service port and the token its replicas read, and
the admin port `weft inject` gives the proxy. `weft install` renders the same chart without
Helm: for each variation its output is validated the same way and must equal Helm's, once
generated secrets are set aside.

Usage: check_chart.py PATH/TO/weft
"""

import copy
import json
import pathlib
import subprocess
import sys
import tempfile

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy-k8s" / "weft"
KUBERNETES = "1.33.0"
NAMESPACE = "weft"

failures = []


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def render(chart, values):
    manifests = chart.render(values, name="weft", namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path, doc))
    return objects


def by_kind(objects, kind):
    return [o for _, o in objects if o.get("kind") == kind]


def weft_install(weft, over, extra=()):
    """`weft install` with the values `over` in a file: its objects, or an error message."""
    with tempfile.TemporaryDirectory() as d:
        f = pathlib.Path(d) / "values.yaml"
        f.write_text(yaml.safe_dump(over))
        r = subprocess.run(
            [weft, "install", "--namespace", NAMESPACE, "--values", str(f), *extra],
            capture_output=True,
            text=True,
        )
    if r.returncode != 0:
        return None, r.stderr
    return [("weft install", d) for d in yaml.safe_load_all(r.stdout) if d], None


def set_aside_generated(obj):
    """The object without what each render generates anew: keys, certificates, the rollout
    nonce, and who manages it."""
    obj = copy.deepcopy(obj)
    labels = obj["metadata"].get("labels", {})
    if "app.kubernetes.io/managed-by" in labels:
        labels["app.kubernetes.io/managed-by"] = "(manager)"
    if obj["kind"] == "Secret" and obj["metadata"]["name"] in ("weft-ca", "weft-webhook-tls"):
        obj["data"] = {k: "(generated)" for k in obj["data"]}
    if obj["kind"] == "MutatingWebhookConfiguration":
        for w in obj["webhooks"]:
            w["clientConfig"]["caBundle"] = "(generated)"
    if obj["kind"] == "Deployment":
        obj["spec"]["template"]["metadata"]["annotations"]["weft.dev/rollout"] = "(generated)"
    return obj


def compare_install(name, helm_objects, installed):
    """weft install's objects are Helm's, plus the release namespace."""
    key = lambda o: (o["kind"], o["metadata"]["name"])
    namespaces = [o for _, o in installed if o["kind"] == "Namespace"]
    if [n["metadata"]["name"] for n in namespaces] != [NAMESPACE]:
        fail(f"{name}: weft install creates namespaces {namespaces}, not {NAMESPACE}")
    ours = sorted((set_aside_generated(o) for _, o in installed if o["kind"] != "Namespace"), key=key)
    helms = sorted((set_aside_generated(o) for _, o in helm_objects), key=key)
    if [key(o) for o in ours] != [key(o) for o in helms]:
        fail(f"{name}: weft install renders {[key(o) for o in ours]}, Helm {[key(o) for o in helms]}")
        return
    for o, h in zip(ours, helms):
        if o != h:
            fail(f"{name}: weft install renders {key(o)} unlike Helm:\n{yaml.safe_dump(o)}\nHelm:\n{yaml.safe_dump(h)}")


def check_generated_root(weft, objects, origin):
    """The control plane starts on a generated root (Helm's genCA: RSA, PKCS#1; weft install's:
    ECDSA P-256, PKCS#8)."""
    import base64
    import select
    import time

    ca = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "weft-ca"][0]
    config = by_kind(objects, "ConfigMap")[0]["data"]["mesh.toml"]
    # The Kubernetes sections need a cluster; the CA does not.
    config = config.split("[platforms.kubernetes]")[0]
    control = str(pathlib.Path(weft).with_name("weft-control"))
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        for key in ("tls.crt", "tls.key"):
            (d / key).write_bytes(base64.b64decode(ca["data"][key]))
        config = (
            config.replace("/etc/weft/ca/", f"{d}/")
            .replace("/var/lib/weft", f"{d}/data")
            .replace("0.0.0.0:7443", "127.0.0.1:0")
            .replace("0.0.0.0:7080", "127.0.0.1:0")
            .replace("0.0.0.0:7081", "127.0.0.1:0")
            .replace("127.0.0.1:7082", "127.0.0.1:0")
        )
        (d / "mesh.toml").write_text(config)
        p = subprocess.Popen(
            [control, "--config", str(d / "mesh.toml")],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        log = ""
        try:
            while "control plane started" not in log and time.monotonic() < deadline:
                ready, _, _ = select.select([p.stderr], [], [], 1)
                if ready:
                    line = p.stderr.readline()
                    if not line:
                        break
                    log += line
        finally:
            p.kill()
            p.wait()
        if "control plane started" in log:
            print(f"ok   the control plane starts on the root {origin} generates")
        else:
            fail(f"the control plane did not start on the root {origin} generates: {log}")


CRDS = {
    "authorizationpolicies.weft.dev": "AuthorizationPolicy",
    "ratelimitpolicies.weft.dev": "RateLimitPolicy",
    "backendpolicies.weft.dev": "BackendPolicy",
    "routepolicies.weft.dev": "RoutePolicy",
}


def schema_gaps(schema, at):
    """Where a CRD's schema leaves a field untyped, undescribed or open to unknown fields."""
    gaps = []
    if "type" not in schema:
        gaps.append(f"{at}: no type")
    if "description" not in schema:
        gaps.append(f"{at}: no description")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        gaps.append(f"{at}: x-kubernetes-preserve-unknown-fields")
    for key, sub in schema.get("properties", {}).items():
        gaps += schema_gaps(sub, f"{at}.{key}")
    if "items" in schema:
        gaps += schema_gaps(schema["items"], f"{at}[]")
    if schema.get("type") == "object" and "properties" not in schema:
        gaps.append(f"{at}: an object without properties")
    return gaps


def check_crds(name, objects, rules):
    """Weft's CRDs are rendered, with typed and described schemas, a status subresource and
    standard conditions, and the ClusterRole grants exactly their resources in weft.dev."""
    crds = {c["metadata"]["name"]: c for c in by_kind(objects, "CustomResourceDefinition")}
    if sorted(crds) != sorted(CRDS):
        fail(f"{name}: CRDs {sorted(crds)}, not {sorted(CRDS)}")
        return
    labels = by_kind(objects, "ClusterRole")[0]["metadata"]["labels"]
    plurals = set()
    for crd_name, crd in crds.items():
        spec = crd["spec"]
        names = spec["names"]
        plurals.add(names["plural"])
        if crd["metadata"].get("labels") != labels:
            fail(f"{name}: {crd_name} is labelled {crd['metadata'].get('labels')}, not {labels}")
        if (spec["group"], names["kind"], spec["scope"], names.get("categories")) != (
            "weft.dev",
            CRDS[crd_name],
            "Namespaced",
            ["weft"],
        ):
            fail(f"{name}: {crd_name}: group, kind, scope or categories")
        if f"{names['plural']}.{spec['group']}" != crd_name:
            fail(f"{name}: {crd_name} is not named {names['plural']}.{spec['group']}")
        versions = spec["versions"]
        if [(v["name"], v["served"], v["storage"]) for v in versions] != [("v1alpha1", True, True)]:
            fail(f"{name}: {crd_name} versions {[v['name'] for v in versions]}")
            continue
        version = versions[0]
        if version.get("subresources") != {"status": {}}:
            fail(f"{name}: {crd_name} subresources {version.get('subresources')}")
        columns = [c["name"] for c in version.get("additionalPrinterColumns", [])]
        # What it applies to first (a RoutePolicy's route and rule), Accepted and Age last.
        first = "Route" if names["kind"] == "RoutePolicy" else "Service"
        if columns[0] != first or columns[-2:] != ["Accepted", "Age"]:
            fail(f"{name}: {crd_name} printer columns {columns}")
        schema = version["schema"]["openAPIV3Schema"]
        if "spec" not in schema.get("required", []):
            fail(f"{name}: {crd_name} does not require spec")
        for part in ("spec", "status"):
            for gap in schema_gaps(schema["properties"][part], part):
                fail(f"{name}: {crd_name}: {gap}")
        conditions = schema["properties"]["status"]["properties"]["conditions"]
        if (conditions.get("x-kubernetes-list-type"), conditions.get("x-kubernetes-list-map-keys")) != ("map", ["type"]):
            fail(f"{name}: {crd_name}: status.conditions is not a list map keyed by type")
        if sorted(conditions["items"]["properties"]) != sorted(
            ["type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"]
        ):
            fail(f"{name}: {crd_name}: conditions are not metav1.Conditions")
    granted = {
        x.split("/")[0] for r in rules if "weft.dev" in r["apiGroups"] for x in r["resources"]
    }
    if granted != plurals:
        fail(f"{name}: the ClusterRole grants {sorted(granted)} in weft.dev, the CRDs are {sorted(plurals)}")


MONITORING = "monitoring.coreos.com/v1"


def injected_admin_port(weft):
    """The name and number of the admin port `weft inject` gives the proxy, and the address its
    admin listener takes (WEFT_PROXY_ADMIN_ADDR); None when it cannot be found."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}]},
            },
        },
    }
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "1", "-subj", "/CN=weft root", "-keyout", str(d / "root.key"), "-out", str(d / "root.pem")],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            fail(f"openssl could not make a trust bundle for weft inject: {r.stderr}")
            return None
        (d / "web.yaml").write_text(json.dumps(deployment))
        r = subprocess.run([weft, "inject", str(d / "web.yaml"), "--trust-bundle", str(d / "root.pem")],
                           capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"weft inject failed: {r.stderr}")
        return None
    pod = yaml.safe_load(r.stdout)["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        if c["name"] == "weft-proxy":
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for p in c.get("ports", []):
                if p.get("name") == "weft-admin":
                    return p["name"], p["containerPort"], env.get("WEFT_PROXY_ADMIN_ADDR")
    fail("weft inject gave the proxy no port named weft-admin")
    return None


def check_monitors(name, objects, values, admin_port):
    """The ServiceMonitor and PodMonitor are there exactly when asked for, and scrape what
    exists: the control plane's Service port that reaches its HTTP listener, with the token its
    replicas read; the proxies' admin port as injection names it, on all addresses."""
    metrics = values["metrics"]
    monitors = [o for _, o in objects if o.get("apiVersion") == MONITORING]
    kinds = sorted(o["kind"] for o in monitors)
    want = sorted(k for k, on in (("ServiceMonitor", metrics["serviceMonitor"]["enabled"]),
                                  ("PodMonitor", metrics["podMonitor"]["enabled"])) if on)
    if kinds != want:
        fail(f"{name}: monitoring objects {kinds}, not {want}")
    for m in monitors:
        if m["metadata"].get("namespace") != NAMESPACE:
            fail(f"{name}: {m['kind']} in namespace {m['metadata'].get('namespace')}")
        extra = metrics["serviceMonitor" if m["kind"] == "ServiceMonitor" else "podMonitor"]["labels"]
        labels = m["metadata"].get("labels", {})
        if any(labels.get(k) != v for k, v in extra.items()):
            fail(f"{name}: {m['kind']} labels {labels} lack {extra}")
        if set(m["spec"]) - {"selector", "namespaceSelector", "endpoints", "podMetricsEndpoints"}:
            fail(f"{name}: {m['kind']} spec has {sorted(m['spec'])}")

    deployment = by_kind(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    mounts = {v["mountPath"]: v for v in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token = mounts.get("/var/lib/weft/http-token")
    config = by_kind(objects, "ConfigMap")[0]["data"]["mesh.toml"]
    if 'data_dir = "/var/lib/weft"' not in config or mounts.get("/var/lib/weft", {}).get("name") != "data":
        fail(f"{name}: the control plane's data_dir is no longer /var/lib/weft, where the token is mounted")
    if metrics["tokenSecret"]:
        secret = volumes.get(token["name"], {}).get("secret", {}) if token else {}
        if not token or token.get("subPath") != "token" or secret.get("secretName") != metrics["tokenSecret"]:
            fail(f"{name}: the key token of {metrics['tokenSecret']} is not mounted at /var/lib/weft/http-token: {token}, {secret}")
    elif token:
        fail(f"{name}: a token is mounted without metrics.tokenSecret")

    for sm in (m for m in monitors if m["kind"] == "ServiceMonitor"):
        services = [s for s in by_kind(objects, "Service")
                    if all(s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
        if [s["metadata"]["name"] for s in services] != ["weft-control"]:
            fail(f"{name}: the ServiceMonitor selects Services {[s['metadata']['name'] for s in services]}")
            continue
        if sm["spec"].get("namespaceSelector") != {"matchNames": [NAMESPACE]}:
            fail(f"{name}: the ServiceMonitor looks in {sm['spec'].get('namespaceSelector')}")
        ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
        container_ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        (endpoint,) = sm["spec"]["endpoints"]
        port = ports.get(endpoint.get("port"), {})
        if container_ports.get(port.get("targetPort")) != 7080 or 'http_addr = "0.0.0.0:7080"' not in config:
            fail(f"{name}: the ServiceMonitor's port {endpoint.get('port')} does not reach the HTTP listener (7080)")
        auth = endpoint.get("authorization", {})
        if (endpoint.get("path"), endpoint.get("interval")) != ("/metrics", metrics["serviceMonitor"]["interval"]):
            fail(f"{name}: the ServiceMonitor scrapes {endpoint.get('path')} every {endpoint.get('interval')}")
        if auth != {"type": "Bearer", "credentials": {"name": metrics["tokenSecret"], "key": "token"}}:
            fail(f"{name}: the ServiceMonitor presents {auth}, not the key token of {metrics['tokenSecret']}")

    for pm in (m for m in monitors if m["kind"] == "PodMonitor"):
        namespaces = values["mesh"]["namespaces"]
        want = {"matchNames": namespaces} if namespaces else {"any": True}
        if pm["spec"].get("namespaceSelector") != want:
            fail(f"{name}: the PodMonitor looks in {pm['spec'].get('namespaceSelector')}, not {want}")
        if pm["spec"].get("selector") != {}:
            fail(f"{name}: the PodMonitor selects {pm['spec'].get('selector')}; injected pods carry no label of their own")
        (endpoint,) = pm["spec"]["podMetricsEndpoints"]
        if (endpoint.get("path"), endpoint.get("interval")) != ("/metrics", metrics["podMonitor"]["interval"]):
            fail(f"{name}: the PodMonitor scrapes {endpoint.get('path')} every {endpoint.get('interval')}")
        if admin_port is not None:
            port_name, number, addr = admin_port
            if endpoint.get("port") != port_name or addr != f"0.0.0.0:{number}":
                fail(f"{name}: the PodMonitor scrapes port {endpoint.get('port')}; injected proxies serve /metrics on {port_name} ({addr})")


def check_crd_examples(objects):
    """Objects as users write them pass the CRDs' schemas (read as the API server reads them,
    an OpenAPI v3.0 exclusiveMinimum being a flag on minimum), and mistakes do not."""
    import jsonschema

    schemas = {
        c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for c in by_kind(objects, "CustomResourceDefinition")
    }
    meta = {"apiVersion": "weft.dev/v1alpha1", "metadata": {"name": "x", "namespace": "shop"}}
    good = {
        "reads": ("AuthorizationPolicy", {
            "service": "api",
            "from": ["shop/web", "spiffe://weft.local/*"],
            "to": [
                {"port": 8080, "method": "GET", "path": {"type": "PathPrefix", "value": "/v1"}},
                {"headers": [{"name": "x-tenant", "value": "a|b", "type": "RegularExpression"}]},
                {"grpc": {"service": "shop.Catalog"}},
            ],
        }),
        "an audited deny": ("AuthorizationPolicy", {"service": "api.shop", "action": "deny", "mode": "audit"}),
        "the older allow": ("AuthorizationPolicy", {"service": "api", "allow": ["*"]}),
        "a fractional rate": ("RateLimitPolicy", {
            "service": "api.shop",
            "requestsPerSecond": 0.5,
            "burst": 2,
            "perIdentity": True,
            "overrides": [{"clients": "jobs/*", "requestsPerSecond": 10}],
        }),
        "a backend policy": ("BackendPolicy", {
            "service": "api",
            "retryBudget": {"percent": 10, "minRetriesPerSecond": 1, "interval": "30s"},
            "failureAccrual": {"consecutiveFailures": 3, "firstPenalty": "500ms", "maxPenalty": "30s"},
            "limits": {"maxInFlight": 100, "maxQueue": 10},
        }),
        "a route policy": ("RoutePolicy", {
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web", "sectionName": "slow"},
            "timeouts": {"request": "10s", "backendRequest": "2s"},
            "retry": {"codes": [503], "attempts": 3, "backoff": "50ms", "idempotent": True},
            "fault": {"delay": {"fixed": "200ms", "percent": 10.5}, "abort": {"httpStatus": 503, "percent": 1},
                      "sources": ["shop/*"]},
            "limits": {"maxInFlight": 10, "maxQueue": 5},
        }),
        "a gRPC route policy": ("RoutePolicy", {
            "targetRef": {"kind": "GRPCRoute", "name": "users"},
            "retry": {"conditions": ["unavailable"], "idempotent": True},
            "fault": {"abort": {"grpcStatus": "unavailable", "percent": 5}},
        }),
        "a route's rate": ("RateLimitPolicy", {
            "service": "api",
            "requestsPerSecond": 5,
            "to": [{"path": {"type": "PathPrefix", "value": "/export"}, "method": "GET"}],
        }),
    }
    bad = {
        "no service": ("AuthorizationPolicy", {"from": ["*"]}),
        "an unknown action": ("AuthorizationPolicy", {"service": "api", "action": "maybe"}),
        "an empty from": ("AuthorizationPolicy", {"service": "api", "from": []}),
        "port 0": ("AuthorizationPolicy", {"service": "api", "to": [{"port": 0}]}),
        "a header without a value": ("AuthorizationPolicy", {"service": "api", "to": [{"headers": [{"name": "a"}]}]}),
        "a path type of another API": ("AuthorizationPolicy", {"service": "api", "to": [{"path": {"type": "Prefix"}}]}),
        "no rate": ("RateLimitPolicy", {"service": "api"}),
        "a budget over 100 %": ("BackendPolicy", {"service": "api", "retryBudget": {"percent": 101}}),
        "a route policy without a target": ("RoutePolicy", {"limits": {"maxInFlight": 1}}),
        "a route policy on a Gateway": ("RoutePolicy", {"targetRef": {"kind": "Gateway", "name": "gw"}}),
        "a limit of 0": ("BackendPolicy", {"service": "api", "limits": {"maxInFlight": 0}}),
        "a rate of 0": ("RateLimitPolicy", {"service": "api", "requestsPerSecond": 0}),
        "a burst of 0": ("RateLimitPolicy", {"service": "api", "requestsPerSecond": 1, "burst": 0}),
        "an override without clients": ("RateLimitPolicy", {"service": "api", "requestsPerSecond": 1, "overrides": [{"requestsPerSecond": 1}]}),
    }
    status = {"conditions": [{
        "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
        "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z",
    }]}
    for what, (kind, spec) in good.items():
        obj = {**meta, "kind": kind, "spec": spec, "status": status}
        errors = list(jsonschema.Draft4Validator(schemas[kind]).iter_errors(obj))
        if errors:
            fail(f"the {kind} CRD refuses {what}: {errors[0].message}")
    for what, (kind, spec) in bad.items():
        obj = {**meta, "kind": kind, "spec": spec}
        if jsonschema.Draft4Validator(schemas[kind]).is_valid(obj):
            fail(f"the {kind} CRD accepts {what}")
    print(f"ok   the CRDs take {len(good)} objects as users write them and refuse {len(bad)} mistakes")


def main():
    weft = sys.argv[1]
    chart = helm_python.Chart.load(str(CHART))
    defaults = chart.values

    report = helm_python.lint(str(CHART), strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    for m in report.get("messages", []):
        if m.get("severity", 0) >= 2:
            fail(f"helm lint: {m.get('path')}: {m.get('error')}")
    for e in report.get("errors", []) or []:
        fail(f"helm lint: {e}")

    ha = yaml.safe_load((CHART / "values-ha.yaml").read_text())
    variations = {
        "default": {},
        "values-ha.yaml": ha,
        "classic sidecar": {"proxy": {"nativeSidecar": False}},
        "existing CA secret": {"ca": {"existingSecret": "corp-root"}},
        "two namespaces, deny by default": {"mesh": {"namespaces": ["shop", "pay"], "defaultInbound": "deny"}},
        "webhook failurePolicy Fail": {"webhook": {"failurePolicy": "Fail"}},
        "no anti-affinity": {"controlPlane": {"antiAffinity": "none", "nodeSelector": {"pool": "system"}}},
        "ServiceMonitor and PodMonitor": {"metrics": {
            "tokenSecret": "weft-http-token",
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "monitoring"}},
            "podMonitor": {"enabled": True, "labels": {"release": "monitoring"}},
        }},
        "PodMonitor of two namespaces": {
            "mesh": {"namespaces": ["shop", "pay"]},
            "metrics": {"podMonitor": {"enabled": True}},
        },
        "shared HTTP token, no monitor": {"metrics": {"tokenSecret": "weft-http-token"}},
    }
    admin_port = injected_admin_port(weft)
    for name, over in variations.items():
        values = merge(defaults, over)
        try:
            chart.validate_schema(over)
            objects = render(chart, over)
        except helm_python.HelmError as e:
            fail(f"{name}: {e}")
            continue
        installed, error = weft_install(weft, over)
        if error:
            fail(f"{name}: weft install failed: {error}")
            installed = []
        for path, obj in objects + installed:
            if obj.get("apiVersion") == MONITORING:
                # Not a Kubernetes schema: check_monitors reads them.
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{name}: {path} {obj.get('kind')}/{obj['metadata'].get('name')}: {e.message}")
        if installed:
            compare_install(name, objects, installed)
        # The rendered mesh config file is one weft accepts.
        config = by_kind(objects, "ConfigMap")[0]["data"]["mesh.toml"]
        with tempfile.TemporaryDirectory() as d:
            f = pathlib.Path(d) / "mesh.toml"
            f.write_text(config)
            r = subprocess.run([weft, "check", str(f)], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{name}: weft check refused the rendered mesh.toml: {r.stderr}")
        deployment = by_kind(objects, "Deployment")[0]
        replicas = values["controlPlane"]["replicas"]
        if deployment["spec"]["replicas"] != replicas:
            fail(f"{name}: {deployment['spec']['replicas']} replicas, not {replicas}")
        if bool(by_kind(objects, "PodDisruptionBudget")) != (replicas > 1):
            fail(f"{name}: a PodDisruptionBudget only with several replicas")
        secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
        ca = values["ca"]["existingSecret"] or "weft-ca"
        mounted = [v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        if ca not in mounted:
            fail(f"{name}: the CA secret {ca} is not mounted ({mounted})")
        if ("weft-ca" in secrets) == bool(values["ca"]["existingSecret"]):
            fail(f"{name}: weft-ca generated {'weft-ca' in secrets} with existingSecret {values['ca']['existingSecret']!r}")
        webhook = by_kind(objects, "MutatingWebhookConfiguration")[0]["webhooks"][0]
        if webhook["failurePolicy"] != values["webhook"]["failurePolicy"]:
            fail(f"{name}: failurePolicy {webhook['failurePolicy']}")
        # The kubelet probes the control plane's probe listener, which has connection slots of
        # its own, never the http port that any client may flood.
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port_of = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container[probe]["httpGet"]["port"]
            if port_of.get(port, port) != 7081:
                fail(f"{name}: {probe} is on port {port}, not the probe listener's 7081")
        if 'probe_addr = "0.0.0.0:7081"' not in config:
            fail(f"{name}: mesh.toml does not open the probe listener on 7081")
        # `weft stat --kubernetes` port-forwards to 7082, the listener that asks no token: on
        # loopback inside the pod, and never a port that a Service or the pod's address exposes.
        if 'local_http_addr = "127.0.0.1:7082"' not in config:
            fail(f"{name}: mesh.toml does not open the loopback HTTP listener on 127.0.0.1:7082")
        if 7082 in port_of.values():
            fail(f"{name}: the control plane's container declares port 7082, which must stay inside the pod")
        for service in by_kind(objects, "Service"):
            targets = [p.get("targetPort") for p in service["spec"]["ports"]]
            if 7082 in targets or any(port_of.get(t) == 7082 for t in targets):
                fail(f"{name}: Service {service['metadata']['name']} reaches port 7082")
        rules = by_kind(objects, "ClusterRole")[0]["rules"]
        # Writes only to the status of Gateway API routes and of Weft's own policies;
        # everything else is read, plus creating TokenReviews.
        status_rules = [r for r in rules if all(x.endswith("/status") for x in r["resources"])]
        other_rules = [r for r in rules if r not in status_rules]
        verbs = sorted({v for r in other_rules for v in r["verbs"]})
        if verbs != ["create", "get", "list", "watch"]:
            fail(f"{name}: the ClusterRole grants {verbs}")
        status_verbs = sorted({v for r in status_rules for v in r["verbs"]})
        status_resources = sorted({(g, x) for r in status_rules for g in r["apiGroups"] for x in r["resources"]})
        if status_verbs != ["patch", "update"] or status_resources != [
            ("gateway.networking.k8s.io", "grpcroutes/status"),
            ("gateway.networking.k8s.io", "httproutes/status"),
            ("weft.dev", "authorizationpolicies/status"),
            ("weft.dev", "backendpolicies/status"),
            ("weft.dev", "ratelimitpolicies/status"),
            ("weft.dev", "routepolicies/status"),
        ]:
            fail(f"{name}: the ClusterRole writes {status_verbs} on {status_resources}")
        check_crds(name, objects, rules)
        check_monitors(name, objects, values, admin_port)
        print(f"ok   {name}: {len(objects)} objects, the same from weft install")

    check_crd_examples(render(chart, {}))
    check_generated_root(weft, render(chart, {}), "Helm")
    installed, error = weft_install(weft, {})
    if error:
        fail(f"weft install failed: {error}")
    else:
        check_generated_root(weft, installed, "weft install")
    # --ha is values-ha.yaml.
    installed, error = weft_install(weft, {}, ["--ha"])
    if error:
        fail(f"weft install --ha failed: {error}")
    else:
        compare_install("weft install --ha", render(chart, ha), installed)

    for name, bad in {
        "proxy as root": {"proxy": {"uid": 0}},
        "unknown key": {"mesh": {"trust_domain": "x"}},
        "bad failurePolicy": {"webhook": {"failurePolicy": "Maybe"}},
        "zero replicas": {"controlPlane": {"replicas": 0}},
        "a ServiceMonitor without the token": {"metrics": {"serviceMonitor": {"enabled": True}}},
        "a scrape interval without unit": {"metrics": {"podMonitor": {"interval": "30"}}},
    }.items():
        try:
            chart.validate_schema(bad)
            fail(f"the values schema accepted {name}")
        except helm_python.HelmError:
            print(f"ok   the values schema refuses {name}")
        _, error = weft_install(weft, bad)
        if error is None:
            fail(f"weft install accepted {name}")
        else:
            print(f"ok   weft install refuses {name}: {error.split('Stack backtrace')[0].strip().splitlines()[-1].strip()}")

    if failures:
        print(f"{len(failures)} chart check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
