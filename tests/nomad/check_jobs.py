"""The Nomad job specs of deploy-nomad/ and what `weft inject --platform nomad` prints, read by
an HCL parser of its own (python-hcl2) and checked for the structure Nomad and the mesh need:
the proxy a prestart sidecar with its workload identity for the audience weft, written to a
file; the init task a prestart task that is no sidecar, with NET_ADMIN and NET_RAW; meshed
groups on a bridge network; services with the weft tag from the nomad or consul provider; every
port label a service, check or task names declared by the group's network; every template of a
task writing a file of its own. The control plane's job is checked too: its services and
checks, its templates and identity, and its mesh config file, which `weft check` must accept
and on which the control plane must start with a root made by the command the job's comment
gives. So is the Prometheus job: not meshed, its files where its flags read them, and its scrape
configuration's relabelling played on sample registrations (a group tagged as `weft inject`
tags the example jobs is scraped at its admin port, nothing else is; the control plane's http
service is), and the example jobs' admin ports, flags and tags checked against each other.

Usage: check_jobs.py PATH/TO/weft
"""

import pathlib
import re
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import hcl2
from hcl2.utils import SerializationOptions

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy-nomad"
INPUTS = ROOT / "tests" / "nomad" / "jobs"
PARSE = SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True, preserve_heredocs=True
)
PROXY_UID = "2102"
INBOUND_PORT = 7143

failures = []
passed = []


def ok(what):
    passed.append(what)
    print(f"ok   {what}")


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def parse(text, name):
    try:
        return hcl2.loads(text, serialization_options=PARSE)
    except Exception as e:  # noqa: BLE001 - any parser error is a failure to report
        fail(f"{name}: python-hcl2 cannot parse it: {e}")
        return None


def blocks(body, key):
    """The unlabelled blocks `key` of a body."""
    return body.get(key, [])


def labelled(body, key):
    """The blocks `key` of a body as (label, body) pairs."""
    return [(label, inner) for b in body.get(key, []) for label, inner in b.items()]


def one(body, key):
    found = blocks(body, key)
    return found[0] if len(found) == 1 else None


def heredoc(value):
    """The text of a string or heredoc value (`<<-EOT` strips the common indentation)."""
    m = re.match(r"^<<(-?)([A-Za-z_]+)\n(.*)\n\s*\2$", value, re.S)
    if not m:
        return value
    text = m.group(3) + "\n"
    return textwrap.dedent(text) if m.group(1) else text


def flag(args, name):
    """The value after `name` in an argument list, or None."""
    for i, a in enumerate(args[:-1]):
        if a == name:
            return args[i + 1]
    return None


def in_secrets(path):
    """A task-relative path (`secrets/x`) and the same path as the task sees it."""
    return path.replace("${NOMAD_SECRETS_DIR}/", "secrets/").replace("${NOMAD_TASK_DIR}/", "local/")


def check_ports(where, group):
    """Every port label a service, check or task names is declared by the group's network."""
    networks = blocks(group, "network")
    declared = {label for n in networks for label, _ in labelled(n, "port")}
    named = []
    for s in blocks(group, "service"):
        if "port" in s:
            named.append((f"service {s.get('name')}", s["port"]))
        for c in blocks(s, "check"):
            if "port" in c:
                named.append((f"service {s.get('name')} check {c.get('name', c.get('type'))}", c["port"]))
    for tname, task in labelled(group, "task"):
        for config in blocks(task, "config"):
            for p in config.get("ports", []):
                named.append((f"task {tname} config.ports", p))
    for who, port in named:
        if isinstance(port, int) or str(port).isdigit():
            continue
        if port not in declared:
            fail(f"{where}: {who} names port {port!r}, which the network does not declare ({sorted(declared)})")


def check_templates(where, group):
    for tname, task in labelled(group, "task"):
        destinations = [t.get("destination") for t in blocks(task, "template")]
        if len(destinations) != len(set(destinations)):
            fail(f"{where}: task {tname} renders two templates to one file: {destinations}")
        if any(d is None for d in destinations):
            fail(f"{where}: task {tname} has a template without destination")


def check_meshed_group(where, group):
    tasks = dict(labelled(group, "task"))
    services = blocks(group, "service")
    network = one(group, "network")
    if network is None or network.get("mode") != "bridge":
        fail(f"{where}: a meshed group needs one network with mode bridge, not {blocks(group, 'network')}")
        network = network or {}
    for tname, task in tasks.items():
        if blocks(task, "service"):
            fail(f"{where}: task {tname} declares a service; a meshed group's services are the group's")
    for s in services:
        if s.get("provider", "consul") not in ("nomad", "consul"):
            fail(f"{where}: service {s.get('name')} provider {s.get('provider')!r}")
        if "weft" not in s.get("tags", []):
            fail(f"{where}: service {s.get('name')} lacks the weft tag: {s.get('tags')}")
        if blocks(s, "connect"):
            fail(f"{where}: service {s.get('name')} also has a Consul connect block")

    proxy = tasks.get("weft-proxy")
    if proxy is None:
        fail(f"{where}: a service is tagged weft but the group has no weft-proxy task")
        return
    lifecycle = one(proxy, "lifecycle") or {}
    if lifecycle.get("hook") != "prestart" or lifecycle.get("sidecar") is not True:
        fail(f"{where}: weft-proxy lifecycle {lifecycle}, not prestart with sidecar = true")
    identities = blocks(proxy, "identity")
    weft_ids = [i for i in identities if "weft" in i.get("aud", [])]
    if len(weft_ids) != 1 or weft_ids[0].get("file") is not True or not weft_ids[0].get("name"):
        fail(f"{where}: weft-proxy needs one named identity with aud weft and file = true: {identities}")
        return
    identity = weft_ids[0]
    config = one(proxy, "config") or {}
    args = config.get("args", [])
    if config.get("entrypoint") != ["weft-proxy"] or not config.get("image"):
        fail(f"{where}: weft-proxy config {config}")
    if flag(args, "--platform") != "nomad":
        fail(f"{where}: weft-proxy --platform {flag(args, '--platform')}")
    token = flag(args, "--token-file")
    if token != f"${{NOMAD_SECRETS_DIR}}/nomad_{identity['name']}.jwt":
        fail(f"{where}: weft-proxy --token-file {token}, not the file of its identity {identity['name']}")
    for f in ("--namespace", "--workload", "--account", "--trust-domain"):
        if not flag(args, f):
            fail(f"{where}: weft-proxy has no {f}")
    # The workload is the allocation, as the control plane's registry keys it: the proxy's
    # inbound policy is found under it.
    if flag(args, "--workload") != "${NOMAD_ALLOC_ID}":
        fail(f"{where}: weft-proxy --workload {flag(args, '--workload')}, not the allocation (${{NOMAD_ALLOC_ID}})")
    # The proxy's one identity is each service's: its name, or the account its tag names.
    accounts = {
        next((t.split("=", 1)[1] for t in s.get("tags", []) if t.startswith("weft-account=")), s.get("name"))
        for s in services
    }
    if accounts != {flag(args, "--account")}:
        fail(f"{where}: weft-proxy --account {flag(args, '--account')}, but the services' identities are {accounts}")
    templates = {t.get("destination"): t for t in blocks(proxy, "template")}
    bundle = flag(args, "--trust-bundle")
    if bundle is None or in_secrets(bundle) not in templates:
        fail(f"{where}: weft-proxy --trust-bundle {bundle} is not rendered by a template ({sorted(templates)})")
    elif 'nomadVar "nomad/jobs"' not in heredoc(templates[in_secrets(bundle)].get("data", "")):
        fail(f"{where}: the trust bundle does not come from the Nomad Variable nomad/jobs")
    env_templates = [heredoc(t.get("data", "")) for t in templates.values() if t.get("env") is True]
    if not any("WEFT_PROXY_CONTROL_ADDR=" in d and 'nomadService' in d and '"weft-control-grpc"' in d for d in env_templates):
        fail(f"{where}: no env template gives WEFT_PROXY_CONTROL_ADDR from the service weft-control-grpc")
    if str(proxy.get("user")) != PROXY_UID:
        fail(f"{where}: weft-proxy runs as {proxy.get('user')}, not {PROXY_UID}")

    init = tasks.get("weft-init")
    ports = dict(labelled(network, "port"))
    if init is not None:
        lifecycle = one(init, "lifecycle") or {}
        if lifecycle.get("hook") != "prestart" or lifecycle.get("sidecar", False) is not False:
            fail(f"{where}: weft-init lifecycle {lifecycle}, not prestart without sidecar")
        iconfig = one(init, "config") or {}
        iargs = iconfig.get("args", [])
        if iargs[:1] != ["init"] or flag(iargs, "--proxy-uid") != PROXY_UID:
            fail(f"{where}: weft-init args {iargs}")
        if not {"NET_ADMIN", "NET_RAW"} <= set(iconfig.get("cap_add", [])):
            fail(f"{where}: weft-init cap_add {iconfig.get('cap_add')}")
        if "--transparent" not in args:
            fail(f"{where}: weft-init writes the rules but weft-proxy is not --transparent")
        if "weft" in ports:
            fail(f"{where}: a transparent group needs no weft port")
    else:
        if "--transparent" in args:
            fail(f"{where}: weft-proxy is --transparent without weft-init")
        with_port = [s for s in services if "port" in s]
        if with_port:
            if ports.get("weft", {}).get("to") != INBOUND_PORT:
                fail(f"{where}: explicit mode needs port \"weft\" {{ to = {INBOUND_PORT} }}: {ports}")
            if not flag(args, "--app-port"):
                fail(f"{where}: explicit mode with a service port needs --app-port")
            for s in with_port:
                if "weft-inbound=${NOMAD_HOST_PORT_weft}" not in s.get("tags", []):
                    fail(f"{where}: service {s.get('name')} lacks the weft-inbound tag: {s.get('tags')}")
        for u in [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--upstream"]:
            if not re.fullmatch(r"[a-z0-9.-]+(:\d+)?=127\.0\.0\.1:\d+", u):
                fail(f"{where}: upstream {u}")


def check_job(name, doc):
    """Every group of every job; returns the number of meshed groups."""
    meshed = 0
    jobs = labelled(doc, "job")
    if not jobs:
        fail(f"{name}: no job")
    for jname, job in jobs:
        for gname, group in labelled(job, "group"):
            where = f"{name} job {jname} group {gname}"
            check_ports(where, group)
            check_templates(where, group)
            tagged = any("weft" in s.get("tags", []) for s in blocks(group, "service"))
            tasks = dict(labelled(group, "task"))
            if tagged or "weft-proxy" in tasks:
                check_meshed_group(where, group)
                meshed += 1
    return meshed


def weft(binary, *args, stdin=None):
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True)


def check_control(binary, doc):
    """The control plane's job: its services, checks, templates, identity and mesh file."""
    name = "weft-control.nomad.hcl"
    variables = dict(labelled(doc, "variable"))
    count = variables.get("count", {})
    if count.get("default") != 1 or "var.count <= 3" not in str(count.get("validation")):
        fail(f"{name}: the count variable should default to 1 and allow at most 3: {count}")
    (jname, job), = labelled(doc, "job")
    if job.get("type") != "service":
        fail(f"{name}: type {job.get('type')}")
    (gname, group), = labelled(job, "group")
    if group.get("count") != "${var.count}":
        fail(f"{name}: the group's count is {group.get('count')}, not the variable")
    services = {s.get("name"): s for s in blocks(group, "service")}
    ports = dict(labelled(one(group, "network") or {}, "port"))
    want = {"weft-control-grpc": ("grpc", 7443), "weft-control-http": ("http", 7080)}
    for sname, (label, to) in want.items():
        s = services.get(sname)
        if s is None or s.get("provider") != "nomad" or s.get("port") != label:
            fail(f"{name}: service {sname} on port {label} with provider nomad: {s}")
        if ports.get(label, {}).get("to") != to:
            fail(f"{name}: port {label} should map to {to}: {ports}")
    http_checks = {
        (c.get("path"), c.get("port", s.get("port")))
        for s in services.values()
        for c in blocks(s, "check")
        if c.get("type") == "http"
    }
    if ports.get("probes", {}).get("to") != 7081:
        fail(f"{name}: port probes should map to 7081: {ports}")
    for path in ("/ready", "/live"):
        if (path, "probes") not in http_checks:
            fail(f"{name}: no HTTP check on {path} of the probes port ({http_checks})")
    if any(port != "probes" for _, port in http_checks):
        fail(f"{name}: HTTP checks off the probes port, which a flood of the http port could fail ({http_checks})")
    (tname, task), = labelled(group, "task")
    identity = one(task, "identity") or {}
    if identity.get("file") is not True:
        fail(f"{name}: the task's identity must be written to a file: {identity}")
    config = one(task, "config") or {}
    if config.get("image") != "${var.image}" or variables.get("image", {}).get("default") != "ghcr.io/weft-mesh/weft-control:0.1.0":
        fail(f"{name}: image {config.get('image')}")
    templates = {t.get("destination"): heredoc(t.get("data", "")) for t in blocks(task, "template")}
    mesh = templates.get("local/mesh.toml")
    args = config.get("args", [])
    if mesh is None or flag(args, "--config") != "/local/mesh.toml":
        fail(f"{name}: the mesh file is not rendered where --config reads it ({sorted(templates)}, {args})")
        return
    for dest, key in (("secrets/weft-root.pem", ".root_cert"), ("secrets/weft-root.key", ".root_key")):
        data = templates.get(dest, "")
        if 'nomadVar "nomad/jobs/weft-control"' not in data or key not in data:
            fail(f"{name}: {dest} should come from nomad/jobs/weft-control {key}: {data!r}")
        if f"/{dest}" not in mesh:
            fail(f"{name}: the mesh file does not read /{dest}")
    if 'token_file = "/secrets/nomad_token"' not in mesh:
        fail(f"{name}: the Nomad adapter does not present the task's identity file")

    # The mesh file as Nomad renders it, for this machine.
    rendered = mesh.replace("${var.trust_domain}", variables["trust_domain"]["default"]).replace(
        '{{ env "attr.unique.network.ip-address" }}', "127.0.0.1"
    )
    if "{{" in rendered or "${" in rendered:
        fail(f"{name}: the mesh file has template parts this check does not render:\n{rendered}")
        return
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "mesh.toml").write_text(rendered)
        r = weft(binary, "check", str(d / "mesh.toml"))
        if r.returncode == 0:
            ok(f"{name}: weft check accepts its mesh file")
        elif "unknown platform `nomad`" in r.stderr:
            print(f"skip {name}: this weft has no Nomad adapter to check [platforms.nomad] with")
        else:
            fail(f"{name}: weft check refused its mesh file: {r.stderr}")
        start_control(binary, name, rendered, d)


def start_control(binary, name, mesh, d):
    """The control plane starts on the mesh file, its platform sections aside, with a root made
    by the openssl command of the job's comment."""
    if shutil.which("openssl") is None:
        fail("openssl is needed to make a root as the job's comment says")
        return
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "3650", "-subj", "/CN=weft root", "-keyout", str(d / "root.key"), "-out", str(d / "root.pem")],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        fail(f"openssl could not make the root: {r.stderr}")
        return
    config = (
        mesh.split("[platforms.")[0]
        .replace("/secrets/weft-root.pem", str(d / "root.pem"))
        .replace("/secrets/weft-root.key", str(d / "root.key"))
        .replace("/local/weft", str(d / "data"))
        .replace("0.0.0.0:7443", "127.0.0.1:0")
        .replace("0.0.0.0:7080", "127.0.0.1:0")
        .replace("0.0.0.0:7081", "127.0.0.1:0")
    )
    (d / "start.toml").write_text(config)
    control = str(pathlib.Path(binary).with_name("weft-control"))
    p = subprocess.Popen([control, "--config", str(d / "start.toml")], stderr=subprocess.PIPE, text=True)
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
        ok(f"{name}: the control plane starts on its mesh file and a root made as its comment says")
    else:
        fail(f"{name}: the control plane did not start on its mesh file: {log}")


def mini_yaml(text):
    """The block-style YAML of a Prometheus configuration as Python values: mappings, "- "
    sequences, [a, b] lists, quoted and plain scalars, comments. No YAML library is in this
    check's environment, and the configuration uses no more than this."""
    lines = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lines.append((len(raw) - len(raw.lstrip(" ")), stripped))

    def scalar(s):
        s = s.strip()
        if s.startswith("[") and s.endswith("]"):
            return [scalar(x) for x in s[1:-1].split(",") if x.strip()]
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            return s[1:-1].replace('\\\\', '\\') if s[0] == '"' else s[1:-1]
        if s == "{}":
            return {}
        return s

    def block(i, indent):
        """The value whose lines start at lines[i] with this indentation; (value, next i)."""
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                rest = lines[i][1][2:]
                if ":" in rest and not rest.startswith(("[", '"', "'")):
                    # A mapping that starts on the dash's line, at the column after "- ".
                    lines[i] = (indent + 2, rest)
                    value, i = block(i, indent + 2)
                else:
                    value, i = scalar(rest), i + 1
                items.append(value)
            return items, i
        mapping = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            key, _, rest = lines[i][1].partition(":")
            i += 1
            if rest.strip():
                mapping[key.strip()] = scalar(rest)
            elif i < len(lines) and lines[i][0] > indent:
                mapping[key.strip()], i = block(i, lines[i][0])
            elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                mapping[key.strip()], i = block(i, indent)
            else:
                mapping[key.strip()] = None
        return mapping, i

    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"cannot read the line {lines[end][1]!r}")
    return value


def relabel(rules, labels):
    """Prometheus's relabelling (keep, drop and replace, regexes anchored at both ends) of one
    target: its labels, or None when it is dropped."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(l, "") for l in rule.get("source_labels", []))
        regex = re.compile(rule.get("regex", "(.*)"))
        action = rule.get("action", "replace")
        m = regex.fullmatch(value)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            out = re.sub(r"\$(\d+)|\$\{(\d+)\}", lambda g: m.group(int(g.group(1) or g.group(2))) or "",
                         rule.get("replacement", "$1"))
            if out:
                labels[rule["target_label"]] = out
            else:
                labels.pop(rule["target_label"], None)
    return labels


def check_prometheus(binary, doc, text):
    """The Prometheus job: not meshed; its configuration and the files it reads rendered where
    its flags and settings read them; its relabelling keeps the proxies that `weft inject`
    exposes (read off the example jobs, which are its output), at their admin port, and the
    control plane's http service."""
    name = "prometheus.nomad.hcl"
    before = len(failures)
    (jname, job), = labelled(doc, "job")
    (gname, group), = labelled(job, "group")
    if any("weft" in s.get("tags", []) for s in blocks(group, "service")):
        fail(f"{name}: Prometheus must not be meshed: it scrapes the proxies' admin ports in plaintext")
    (tname, task), = labelled(group, "task")
    args = (one(task, "config") or {}).get("args", [])
    templates = {t.get("destination"): heredoc(t.get("data", "")) for t in blocks(task, "template")}
    config_file = next((a.split("=", 1)[1] for a in args if a.startswith("--config.file=")), None)
    if config_file is None or config_file.lstrip("/") not in templates:
        fail(f"{name}: --config.file {config_file} is not rendered by a template ({sorted(templates)})")
        return
    if "--enable-feature=exemplar-storage" not in args:
        fail(f"{name}: without --enable-feature=exemplar-storage the dashboards' exemplars are not stored")
    # Consul-template's parts, rendered as Nomad would on this machine.
    rendered = templates[config_file.lstrip("/")].replace('{{ env "attr.unique.network.ip-address" }}', "10.0.0.1")
    if "{{" in rendered or "${" in rendered:
        fail(f"{name}: the configuration has template parts this check does not render:\n{rendered}")
        return
    try:
        config = mini_yaml(rendered)
    except (ValueError, IndexError) as e:
        fail(f"{name}: its Prometheus configuration cannot be read: {e}")
        return
    jobs = {j["job_name"]: j for j in config.get("scrape_configs", [])}
    if not {"weft-proxies", "weft-control"} <= set(jobs):
        fail(f"{name}: scrape jobs {sorted(jobs)} lack weft-proxies or weft-control")
        return
    identity = one(task, "identity") or {}
    for jn, j in jobs.items():
        files = [sd.get("authorization", {}).get("credentials_file") for sd in j.get("nomad_sd_configs") or []]
        files.append((j.get("authorization") or {}).get("credentials_file"))
        for f in filter(None, files):
            if f == "/secrets/nomad_token":
                if identity.get("file") is not True:
                    fail(f"{name}: {jn} reads /secrets/nomad_token, but the task's identity is not written to a file")
            elif f.lstrip("/") not in templates:
                fail(f"{name}: {jn} reads {f}, which no template renders")
        for sd in j.get("nomad_sd_configs") or []:
            if sd.get("server") != "http://10.0.0.1:4646":
                fail(f"{name}: {jn} asks {sd.get('server')}, not the node's Nomad agent")

    # What `weft inject` gives a meshed group (the examples are its output): a group port for
    # the proxy's admin listener, the listener on that port's target inside the group, the port
    # left out of interception, and a tag on each service naming the port's host mapping.
    example = DEPLOY / "examples" / "web-api.nomad.hcl"
    edoc = parse(example.read_text(), str(example.relative_to(ROOT)))
    (_, ejob), = labelled(edoc, "job")
    admin_tags = set()
    for gname_, egroup in labelled(ejob, "group"):
        where = f"{example.name}, group {gname_}"
        eports = dict(labelled(one(egroup, "network") or {}, "port"))
        tasks = dict(labelled(egroup, "task"))
        proxy_args = (one(tasks.get("weft-proxy", {}), "config") or {}).get("args", [])
        admin_addr = next((proxy_args[i + 1] for i, a in enumerate(proxy_args[:-1]) if a == "--admin-addr"), None)
        tags = [t for s in blocks(egroup, "service") for t in s.get("tags", []) if t.startswith("weft-admin=")]
        m = re.fullmatch(r"weft-admin=\$\{NOMAD_HOST_PORT_(\w+)\}", tags[0]) if tags else None
        if not m or len(tags) != len(blocks(egroup, "service")):
            fail(f"{where}: each service needs a weft-admin=${{NOMAD_HOST_PORT_<label>}} tag; tags {tags}")
            continue
        label = m.group(1)
        target = str(eports.get(label, {}).get("to"))
        if admin_addr != f"0.0.0.0:{target}":
            fail(f"{where}: the tag names port {label} (to {target}), the proxy's --admin-addr is {admin_addr}")
        init_args = (one(tasks.get("weft-init", {}), "config") or {}).get("args", [])
        skipped = next((init_args[i + 1] for i, a in enumerate(init_args[:-1]) if a == "--skip-inbound-ports"), "")
        if "weft-init" in tasks and target not in skipped.split(","):
            fail(f"{where}: the admin port {target} is not left out of interception (--skip-inbound-ports {skipped!r})")
        admin_tags.add(tags[0])
    proxy = pathlib.Path(binary).with_name("weft-proxy")
    if proxy.exists():
        help_text = weft(str(proxy), "--help").stdout
        if "--admin-addr" not in help_text:
            fail(f"{name}: weft-proxy --help has no --admin-addr")
    else:
        print(f"skip {name}: no weft-proxy beside {binary} to check the proxy's flags with")
    if len(admin_tags) != 1:
        fail(f"{name}: the injected groups' admin tags differ or are missing: {sorted(admin_tags)}")
        return
    admin_tag = re.sub(r"\$\{[^}]*\}", "23456", admin_tags.pop())

    alloc = "3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f"
    def registration(service, tags, port):
        return {
            "__address__": f"10.0.0.7:{port}",
            "__meta_nomad_address": "10.0.0.7",
            "__meta_nomad_namespace": "shop",
            "__meta_nomad_service": service,
            "__meta_nomad_service_id": f"_nomad-task-{alloc}-group-{service}-{service}-http",
            "__meta_nomad_tags": "," + ",".join(tags) + ",",
        }
    proxies = jobs["weft-proxies"].get("relabel_configs", [])
    scraped = relabel(proxies, registration("web", ["weft", "weft-inbound=31001", admin_tag], 31000))
    want = {"__address__": "10.0.0.7:23456", "namespace": "shop", "alloc": alloc}
    if scraped is None or any(scraped.get(k) != v for k, v in want.items()):
        fail(f"{name}: a group tagged as weft inject tags it is scraped as {scraped}, not at {want}")
    elif set(scraped) - set(registration("web", [], 0)) - {"namespace", "alloc"}:
        fail(f"{name}: the proxies' targets get labels {sorted(set(scraped))}; one per service would scrape a proxy once per service")
    for what, reg in {
        "a meshed group without the admin tag": registration("api", ["v1", "weft"], 31002),
        "an unmeshed service with the admin tag": registration("db", [admin_tag], 31003),
        "an unmeshed service whose tags only look alike": registration("db", ["weft-inbound=1", "weftish", admin_tag + "x"], 31004),
    }.items():
        if relabel(proxies, reg) is not None:
            fail(f"{name}: the weft-proxies job scrapes {what}")

    control_doc = parse((DEPLOY / "weft-control.nomad.hcl").read_text(), "weft-control.nomad.hcl")
    (_, cjob), = labelled(control_doc, "job")
    (_, cgroup), = labelled(cjob, "group")
    cports = dict(labelled(one(cgroup, "network") or {}, "port"))
    http_services = [s.get("name") for s in blocks(cgroup, "service") if cports.get(s.get("port"), {}).get("to") == 7080]
    control = jobs["weft-control"].get("relabel_configs", [])
    kept = [s.get("name") for s in blocks(cgroup, "service")
            if relabel(control, registration(s.get("name"), [], 7080)) is not None]
    if kept != http_services or len(kept) != 1:
        fail(f"{name}: the weft-control job scrapes the services {kept}; the control plane's HTTP listener is {http_services}")
    if not (jobs["weft-control"].get("authorization") or {}).get("credentials_file"):
        fail(f"{name}: the weft-control job presents no token; the control plane's /metrics requires one")
    if len(failures) == before:
        ok(f"{name}: scrapes the proxies weft inject exposes, at their admin port, and the control plane's {kept[0]}")


def main():
    binary = sys.argv[1]
    files = sorted(DEPLOY.rglob("*.hcl"))
    if not files:
        fail(f"no .hcl file in {DEPLOY}")
    for path in files:
        rel = path.relative_to(ROOT)
        text = path.read_text()
        if not text.startswith("#"):
            fail(f"{rel}: no usage comment at the top")
        doc = parse(text, rel)
        if doc is None:
            continue
        if path.name.endswith(".policy.hcl"):
            caps = {c for _, ns in labelled(doc, "namespace") for c in ns.get("capabilities", [])}
            if caps != {"read-job"}:
                fail(f"{rel}: the ACL policy grants {caps}, not read-job alone")
            else:
                ok(f"{rel}: read-job alone")
            continue
        meshed = check_job(rel, doc)
        if path.name == "weft-control.nomad.hcl":
            if meshed:
                fail(f"{rel}: the control plane is not meshed")
            check_control(binary, doc)
        elif path.name == "prometheus.nomad.hcl":
            if meshed:
                fail(f"{rel}: Prometheus is not meshed")
            check_prometheus(binary, doc, text)
        elif meshed == 0:
            fail(f"{rel}: no meshed group")
        else:
            ok(f"{rel}: {meshed} meshed group(s)")
        # A meshed job is refused a second time, naming the group.
        if meshed:
            r = weft(binary, "inject", "--platform", "nomad", str(path))
            if r.returncode == 0 or "already has the weft-proxy task" not in r.stderr:
                fail(f"{rel}: weft inject did not refuse it a second time: {r.stderr}")

    variations = {
        "transparent": [],
        "explicit": ["--explicit", "--upstream", "api=127.0.0.1:9001"],
    }
    for path in sorted(INPUTS.glob("*.hcl")):
        rel = path.relative_to(ROOT)
        for vname, extra in variations.items():
            r = weft(binary, "inject", "--platform", "nomad", *extra, "-", stdin=path.read_text())
            if r.returncode != 0:
                fail(f"{rel} ({vname}): weft inject failed: {r.stderr}")
                continue
            doc = parse(r.stdout, f"{rel} ({vname})")
            if doc is None:
                continue
            meshed = check_job(f"{rel} ({vname})", doc)
            groups = sum(1 for _, j in labelled(doc, "job") for _ in labelled(j, "group"))
            if meshed != groups:
                fail(f"{rel} ({vname}): {meshed} of {groups} groups meshed")
            else:
                ok(f"{rel} ({vname}): {meshed} meshed group(s)")

    print(f"nomad: {len(passed)} passed, {len(failures)} failed")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
