"""Builds Weft's container images, ghcr.io/weft-mesh/weft-control and ghcr.io/weft-mesh/weft-proxy,
as OCI image layouts (https://github.com/opencontainers/image-spec/blob/main/image-layout.md),
from binaries cargo has already built, without a container daemon.

Each image is a directory holding `oci-layout`, `index.json` (one manifest, tagged with the
workspace version of Cargo.toml) and `blobs/sha256/`: the manifest, the config (user 65532:65532,
the binary as entrypoint, PATH, the org.opencontainers.image.* labels) and gzip-compressed tar
layers, bottom first:

1. base: the dynamic loader and exactly the shared libraries `ldd` lists for the binary (none
   for the binaries as configs/images/build-proxy.sh and build-control.sh build them,
   statically; a binary linked against shared libraries gets them here), copied from this
   machine with the symlinks on their paths (a merged-/usr Debian gives `lib -> usr/lib`);
   their Debian packages' copyright files; /etc/passwd and /etc/group (root, and nonroot 65532,
   whose home is /nonexistent); /etc/nsswitch.conf (passwd and group from files, hosts from
   files then DNS); an empty /tmp (1777). glibc 2.34 and later has `files` and `dns` inside
   libc.so.6, so no NSS module is needed. No CA certificates: proxies and the control plane
   trust the mesh's own roots, the Kubernetes API's CA comes with the ServiceAccount, and
   Nomad's with `ca_file` (else the Mozilla roots built into the binary).
2. weft-proxy only: iptables. The injected `weft-init` container runs `weft-proxy init` from
   this image, which runs `iptables-nft-restore` or `iptables-legacy-restore` (and their
   ip6tables twins), so the image carries both backends' programs, the extension modules of
   /usr/lib/<triplet>/xtables, the libraries those need, their copyright files, and /run
   (0755, for iptables-legacy's lock, which the init container takes as root).
3. the binary, stripped of debug info (`objcopy --strip-debug`: the release profile keeps line
   tables; the symbol table stays, so a backtrace still names functions), at
   /usr/local/bin/<name>.

No shell, no package manager. Everything is owned by 0:0 and only /tmp is writable by others.
The libraries come from this machine, so run it where the binaries were built (a Debian system
with `ldd`, `objcopy` and `dpkg-query`; for weft-proxy also the `iptables` package).

Reproducible: entries sorted, owned by 0:0 with no user names, mtimes SOURCE_DATE_EPOCH (0 when
unset), modes normalised (0755 for directories and executables, 0644 for other files, 1777 for
/tmp), gzip without name or time, JSON with sorted keys: the same binaries and system files give
the same digests.

Usage:
  python3 configs/images/oci_layout.py [--bin-dir DIR] [--control-bin FILE] [--proxy-bin FILE]
                                       [--out DIR] [IMAGE...]
      Writes DIR/<image>/ (default target/images/) for each IMAGE (default both) from the
      binaries in --bin-dir, replacing an earlier layout there. Without --bin-dir, the binaries
      are those configs/images/build-control.sh and build-proxy.sh build (target/<host>/release/
      and target/<host>/sidecar/), or --control-bin and --proxy-bin.
      Push with: skopeo copy oci:target/images/weft-proxy:<version> docker://ghcr.io/weft-mesh/weft-proxy:<version>
  python3 configs/images/oci_layout.py --rootfs DIR [--bin-dir DIR] [--control-bin FILE]
                                       [--proxy-bin FILE] [IMAGE...]
      Writes each image's files, all layers applied, to DIR/<image>/ instead (the Containerfile
      copies them onto `scratch`); the config is then the Containerfile's.

Standard library only (and the programs named above). Exits 1 with the reason on any error.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGISTRY = "ghcr.io/weft-mesh"
SOURCE = "https://github.com/weft-mesh/weft"
USER = "65532:65532"
BIN_DIR = "usr/local/bin"
PATH = "/usr/local/bin:/usr/sbin:/usr/bin"
# The programs `weft-proxy init` looks for (crates/weft-proxy/src/init.rs, `tools_of`).
IPTABLES_PROGRAMS = [
    f"/usr/sbin/{family}-{backend}{tail}"
    for family in ("iptables", "ip6tables")
    for backend in ("nft", "legacy")
    for tail in ("", "-restore", "-save")
]
GZIP_LEVEL = 6

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# ELF e_machine -> OCI architecture.
ARCHITECTURES = {62: "amd64", 183: "arm64"}


class BuildError(Exception):
    """Why an image cannot be built; printed as is."""


# === the file tree of a layer ===


class Tree:
    """The entries of one layer, by path relative to the image's root ("usr/lib/..."): ("dir",
    mode), ("file", mode, source path or bytes) or ("symlink", target)."""

    def __init__(self):
        self.entries = {}

    def put(self, path, entry):
        path = path.strip("/")
        parent = os.path.dirname(path)
        while parent:
            self._set(parent, ("dir", 0o755))
            parent = os.path.dirname(parent)
        self._set(path, entry)

    def _set(self, path, entry):
        old = self.entries.get(path)
        if old is not None and old != entry:
            raise BuildError(f"/{path} would be both {old[:2]} and {entry[:2]}")
        self.entries[path] = entry

    def directory(self, path, mode=0o755):
        self.put(path, ("dir", mode))

    def data(self, path, content, mode=0o644):
        self.put(path, ("file", mode, content))

    def host_path(self, path):
        """Adds `path` as this machine has it: each symlink met on the way (a directory's too,
        such as /lib -> usr/lib) with its target as written, and the regular file it leads to.
        Returns that file's path on this machine."""
        for _ in range(40):
            parts = pathlib.PurePosixPath(path).parts[1:]
            current = "/"
            for i, part in enumerate(parts):
                current = os.path.join(current, part)
                try:
                    st = os.lstat(current)
                except OSError as e:
                    raise BuildError(f"{path}: {e.strerror}: {current}") from None
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(current)
                    self.put(current, ("symlink", target))
                    resolved = target if target.startswith("/") else os.path.join(os.path.dirname(current), target)
                    path = os.path.normpath(os.path.join(resolved, *parts[i + 1 :]))
                    break
                if i == len(parts) - 1:
                    if not stat.S_ISREG(st.st_mode):
                        raise BuildError(f"{current} is not a regular file")
                    self.put(current, ("file", 0o755 if st.st_mode & 0o111 else 0o644, current))
                    return current
                if not stat.S_ISDIR(st.st_mode):
                    raise BuildError(f"{current} (on the way to {path}) is not a directory")
            else:
                raise BuildError(f"{path}: not a file")
        raise BuildError(f"{path}: too many levels of symbolic links")

    def without(self, lower):
        """This tree less what the trees in `lower` already hold the same way (their common
        parent directories stay, so that each layer's tar stands on its own)."""
        out = Tree()
        for path, entry in self.entries.items():
            if entry[0] == "dir" or all(t.entries.get(path) != entry for t in lower):
                out.put(path, entry)
        return out


# === what goes in the images ===


def run(argv, what):
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found: it is needed to {what}") from None
    return r


def shared_libraries(path):
    """The dynamic loader and the libraries `ldd` lists for `path`, as it names them."""
    r = run(["ldd", path], "list the libraries of the binaries")
    if r.returncode != 0:
        if "not a dynamic executable" in r.stdout + r.stderr:
            return []
        raise BuildError(f"ldd {path} failed: {r.stderr.strip()}")
    found = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise BuildError(f"ldd {path}: {line}: install it, or build the binary without it")
        m = re.match(r"^(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            found.append(m.group(1))
        elif line.startswith("linux-vdso") or line == "statically linked":
            continue
        elif line:
            raise BuildError(f"ldd {path}: cannot read the line {line!r}")
    return found


def debian_packages(files):
    """The Debian packages that ship `files` (paths on this machine), as {file: [package]}.
    dpkg knows a file by the path its package installs it under, which on a merged-/usr system
    may be the /lib or /sbin alias of the real path: both are asked."""
    aliases = {}
    for top in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        target = os.path.join("/", top)
        if os.path.islink(target) and os.path.normpath(os.path.join("/", os.readlink(target))) == f"/usr/{top}":
            aliases[f"/usr/{top}/"] = f"/{top}/"
    candidates = {}
    for f in files:
        names = [f]
        for usr, short in aliases.items():
            if f.startswith(usr):
                names.append(short + f[len(usr) :])
        candidates[f] = names
    asked = sorted({n for names in candidates.values() for n in names})
    r = run(["dpkg-query", "-S", *asked], "find the Debian packages (and their copyright files) of the libraries")
    owners = {}
    for line in r.stdout.splitlines():
        if ": " not in line or line.startswith("diversion by "):
            continue
        packages, name = line.split(": ", 1)
        owners[name] = [p.strip().split(":")[0] for p in packages.split(",")]
    out = {}
    for f, names in candidates.items():
        pkgs = sorted({p for n in names for p in owners.get(n, [])})
        if not pkgs:
            raise BuildError(
                f"no Debian package ships {f} (dpkg-query -S): its license cannot go in the image; "
                "build on a Debian system whose packages provide every library"
            )
        out[f] = pkgs
    return out


def add_copyrights(tree, files):
    for pkg in sorted({p for pkgs in debian_packages(files).values() for p in pkgs}):
        copyright = f"/usr/share/doc/{pkg}/copyright"
        if not os.path.exists(copyright):
            raise BuildError(f"{copyright} is missing (package {pkg}): its license cannot go in the image")
        tree.host_path(copyright)


def base_tree(binary):
    """Layer 1: loader, libraries, their copyright files, /etc and /tmp."""
    tree = Tree()
    tree.directory("tmp", 0o1777)
    tree.data(
        "etc/passwd",
        b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n",
    )
    tree.data("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    tree.data("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    copied = [tree.host_path(lib) for lib in shared_libraries(binary)]
    add_copyrights(tree, copied)
    return tree


def iptables_tree(base):
    """Layer 2 of weft-proxy: the programs `weft-proxy init` runs, their extension modules and
    the libraries of both, less what the base layer holds."""
    tree = Tree()
    # iptables-legacy takes its lock at /run/xtables.lock; only root (the init container) may
    # write there.
    tree.directory("run")
    programs = []
    for program in IPTABLES_PROGRAMS:
        if not os.path.exists(program):
            raise BuildError(
                f"{program} not found: weft-proxy init needs it in the image; install iptables (apt-get install iptables)"
            )
        programs.append(tree.host_path(program))
    # libxtables loads the extensions (tcp, owner, REDIRECT, ...) from the xtables directory
    # beside it (Debian's XTABLES_LIBDIR).
    libxtables = [lib for lib in shared_libraries(programs[0]) if os.path.basename(lib).startswith("libxtables.")]
    xtables = os.path.join(os.path.dirname(os.path.realpath(libxtables[0])), "xtables") if libxtables else ""
    if not os.path.isdir(xtables):
        raise BuildError(f"no xtables extension directory beside the libxtables of {programs[0]}")
    modules = [tree.host_path(os.path.join(xtables, name)) for name in sorted(os.listdir(xtables))]
    copied = set(programs + modules)
    for f in sorted(copied):
        copied.update(tree.host_path(lib) for lib in shared_libraries(f))
    add_copyrights(tree, sorted(copied))
    return tree.without([base])


def binary_tree(binary, name, workdir):
    """The last layer: the binary without its debug info."""
    stripped = os.path.join(workdir, name)
    r = run(["objcopy", "--strip-debug", binary, stripped], "strip debug info from the binaries (apt-get install binutils)")
    if r.returncode != 0:
        raise BuildError(f"objcopy --strip-debug {binary} failed: {r.stderr.strip()}")
    tree = Tree()
    tree.put(f"{BIN_DIR}/{name}", ("file", 0o755, stripped))
    return tree


# === OCI ===


class Digesting:
    """A file-like object that counts and hashes what passes through it to `sink`."""

    def __init__(self, sink):
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, b):
        self.hash.update(b)
        self.size += len(b)
        return self.sink.write(b)

    def flush(self):
        pass

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


def write_layer(tree, blobs, epoch):
    """Writes `tree` as a gzip-compressed tar blob; returns its descriptor, diff ID and size
    unpacked."""
    tmp = tempfile.NamedTemporaryFile(dir=blobs, delete=False)
    try:
        compressed = Digesting(tmp)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0) as gz:
            plain = Digesting(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(tree.entries):
                    entry = tree.entries[path]
                    info = tarfile.TarInfo(path)
                    info.mtime = epoch
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if entry[0] == "dir":
                        info.type, info.mode = tarfile.DIRTYPE, entry[1]
                        tar.addfile(info)
                    elif entry[0] == "symlink":
                        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry[1]
                        tar.addfile(info)
                    else:
                        info.mode = entry[1]
                        content = entry[2]
                        if isinstance(content, bytes):
                            info.size = len(content)
                            tar.addfile(info, io.BytesIO(content))
                        else:
                            info.size = os.path.getsize(content)
                            with open(content, "rb") as f:
                                tar.addfile(info, f)
        tmp.close()
        os.chmod(tmp.name, 0o644)
        digest = compressed.digest()
        os.replace(tmp.name, os.path.join(blobs, digest.split(":")[1]))
    except BaseException:
        tmp.close()
        os.unlink(tmp.name)
        raise
    return {"mediaType": MEDIA_LAYER, "digest": digest, "size": compressed.size}, plain.digest(), plain.size


def write_blob(blobs, media_type, value):
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest.split(":")[1]), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def architecture(binary):
    with open(binary, "rb") as f:
        header = f.read(20)
    if header[:4] != b"\x7fELF" or header[5] != 1:
        raise BuildError(f"{binary} is not a little-endian ELF binary")
    machine = int.from_bytes(header[18:20], "little")
    if machine not in ARCHITECTURES:
        raise BuildError(f"{binary}: ELF machine {machine} has no OCI architecture here")
    return ARCHITECTURES[machine]


def labels(name, version):
    return {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": SOURCE,
    }


def unpacked_size(trees):
    """The bytes of regular files once every layer is applied."""
    final = {}
    for tree in trees:
        final.update(tree.entries)
    total = 0
    for entry in final.values():
        if entry[0] == "file":
            total += len(entry[2]) if isinstance(entry[2], bytes) else os.path.getsize(entry[2])
    return total


def write_layout(out, name, version, binary, trees, epoch):
    """Writes the OCI layout of one image to `out`, replacing an earlier layout there."""
    if os.path.exists(out) and not os.path.isfile(os.path.join(out, "oci-layout")):
        raise BuildError(f"{out} exists and is not an OCI layout: not replacing it")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        blobs = os.path.join(work, "blobs", "sha256")
        os.makedirs(blobs)
        layers, diff_ids, history = [], [], []
        created = epoch_text(epoch)
        for what, tree in trees:
            descriptor, diff_id, _ = write_layer(tree, blobs, epoch)
            layers.append(descriptor)
            diff_ids.append(diff_id)
            history.append({"created": created, "created_by": f"configs/images/oci_layout.py: {what}"})
        arch = architecture(binary)
        config = {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": {
                "User": USER,
                "Entrypoint": [f"/{BIN_DIR}/{name}"],
                "Env": [f"PATH={PATH}"],
                "WorkingDir": "/",
                "Labels": labels(name, version),
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": write_blob(blobs, MEDIA_CONFIG, config),
            "layers": layers,
            "annotations": labels(name, version),
        }
        descriptor = write_blob(blobs, MEDIA_MANIFEST, manifest)
        descriptor["platform"] = {"architecture": arch, "os": "linux"}
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": version}
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [descriptor]}
        with open(os.path.join(work, "index.json"), "w") as f:
            json.dump(index, f, sort_keys=True, separators=(",", ":"))
        with open(os.path.join(work, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return descriptor["digest"], sum(layer["size"] for layer in layers), len(layers)


def write_rootfs(out, trees, epoch):
    """Writes the files of `trees`, applied in order, to the directory `out` (new)."""
    final = {}
    for tree in trees:
        final.update(tree.entries)
    os.makedirs(out)
    for path in sorted(final):
        entry, target = final[path], os.path.join(out, path)
        if entry[0] == "dir":
            os.makedirs(target, exist_ok=True)
        elif entry[0] == "symlink":
            os.symlink(entry[1], target)
            continue
        elif isinstance(entry[2], bytes):
            with open(target, "wb") as f:
                f.write(entry[2])
        else:
            shutil.copyfile(entry[2], target)
        os.chmod(target, entry[1])
    for path in sorted(final, reverse=True):
        os.utime(os.path.join(out, path), (epoch, epoch), follow_symlinks=False)


def epoch_text(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def workspace_version():
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


# How each image's binary ships: the script that builds it and the profile it builds in, under
# target/<host>/ (both are static; see configs/images/static.sh).
SHIPPED = {
    "weft-control": ("configs/images/build-control.sh", "release"),
    "weft-proxy": ("configs/images/build-proxy.sh", "sidecar"),
}


def binary_path(name, bin_dir, given):
    """Where `name`'s binary is: `given` (--control-bin, --proxy-bin), else in `bin_dir`, else
    where its build script (SHIPPED) puts it."""
    if given:
        return given
    if bin_dir:
        return os.path.join(bin_dir, name)
    r = run(["rustc", "-vV"], "find the host's target triple")
    host = re.search(r"^host: (\S+)$", r.stdout, re.M)
    if r.returncode != 0 or not host:
        raise BuildError(f"rustc -vV names no host: {r.stderr.strip()}")
    return str(ROOT / "target" / host.group(1) / SHIPPED[name][1] / name)


def check_binary(binary, name, version):
    if not os.path.isfile(binary):
        raise BuildError(f"{binary} not found: build it first ({SHIPPED[name][0]})")
    r = run([binary, "--version"], f"ask {name} its version")
    if r.returncode != 0 or r.stdout.strip() != f"{name} {version}":
        raise BuildError(
            f"{binary} --version says {r.stdout.strip() or r.stderr.strip()!r}, "
            f"not {name} {version} (Cargo.toml): rebuild it"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="weft-control, weft-proxy (default: both)")
    parser.add_argument(
        "--bin-dir",
        help="where the binaries are (default: where configs/images/build-control.sh and "
        "build-proxy.sh put them)",
    )
    parser.add_argument("--control-bin", help="weft-control's binary (default: in --bin-dir when given)")
    parser.add_argument("--proxy-bin", help="weft-proxy's binary (default: in --bin-dir when given)")
    parser.add_argument(
        "--out", default=str(ROOT / "target" / "images"), help="where the layouts go (default target/images)"
    )
    parser.add_argument("--rootfs", metavar="DIR", help="write each image's files to DIR/<image>/ instead of a layout")
    args = parser.parse_args()
    images = args.images or ["weft-control", "weft-proxy"]
    try:
        for name in images:
            if name not in ("weft-control", "weft-proxy"):
                raise BuildError(f"unknown image {name!r}: weft-control or weft-proxy")
        epoch_env = os.environ.get("SOURCE_DATE_EPOCH", "0")
        if not epoch_env.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={epoch_env!r} is not a number of seconds")
        epoch = int(epoch_env)
        version = workspace_version()
        with tempfile.TemporaryDirectory(prefix="weft-images.") as workdir:
            for name in images:
                given = args.proxy_bin if name == "weft-proxy" else args.control_bin
                binary = binary_path(name, args.bin_dir, given)
                check_binary(binary, name, version)
                base = base_tree(binary)
                trees = [("base: loader, libraries, /etc, /tmp", base)]
                if name == "weft-proxy":
                    trees.append(("iptables, for weft-proxy init", iptables_tree(base)))
                trees.append((f"/{BIN_DIR}/{name}", binary_tree(binary, name, workdir)))
                if args.rootfs:
                    out = os.path.join(args.rootfs, name)
                    write_rootfs(out, [t for _, t in trees], epoch)
                    print(f"{name} {version}: files in {out}")
                    continue
                out = os.path.join(args.out, name)
                digest, compressed, count = write_layout(out, name, version, binary, trees, epoch)
                unpacked = unpacked_size([t for _, t in trees])
                print(
                    f"{name} {version}: {out} ({REGISTRY}/{name}:{version}), {count} layers, "
                    f"{compressed / 2**20:.1f} MiB compressed, {unpacked / 2**20:.1f} MiB unpacked, manifest {digest}"
                )
    except BuildError as e:
        print(f"oci_layout.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
