#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/) from the repository's
own fixtures: the config files of configs/ and tests/configs/, the Helm chart and its values,
the Nomad job specs of deploy-nomad/, and API objects and messages shaped as the fakes and the
unit tests under tests/src and the crates build them. Run it from anywhere; it replaces the
corpora. Needs only python3 (and openssl for the RS256 tokens and a real ClientHello)."""

import base64
import json
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


def copy_files(target, paths):
    for p in paths:
        put(target, p.name, p.read_bytes())


# === the mesh config loader ===
cfgs = [ROOT / "configs" / "mesh.toml"] + sorted((ROOT / "tests" / "configs").glob("*/*"))
copy_files("config_toml", [p for p in cfgs if p.suffix == ".toml"])
copy_files("config_yaml", [p for p in cfgs if p.suffix in (".yaml", ".yml")])

# === the admission webhook ===
def pod_review(ns, annotations, operation, uid="705ab4f5-6393-11e8-b7cc-42010a800002"):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": operation,
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-7d4b9c-", "namespace": ns,
                             "labels": {"app": "web"}, "annotations": annotations},
                "spec": {"serviceAccountName": "web",
                         "containers": [{"name": "web", "image": "web:1",
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    }


put("admission_review", "create", js(pod_review("shop", {}, "CREATE")))
put("admission_review", "update", js(pod_review("shop", {}, "UPDATE")))
put("admission_review", "outside", js(pod_review("outside", {"weft.dev/inject": "enabled"}, "CREATE")))
put("admission_review", "opt-out", js(pod_review("off", {"weft.dev/inject": "disabled"}, "CREATE")))
put("admission_review", "annotations", js(pod_review("shop", {
    "weft.dev/inject": "enabled", "weft.dev/opaque-ports": "5432,http",
    "weft.dev/skip-inbound-ports": "9090", "weft.dev/skip-outbound-ports": "53"}, "CREATE")))
put("admission_review", "not-json", b"{\"apiVersion\": ")

# === the Nomad JWT verifier ===
KEY = ROOT / "tests" / "keys" / "workload-identity-1.pem"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def rs256(header, claims):
    signing = f"{b64u(header)}.{b64u(claims)}"
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(KEY)],
                         input=signing.encode(), capture_output=True, check=True).stdout
    return f"{signing}.{b64u(sig)}"


header = js({"alg": "RS256", "typ": "JWT", "kid": "weft-test-key-1"})
claims = js({"aud": ["weft"], "iat": 1699999990, "nbf": 1699999990, "exp": 1700003600,
             "jti": "a", "sub": "global:default:web:web:weft-proxy:weft",
             "nomad_namespace": "default", "nomad_job_id": "web",
             "nomad_allocation_id": "5f2a9c1e-0b7d-4e3a-9f61-2c8d4b7a1e90",
             "nomad_task": "weft-proxy"})
service_claims = js({"aud": "weft", "exp": 1700003600, "nomad_namespace": "default",
                     "nomad_job_id": "web", "nomad_allocation_id": "x",
                     "nomad_service": "web"})
put("nomad_jwt", "token", b"\x00" + rs256(header, claims).encode())
put("nomad_jwt", "token-alg-none",
    b"\x00" + f"{b64u(js({'alg': 'none', 'typ': 'JWT'}))}.{b64u(claims)}.".encode())
put("nomad_jwt", "claims", b"\x01" + header + b"\x00" + claims)
put("nomad_jwt", "claims-service", b"\x01" + header + b"\x00" + service_claims)
put("nomad_jwt", "claims-expired", b"\x01" + header + b"\x00" + js({"aud": "weft", "exp": 1}))
put("nomad_jwt", "jwks", b"\x02" + js({"keys": [{"kty": "RSA", "kid": "weft-test-key-1",
                                              "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"}]}))

# === Kubernetes objects ===
def namespace(name, inject=None):
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    if inject:
        ns["metadata"]["annotations"] = {"weft.dev/inject": inject}
    return ns


def pod(ns, name, account, meshed, ip, opaque=None):
    p = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"namespace": ns, "name": name, "uid": name + "-uid", "labels": {"app": name}},
         "spec": {"serviceAccountName": account,
                  "initContainers": [{"name": "weft-proxy", "image": "weft-proxy:test",
                                      "restartPolicy": "Always"}] if meshed else [],
                  "containers": [{"name": "app", "image": "app:test",
                                  "ports": [{"name": "db", "containerPort": 5432}]}]},
         "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    if opaque:
        p["metadata"]["annotations"] = {"weft.dev/opaque-ports": opaque}
    return p


def service(ns, name, ip, ports, annotations=None):
    s = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
         "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports,
                  "selector": {"svc": name}}}
    if annotations:
        s["metadata"]["annotations"] = annotations
    return s


def slice_(ns, name, svc, ports, endpoints, family="IPv4"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family, "ports": ports, "endpoints": endpoints}


def ep(ip, pod_name=None, ready=True, serving=True, terminating=False, ns="shop"):
    e = {"addresses": [ip], "conditions": {"ready": ready, "serving": serving,
                                           "terminating": terminating}}
    if pod_name:
        e["targetRef"] = {"kind": "Pod", "namespace": ns, "name": pod_name}
    return e


put("kube_objects", "one-service", js({
    "namespaces": [namespace("shop", "enabled")],
    "services": [service("shop", "api", "10.96.0.10",
                         [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}])],
    "slices": [slice_("shop", "api-1", "api", [{"name": "http", "port": 8080, "protocol": "TCP"}],
                      [ep("10.0.0.1", "api-0"), ep("10.0.0.2", "api-1", ready=False, terminating=True),
                       ep("10.0.0.3")])],
    "pods": [pod("shop", "api-0", "api", True, "10.0.0.1"), pod("shop", "api-1", "api", False, "10.0.0.2")],
}))
put("kube_objects", "multi-port", js({
    "services": [service("db", "pg", "10.96.0.20",
                         [{"name": "tcp-pg", "port": 5432, "targetPort": "db", "protocol": "TCP"},
                          {"name": "grpc-api", "port": 9000, "targetPort": 9000, "appProtocol": "grpc"},
                          {"name": "metrics", "port": 9100, "protocol": "UDP"}],
                         {"weft.dev/opaque-ports": "9000"})],
    "slices": [slice_("db", "pg-1", "pg", [{"name": "tcp-pg", "port": 5432}, {"name": "grpc-api", "port": 9000}],
                      [ep("fd00::1", "pg-0", ns="db")], family="IPv6")],
    "pods": [pod("db", "pg-0", "pg", True, "fd00::1", opaque="db,9000")],
}))
put("kube_objects", "headless-external", js({
    "services": [{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "a", "name": "ext"},
                  "spec": {"type": "ExternalName", "externalName": "example.org"}},
                 service("a", "headless", "None", [{"port": 80}])],
    "slices": [slice_("a", "h-1", "headless", [{"port": 80}], [ep("10.0.1.1")])],
}))

# === Nomad and Consul answers ===
def reg(id_, svc, alloc, addr, port, tags, ns="default"):
    return {"ID": id_, "ServiceName": svc, "Namespace": ns, "NodeID": "node-1",
            "Datacenter": "dc1", "JobID": "web", "AllocID": alloc, "Tags": tags,
            "Address": addr, "Port": port, "CreateIndex": 10, "ModifyIndex": 10}


alloc = "5f2a9c1e-0b7d-4e3a-9f61-2c8d4b7a1e90"
r1 = reg("_nomad-task-" + alloc + "-web-web-http", "web", alloc, "10.0.0.1", 23456,
         ["weft", "weft-inbound=24000", "weft-account=shop", "weft-protocol=grpc"])
r2 = reg("_nomad-task-x-web-web-http", "web", "x", "10.0.0.2", 23457, ["v1"])
events = [
    {"Index": 11, "Events": [{"Topic": "Service", "Type": "ServiceRegistration", "Key": r2["ID"],
                              "Namespace": "default", "Index": 11, "Payload": {"Service": r2}}]},
    {},
    {"Index": 12, "Events": [{"Topic": "Service", "Type": "ServiceDeregistration", "Key": r1["ID"],
                              "Namespace": "default", "Index": 12, "Payload": {"Service": r1}}]},
]
put("nomad_services", "list-and-events", js([r1]) + b"\n" + b"\n".join(js(e) for e in events))
put("nomad_services", "list", js([r1, r2, reg("bad", "Not_A_Name", "y", "nowhere", 1, None)]))
put("nomad_services", "null", b"null\n{}")


def health(node, addr, svc_id, svc, svc_addr, port, tags, statuses, ns=None):
    s = {"ID": svc_id, "Service": svc, "Tags": tags, "Address": svc_addr, "Meta": {},
         "Port": port, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False}
    if ns:
        s["Namespace"] = ns
    return {"Node": {"ID": "n", "Node": node, "Address": addr, "Datacenter": "dc1"},
            "Service": s,
            "Checks": [{"Node": node, "CheckID": "serfHealth", "Status": st} for st in statuses]}


put("consul_services", "two-services", b"\n".join([
    js([health("n1", "10.0.0.1", "_nomad-task-" + alloc + "-web-web-http", "web", "", 8080,
               ["weft", "weft-inbound=24000"], ["passing", "passing"]),
        health("n2", "10.0.0.2", "web-2", "web", "10.0.0.9", 8080, [], ["passing", "critical"])]),
    js([health("n3", "fd00::3", "db-1", "db", "", 5432, ["weft-protocol=opaque"], ["warning"], ns="team")]),
    b"null",
]))

# === weft-api messages (protobuf, encoded by hand) ===
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def endpoint(addr, identity="", workload="", state=1):
    return field(1, addr) + (field(2, identity) if identity else b"") + \
        (field(3, workload) if workload else b"") + field(4, state)


put("api_convert", "resolve-service", b"\x00" + field(1, field(1, "api") + field(2, "shop") + field(3, 8080)))
put("api_convert", "resolve-address", b"\x00" + field(2, "10.96.0.10:80"))
put("api_convert", "resolved", b"\x01" + field(1, field(1, field(1, "api") + field(2, "shop") + field(4, 3))
                                             + field(2, endpoint("10.0.0.1:7143", "spiffe://weft.test/ns/shop/sa/api", "shop/api-0"))
                                             + field(2, endpoint("[fd00::1]:8080", "", "", 2))))
put("api_convert", "changes", b"\x01" + field(2, field(1, endpoint("10.0.0.2:7143", "spiffe://weft.test/ns/shop/sa/web", "", 3))
                                            + field(2, "10.0.0.1:7143")))
put("api_convert", "denied", b"\x01" + field(4, field(1, "no rule")))
pattern_any = field(1, b"")
pattern_ns = field(2, "shop")
pattern_account = field(3, field(1, "shop") + field(2, "web"))
pattern_id = field(4, "spiffe://weft.test/ns/shop/sa/web")
pattern_unauth = field(5, b"")
policy = field(1, 2) + b"".join(field(2, p) for p in (pattern_any, pattern_ns, pattern_account, pattern_id, pattern_unauth)) + field(3, 1)
put("api_convert", "settings", b"\x02" + field(1, "spiffe://weft.test/ns/shop/sa/web")
    + field(2, field(1, 8080) + field(2, policy)) + field(3, field(1, 1)) + field(4, b"\x30\x00"))
put("api_convert", "settings-unknown-default", b"\x02" + field(3, field(1, 99)))

# === the proxy's first bytes ===
put("proxy_detect", "http1", b"GET /index.html HTTP/1.1\r\nHost: api\r\n\r\n")
put("proxy_detect", "http2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
put("proxy_detect", "ssh", b"SSH-2.0-OpenSSH_9.6\r\n")


def client_hello(alpn):
    """A real ClientHello from openssl s_client, read on a socket of 127.0.0.1."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = {}

    def accept():
        conn, _ = srv.accept()
        conn.settimeout(5)
        data = b""
        try:
            while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            got["hello"] = data
            conn.close()

    t = threading.Thread(target=accept)
    t.start()
    port = srv.getsockname()[1]
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", alpn,
                    "-servername", "api.shop"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    t.join(10)
    srv.close()
    return got.get("hello", b"")


put("proxy_detect", "hello-mesh", client_hello("weft.h2"))
put("proxy_detect", "hello-other", client_hello("h2,http/1.1"))

# === weft inject ===
k8s_docs = {
    "deployment.yaml": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        weft.dev/opaque-ports: "5432"
    spec:
      serviceAccountName: web
      containers:
        - name: web
          image: web:1
          ports:
            - {name: http, containerPort: 8080}
""",
    "several.yaml": """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 1 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: job:1}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: p, annotations: {weft.dev/inject: disabled}}
    spec: {containers: [{name: c, image: c}]}
""",
    "host-network.yaml": """apiVersion: v1
kind: Pod
metadata: {name: h}
spec:
  hostNetwork: true
  containers: [{name: c, image: c}]
""",
}
for name, text in k8s_docs.items():
    put("inject_kubernetes", name, text)
put("inject_kubernetes", "alias-bomb.yaml", (ROOT / "tests/configs/bad/yaml-alias-bomb.yaml").read_bytes())

for p in sorted((ROOT / "deploy-nomad").rglob("*.hcl")):
    put("inject_nomad", p.name, b"\x00" + p.read_bytes())
    put("inject_nomad", "explicit-" + p.name, b"\x03" + p.read_bytes())

# === weft install ===
chart = ROOT / "deploy-k8s" / "weft"
for p in sorted((chart / "templates").iterdir()):
    put("gotmpl", p.name, p.read_bytes())
put("gotmpl", "pipelines", b'{{- range $i, $v := .Values.list }}{{ $i }}={{ $v | toYaml | indent 2 }}{{ else }}none{{ end -}}'
    b'{{ with .Values.name }}{{ . | quote }}{{ end }}{{ if and .Values.flag (eq .Values.n 3) }}yes{{ end }}'
    b'{{ define "x" }}{{ printf "%s-%d" .Values.name .Values.n }}{{ end }}{{ include "x" . | trunc 63 | trimSuffix "-" }}'
    b'\x00{"Values": {"name": "a", "list": [1, 2], "flag": true, "n": 3}}')
copy_files("install_values", [chart / "values.yaml", chart / "values-ha.yaml"])
put("install_values", "set-values.yaml", """controlPlane:
  replicas: 3
  logLevel: debug
webhook:
  failurePolicy: Fail
ca:
  existingSecret: my-root
""")
put("install_values", "bad-type.yaml", "controlPlane:\n  replicas: three\n")
print("seed corpora written under", CORPUS)
