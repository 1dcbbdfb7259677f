"""Weft's container images (configs/images/): builds the OCI layouts of weft-control and
weft-proxy with configs/images/oci_layout.py from the binaries as they ship (tests/run passes
what configs/images/build-control.sh and build-proxy.sh print), then checks them with tools of
their own:

- a second build of weft-proxy gives the same files, byte for byte (reproducible), and both
  images share one base layer;
- skopeo reads each layout (`inspect --raw` returns the manifest that index.json names) and its
  config: user 65532:65532, the binary as entrypoint, PATH, the org.opencontainers.image.*
  labels with Cargo.toml's version, which is also the tag; `skopeo copy` to a directory
  recomputes every blob's digest;
- umoci unpacks it (checking each layer's digest and diff_id) into a runtime bundle whose
  config.json runs the entrypoint as 65532:65532;
- the unpacked root filesystem: owned by root, nothing writable by others but /tmp (1777), no
  setuid file, no shell, no CA certificates; each binary is a static position-independent
  executable (no program interpreter, no shared library needed) with its relative relocations
  packed, and the base layer holds no library; the binary has no debug sections but keeps its
  symbols;
- as root, inside that root filesystem (chroot, with the /dev/null, /proc, /etc/hosts and
  /etc/resolv.conf a container runtime provides): each binary prints its version as user
  65532; as 65532, weft-control resolves its Nomad API's name and weft-proxy its control
  plane's from /etc/hosts and, through a DNS server this check runs on 127.53.0.1:53, by DNS,
  and each connects there (weft-control's root filesystem holds no library at all, so this is
  glibc's static `files` and `dns` sources at work); and in network
  namespaces of their own, `weft-proxy init` writes and removes its rules with the image's
  iptables, on the nft and the legacy backend;
- configs/images/Containerfile builds both binaries with the same scripts and declares the
  same user, entrypoint, environment and labels, its Rust image is Cargo.toml's rust-version and its VERSION Cargo.toml's version; the Helm chart
  and the Nomad jobs name the images with that version.

Everything it makes goes under images-check/ beside WEFT_CONTROL's directory and is removed at
the end. Without root the chroot and namespace checks are skipped, each with a line. Exits 1,
naming each problem, when a check fails.

Usage: python3 tests/images/check_images.py WEFT_CONTROL WEFT_PROXY
"""

import hashlib
import json
import os
import pathlib
import re
import select
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "configs" / "images" / "oci_layout.py"
CONTAINERFILE = ROOT / "configs" / "images" / "Containerfile"
IMAGES = ["weft-control", "weft-proxy"]
USER = "65532:65532"
SOURCE = "https://github.com/weft-mesh/weft"
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "busybox", "toybox"}
DNS_ADDR = "127.53.0.1"
# The names the binaries are given to reach a server this check runs: one in /etc/hosts, one only
# its DNS server knows.
HOSTS_NAME = "peer.hosts.weft.test"
DNS_NAME = "peer.dns.weft.test"

failures = []
passed = []


def ok(what):
    passed.append(what)
    print(f"ok   {what}")


def fail(what):
    failures.append(what)
    print(f"FAIL {what}")


def skip(what):
    print(f"skip {what}")


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def cargo_package():
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]


def expected_config(name, version):
    return {
        "User": USER,
        "Entrypoint": [f"/usr/local/bin/{name}"],
        "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin"],
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.source": SOURCE,
        },
    }


def tree_digest(layout):
    """Every file of a layout directory with the sha256 of its bytes."""
    out = {}
    for path in sorted(layout.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(layout))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def index_manifest(layout):
    index = json.loads((layout / "index.json").read_text())
    return index["manifests"][0]


def layer_paths(layout, descriptor):
    """The entries of a layer blob, read with tarfile: {path: TarInfo}."""
    blob = layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]
    with tarfile.open(blob, "r:gz") as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


# === the layouts, read by skopeo and umoci ===


def check_layout(name, layout, version, is_root, work):
    """skopeo and umoci on one layout; returns (config, bundle root filesystem or None)."""
    ref = f"oci:{layout}:{version}"
    r = run(["skopeo", "inspect", "--raw", ref])
    if r.returncode != 0:
        fail(f"{name}: skopeo inspect --raw {ref}: {r.stderr.strip()}")
        return None, None
    raw = r.stdout.encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    named = index_manifest(layout)
    if digest != named["digest"]:
        fail(f"{name}: skopeo's manifest for tag {version} is {digest}, index.json names {named['digest']}")
    manifest = json.loads(raw)
    want = expected_config(name, version)
    if manifest.get("annotations") != want["Labels"]:
        fail(f"{name}: manifest annotations {manifest.get('annotations')}, expected {want['Labels']}")
    kinds = {layer["mediaType"] for layer in manifest["layers"]}
    if kinds != {"application/vnd.oci.image.layer.v1.tar+gzip"}:
        fail(f"{name}: layer media types {kinds}, expected gzip-compressed tar only")
    r = run(["skopeo", "inspect", "--config", ref])
    if r.returncode != 0:
        fail(f"{name}: skopeo inspect --config {ref}: {r.stderr.strip()}")
        return None, None
    config = json.loads(r.stdout)
    got = {k: config.get("config", {}).get(k) for k in want}
    if got != want:
        fail(f"{name}: config {got}, expected {want}")
    elif config.get("os") != "linux" or config.get("architecture") != "amd64":
        fail(f"{name}: config for {config.get('os')}/{config.get('architecture')}, expected linux/amd64")
    elif len(config["rootfs"]["diff_ids"]) != len(manifest["layers"]):
        fail(f"{name}: {len(config['rootfs']['diff_ids'])} diff_ids for {len(manifest['layers'])} layers")
    else:
        ok(f"{name}: skopeo reads tag {version}: user {USER}, entrypoint {want['Entrypoint']}, "
           f"labels with version {version}")
    copy = work / f"copy-{name}"
    r = run(["skopeo", "copy", "-q", ref, f"dir:{copy}"])
    if r.returncode != 0:
        fail(f"{name}: skopeo copy {ref} dir:{copy}: {r.stderr.strip()}")
    else:
        ok(f"{name}: skopeo copies all {len(manifest['layers'])} layers and the config with their digests verified")
    shutil.rmtree(copy, ignore_errors=True)

    bundle = work / f"bundle-{name}"
    unpack = ["umoci", "unpack"] + ([] if is_root else ["--rootless"]) + ["--image", f"{layout}:{version}", str(bundle)]
    r = run(unpack)
    if r.returncode != 0:
        fail(f"{name}: {' '.join(unpack)}: {r.stderr.strip()}")
        return config, None
    process = json.loads((bundle / "config.json").read_text())["process"]
    user = process.get("user", {})
    if (user.get("uid"), user.get("gid")) != (65532, 65532) or process.get("args") != want["Entrypoint"]:
        fail(f"{name}: umoci's runtime config runs {process.get('args')} as {user}, "
             f"expected {want['Entrypoint']} as 65532:65532")
    elif want["Env"][0] not in process.get("env", []):
        fail(f"{name}: umoci's runtime config has env {process.get('env')}, without {want['Env'][0]}")
    else:
        ok(f"{name}: umoci unpacks it; its runtime config runs {process['args'][0]} as uid 65532, gid 65532")
    return config, bundle / "rootfs"


# === the root filesystem ===


def check_rootfs(name, rootfs, layout, binary, is_root):
    problems = []
    allowed_top = {"etc", "lib", "lib64", "tmp", "usr"} | ({"run"} if name == "weft-proxy" else set())
    for top in sorted(os.listdir(rootfs)):
        if top not in allowed_top:
            problems.append(f"unexpected /{top}")
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            rel = "/" + os.path.relpath(path, rootfs)
            st = os.lstat(path)
            if entry in SHELLS:
                problems.append(f"a shell at {rel}")
            if is_root and (st.st_uid, st.st_gid) != (0, 0):
                problems.append(f"{rel} owned by {st.st_uid}:{st.st_gid}")
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if rel == "/tmp":
                if mode != 0o1777 or not stat.S_ISDIR(st.st_mode):
                    problems.append(f"/tmp has mode {oct(mode)}, expected a directory 1777")
            elif mode & 0o022:
                problems.append(f"{rel} is writable by group or others ({oct(mode)})")
            if mode & (stat.S_ISUID | stat.S_ISGID):
                problems.append(f"{rel} is setuid or setgid")
    if os.path.lexists(os.path.join(rootfs, "etc/ssl")):
        problems.append("/etc/ssl exists: no binary needs public CA certificates")
    passwd = pathlib.Path(rootfs, "etc/passwd").read_text()
    if not re.search(r"^nonroot:x:65532:65532:", passwd, re.M):
        problems.append(f"/etc/passwd has no nonroot 65532: {passwd!r}")
    nss = pathlib.Path(rootfs, "etc/nsswitch.conf").read_text()
    if not re.search(r"^hosts:\s+files dns$", nss, re.M):
        problems.append(f"/etc/nsswitch.conf does not say hosts: files dns: {nss!r}")
    if problems:
        fail(f"{name}: the root filesystem: " + "; ".join(problems))
    else:
        ok(f"{name}: the root filesystem is root's, only /tmp is writable, no setuid file, no shell, no CA certificates")

    # Static, so the base layer holds no library: only /etc, /tmp and nothing under usr/share/doc.
    check_static(name, binary)
    base = layer_paths(layout, base_layer(layout))
    files = sorted(p for p, m in base.items() if m.isfile() and not p.startswith("etc/"))
    if files:
        fail(f"{name}: the base layer of a static binary holds files besides /etc: {files}")
    else:
        ok(f"{name}: the base layer holds no library, only /etc and /tmp")

    # DWARF sections (.debug_gdb_scripts, which the program loads, is not debug info).
    dwarf = re.compile(r"\.debug_(?:info|line|line_str|str|abbrev|aranges|ranges|rnglists|loc|loclists)\b")
    r = run(["readelf", "-S", "-W", os.path.join(rootfs, "usr/local/bin", name)])
    if r.returncode != 0:
        fail(f"{name}: readelf -S: {r.stderr.strip()}")
    elif dwarf.search(r.stdout) or ".symtab" not in r.stdout:
        found = sorted(set(dwarf.findall(r.stdout)))
        fail(f"{name}: the binary in the image should have no DWARF sections (has {found}) and keep .symtab")
    else:
        ok(f"{name}: the binary in the image is stripped of debug info and keeps its symbol table")


def check_static(name, binary):
    """A static position-independent executable that needs no shared library, its relative
    relocations packed (readelf)."""
    headers = run(["readelf", "-lW", binary]).stdout
    kind = re.search(r"Elf file type is (\w+)", headers)
    needed = [l for l in run(["readelf", "-dW", binary]).stdout.splitlines() if "(NEEDED)" in l]
    if "INTERP" in headers or not kind or kind.group(1) != "DYN" or needed:
        fail(f"{name}: {binary} is not a static PIE (type {kind.group(1) if kind else '?'}, "
             f"interpreter: {'INTERP' in headers}, needs {needed})")
    else:
        ok(f"{name}: a static position-independent executable: no program interpreter, no shared library")
    sections = {}
    for line in run(["readelf", "-SW", binary]).stdout.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            sections[m.group(1)] = int(m.group(2), 16)
    relr, rela = sections.get(".relr.dyn", 0), sections.get(".rela.dyn", 0)
    if relr == 0 or rela > 64 * 1024:
        fail(f"{name}: relative relocations not packed: .relr.dyn {relr} bytes, .rela.dyn {rela} bytes")
    else:
        ok(f"{name}: relative relocations packed: .relr.dyn {relr} bytes, .rela.dyn {rela} bytes")


def blob(layout, digest):
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def base_layer(layout):
    """The descriptor of a layout's first layer."""
    return json.loads(blob(layout, index_manifest(layout)["digest"]))["layers"][0]


# === inside the root filesystem ===


def as_a_runtime_would(rootfs, work):
    """What a container runtime adds to a root filesystem: /dev/null, /proc (mounted by the
    namespace checks), /etc/hosts and /etc/resolv.conf; here a token and a trust bundle too,
    as volumes would."""
    os.makedirs(os.path.join(rootfs, "dev"), exist_ok=True)
    os.mknod(os.path.join(rootfs, "dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.makedirs(os.path.join(rootfs, "proc"), exist_ok=True)
    pathlib.Path(rootfs, "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {HOSTS_NAME}\n")
    pathlib.Path(rootfs, "etc/resolv.conf").write_text(f"nameserver {DNS_ADDR}\noptions timeout:2 attempts:2\n")
    pathlib.Path(rootfs, "tmp/token").write_text("not-a-real-token\n")
    roots = work / "roots.pem"
    r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(work / "roots.key"), "-out", str(roots), "-subj", "/CN=weft image check", "-days", "1"])
    if r.returncode != 0:
        raise RuntimeError(f"openssl could not make a trust bundle: {r.stderr.strip()}")
    shutil.copyfile(roots, os.path.join(rootfs, "tmp/roots.pem"))
    for f in ("etc/hosts", "etc/resolv.conf", "tmp/token", "tmp/roots.pem"):
        os.chmod(os.path.join(rootfs, f), 0o644)


class DnsServer:
    """A DNS server on DNS_ADDR:53 (UDP) that knows one name: A queries for it get 127.0.0.1,
    other types no answer, other names NXDOMAIN. Records every question."""

    def __init__(self, name):
        self.name = name
        self.questions = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((DNS_ADDR, 53))
        self.stop_r, self.stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            ready, _, _ = select.select([self.sock, self.stop_r], [], [])
            if self.stop_r in ready:
                return
            data, peer = self.sock.recvfrom(4096)
            reply = self.answer(data)
            if reply:
                self.sock.sendto(reply, peer)

    def answer(self, data):
        if len(data) < 17:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", data[:6])
        if qdcount != 1:
            return None
        labels, i = [], 12
        while i < len(data) and data[i] != 0:
            n = data[i]
            if n & 0xC0:
                return None
            labels.append(data[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        i += 1
        if i + 4 > len(data):
            return None
        qtype, qclass = struct.unpack("!HH", data[i : i + 4])
        question = data[12 : i + 4]
        name = ".".join(labels).lower()
        self.questions.append((name, qtype))
        answer, count, rcode = b"", 0, 0
        if name != self.name:
            rcode = 3
        elif qtype == 1 and qclass == 1:
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
            count = 1
        header = struct.pack("!HHHHHH", ident, 0x8400 | (flags & 0x0100) | rcode, 1, count, 0, 0)
        return header + question + answer

    def close(self):
        self.stop_w.send(b"x")
        self.thread.join()
        for s in (self.sock, self.stop_r, self.stop_w):
            s.close()


# Logged when a name did not resolve (the port listens, so the binary connects otherwise): no
# need to wait for the retries.
UNRESOLVED = {"weft-proxy": "cannot obtain a certificate", "weft-control": "dns error"}


def reaches(name, rootfs, host):
    """Runs `name` as 65532 in `rootfs` with the server it calls first at host:<a port this
    check listens on> (weft-proxy's control plane; weft-control's Nomad API, from a mesh config
    file written to the root's /tmp); True once it connects, else what it logged."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    argv = ["chroot", "--userspec=65532:65532", str(rootfs), f"/usr/local/bin/{name}"]
    if name == "weft-proxy":
        argv += ["--workload", "image-check", "--token-file", "/tmp/token", "--trust-bundle", "/tmp/roots.pem",
                 "--control-addr", f"{host}:{port}", "--admin-addr", "127.0.0.1:0"]
    else:
        data = pathlib.Path(rootfs, "tmp/ca")
        shutil.rmtree(data, ignore_errors=True)
        config = pathlib.Path(rootfs, "tmp/mesh.toml")
        config.write_text(
            '[mesh]\nname = "image-check"\ntrust_domain = "weft.test"\n[ca]\ndata_dir = "/tmp/ca"\n'
            '[control]\ngrpc_addr = "127.0.0.1:0"\nhttp_addr = "127.0.0.1:0"\n'
            f'[platforms.nomad]\nenabled = true\naddress = "http://{host}:{port}"\n'
        )
        os.chmod(config, 0o644)
        argv += ["--config", "/tmp/mesh.toml"]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = ""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([listener, p.stderr], [], [], deadline - time.monotonic())
            if listener in ready:
                conn, _ = listener.accept()
                conn.close()
                return True
            if p.stderr in ready:
                line = p.stderr.readline()
                if not line:
                    return f"it exited ({p.wait()}) without connecting: {log.strip()}"
                log += line
                if UNRESOLVED[name] in line:
                    return line.strip()
        return f"no connection within 20 s: {log.strip()}"
    finally:
        p.kill()
        p.wait()
        listener.close()


def check_inside(name, rootfs, version):
    r = run(["chroot", "--userspec=65532:65532", str(rootfs), f"/usr/local/bin/{name}", "--version"])
    if r.returncode != 0 or r.stdout.strip() != f"{name} {version}":
        fail(f"{name}: chroot as 65532: {name} --version gave {r.returncode}: {r.stdout.strip()} {r.stderr.strip()}")
    else:
        ok(f"{name}: starts in its root filesystem as 65532 and says {r.stdout.strip()}")
    try:
        dns = DnsServer(DNS_NAME)
    except OSError as e:
        fail(f"{name}: cannot run the check's DNS server on {DNS_ADDR}:53: {e}")
        return
    try:
        result = reaches(name, rootfs, HOSTS_NAME)
        if result is not True:
            fail(f"{name}: {HOSTS_NAME} (in the image's /etc/hosts): {result}")
        elif any(q[0] == HOSTS_NAME for q in dns.questions):
            fail(f"{name}: {HOSTS_NAME} was asked of DNS though /etc/hosts has it: {dns.questions}")
        else:
            ok(f"{name}: as 65532 in its root filesystem, finds {HOSTS_NAME} in /etc/hosts and connects there")
        result = reaches(name, rootfs, DNS_NAME)
        if result is not True:
            fail(f"{name}: {DNS_NAME} (from the DNS server at {DNS_ADDR}): {result}; questions {dns.questions}")
        elif (DNS_NAME, 1) not in dns.questions:
            fail(f"{name}: connected, but the DNS server was not asked for {DNS_NAME}: {dns.questions}")
        else:
            ok(f"{name}: as 65532 in its root filesystem, resolves {DNS_NAME} by DNS and connects there")
    finally:
        dns.close()

    if name != "weft-proxy":
        return
    if run(["unshare", "--net", "true"]).returncode != 0:
        skip("weft-proxy init in the image: this machine forbids network namespaces")
        return
    ipv6 = "on" if os.path.exists("/proc/net/if_inet6") else "off"
    families = ["iptables", "ip6tables"] if ipv6 == "on" else ["iptables"]
    for backend in ("nft", "legacy"):
        # In a network namespace of its own, with /proc mounted in the root filesystem: init,
        # what the image's own iptables-save then lists, and cleanup.
        script = 'set -e; R="$1"; B="$2"; V="$3"; shift 3\n' \
            'chroot "$R" /usr/local/bin/weft-proxy init --backend "$B" --ipv6 "$V" --proxy-uid 65532\n' \
            'for f in "$@"; do chroot "$R" "/usr/sbin/$f-$B-save" -t nat; done\n' \
            'chroot "$R" /usr/local/bin/weft-proxy init --backend "$B" --ipv6 "$V" --cleanup\n'
        r = run(["unshare", "--net", "--mount", "--fork", f"--mount-proc={rootfs}/proc",
                 "sh", "-c", script, "sh", str(rootfs), backend, ipv6, *families])
        redirects = r.stdout.count("-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 7140")
        if r.returncode != 0 or redirects != len(families) or "rules removed" not in r.stdout:
            fail(f"weft-proxy init ({backend}): exit {r.returncode}, {redirects} outbound redirects for "
                 f"{len(families)} families: {r.stdout.strip()} {r.stderr.strip()}")
        else:
            ok(f"weft-proxy: init writes its {' and '.join(families)} rules with the image's {backend} programs, "
               "and removes them")


# === the Containerfile and the deployment files ===


def containerfile():
    """The Containerfile as (global ARGs, {stage: [(instruction, rest)]}, {stage: FROM})."""
    lines, current = [], ""
    for raw in CONTAINERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.endswith("\\"):
            current += raw[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    args, stages, froms, stage = {}, {}, {}, None
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"^(\S+)\s+AS\s+(\S+)$", rest.strip(), re.I)
            if not m:
                raise ValueError(f"FROM without a stage name: {line}")
            stage = m.group(2)
            froms[stage] = m.group(1)
            stages[stage] = []
        elif stage is None and word == "ARG":
            k, _, v = rest.strip().partition("=")
            args[k] = v
        elif stage is not None:
            stages[stage].append((word, rest.strip()))
    return args, stages, froms


def check_containerfile(configs, package):
    try:
        args, stages, froms = containerfile()
    except (OSError, ValueError) as e:
        fail(f"Containerfile: {e}")
        return
    problems = []
    if args.get("RUST_VERSION") != package["rust-version"]:
        problems.append(
            f"ARG RUST_VERSION={args.get('RUST_VERSION')}, Cargo.toml's rust-version is {package['rust-version']}"
        )
    if args.get("VERSION") != package["version"]:
        problems.append(f"ARG VERSION={args.get('VERSION')}, Cargo.toml's version is {package['version']}")
    if froms.get("build") != "docker.io/library/rust:${RUST_VERSION}-bookworm":
        problems.append(f"the build stage starts from {froms.get('build')}, not the official Rust image of RUST_VERSION")
    build_runs = " ".join(rest for word, rest in stages.get("build", []) if word == "RUN")
    if "configs/images/oci_layout.py --rootfs /rootfs" not in build_runs:
        problems.append("the build stage does not write the files with oci_layout.py --rootfs /rootfs")
    for script in ("configs/images/build-control.sh", "configs/images/build-proxy.sh"):
        if script not in build_runs:
            problems.append(f"the build stage does not build with {script}, as the images ship")
    for name in IMAGES:
        if froms.get(name) != "scratch":
            problems.append(f"stage {name} starts from {froms.get(name)}, not scratch")
            continue
        got = {"Labels": {}, "Env": []}
        copies = []
        for word, rest in stages[name]:
            if word == "USER":
                got["User"] = rest
            elif word == "WORKDIR":
                got["WorkingDir"] = rest
            elif word == "ENTRYPOINT":
                got["Entrypoint"] = json.loads(rest)
            elif word == "ENV":
                got["Env"].append(rest)
            elif word == "LABEL":
                for pair in shlex.split(rest):
                    k, _, v = pair.partition("=")
                    got["Labels"][k] = v.replace("${VERSION}", args.get("VERSION", ""))
            elif word == "COPY":
                copies.append(rest)
        want = {k: configs[name]["config"].get(k) for k in ("User", "WorkingDir", "Entrypoint", "Env", "Labels")}
        if got != want:
            problems.append(f"stage {name} declares {got}, the layout's config is {want}")
        if copies != [f"--from=build /rootfs/{name}/ /"]:
            problems.append(f"stage {name} copies {copies}, expected only the files oci_layout.py wrote for it")
    if problems:
        fail("configs/images/Containerfile: " + "; ".join(problems))
    else:
        ok(f"configs/images/Containerfile: rust:{args['RUST_VERSION']}, version {args['VERSION']}, "
           "both binaries built as they ship, and per image the layouts' user, entrypoint, env and labels")


def check_deployments(version):
    problems = []
    chart = (ROOT / "deploy-k8s/weft/Chart.yaml").read_text()
    m = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', chart, re.M)
    if not m or m.group(1) != version:
        problems.append(f"deploy-k8s/weft/Chart.yaml appVersion {m and m.group(1)}, expected {version} (the images' tag)")
    values = (ROOT / "deploy-k8s/weft/values.yaml").read_text()
    for name in IMAGES:
        if f"repository: ghcr.io/weft-mesh/{name}\n" not in values:
            problems.append(f"deploy-k8s/weft/values.yaml does not name ghcr.io/weft-mesh/{name}")
    named = 0
    for path in sorted((ROOT / "deploy-nomad").rglob("*.hcl")):
        for name, tag in re.findall(r"ghcr\.io/weft-mesh/([\w.-]+):([\w.-]+)", path.read_text()):
            named += 1
            if name not in IMAGES or tag != version:
                problems.append(
                    f"{path.relative_to(ROOT)} names ghcr.io/weft-mesh/{name}:{tag}, "
                    f"expected weft-control or weft-proxy at {version}"
                )
    if not named:
        problems.append("no image named in deploy-nomad/")
    if problems:
        fail("image names: " + "; ".join(problems))
    else:
        ok(f"the Helm chart and {named} image references in deploy-nomad/ name these images at {version}")


def check_all(binaries, work, package, is_root, started):
    version = package["version"]
    given = ["--control-bin", binaries["weft-control"], "--proxy-bin", binaries["weft-proxy"]]
    r = run([sys.executable, str(BUILD), *given, "--out", str(work / "a")])
    if r.returncode != 0:
        fail(f"oci_layout.py {' '.join(given)}: {r.stderr.strip()}")
        return
    for line in r.stdout.splitlines():
        print(f"     {line}")
    ok(f"oci_layout.py builds both layouts in {time.monotonic() - started:.1f} s")
    r = run([sys.executable, str(BUILD), *given, "--out", str(work / "b"), "weft-proxy"])
    first, second = tree_digest(work / "a" / "weft-proxy"), tree_digest(work / "b" / "weft-proxy")
    if r.returncode != 0 or first != second:
        fail(f"weft-proxy: a second build differs: {r.stderr.strip()} {sorted(set(first.items()) ^ set(second.items()))}")
    else:
        manifest = index_manifest(work / "a" / "weft-proxy")["digest"]
        ok(f"weft-proxy: a second build gives the same {len(first)} files, byte for byte (manifest {manifest})")
    shutil.rmtree(work / "b", ignore_errors=True)
    bases = {base_layer(work / "a" / n)["digest"] for n in IMAGES}
    if len(bases) != 1:
        fail(f"the two images' base layers differ: {bases}")
    else:
        ok(f"both images share one base layer ({bases.pop()})")

    configs = {}
    for name in IMAGES:
        layout = work / "a" / name
        config, rootfs = check_layout(name, layout, version, is_root, work)
        if config is not None:
            configs[name] = config
        if rootfs is None:
            continue
        check_rootfs(name, rootfs, layout, binaries[name], is_root)
        if not is_root:
            skip(f"{name}: starting it inside its root filesystem needs root (chroot)")
            continue
        try:
            as_a_runtime_would(rootfs, work)
        except (OSError, RuntimeError) as e:
            fail(f"{name}: cannot prepare its root filesystem as a runtime would: {e}")
            continue
        check_inside(name, rootfs, version)
    if len(configs) == len(IMAGES):
        check_containerfile(configs, package)
    check_deployments(version)


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    binaries = {name: str(pathlib.Path(path).resolve()) for name, path in zip(IMAGES, sys.argv[1:])}
    work = pathlib.Path(binaries["weft-control"]).parent / "images-check"
    started = time.monotonic()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        check_all(binaries, work, cargo_package(), os.geteuid() == 0, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"images: {len(passed)} passed, {len(failures)} failed ({time.monotonic() - started:.0f} s)")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
