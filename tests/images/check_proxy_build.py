"""Checks the proxy binary as configs/images/build-proxy.sh builds it for its image.

Usage: python3 tests/images/check_proxy_build.py BINARY

- laid out in the link order: most of the functions configs/images/weft-proxy.order names are
  in the binary, at addresses that rise in the order's sequence (nm);
- in a root without any library (when run as root: a chroot, as user 65532), it starts, and
  it finds its control plane by a name in /etc/hosts and by a name only a DNS server knows, and
  connects there: glibc's `files` and `dns` sources work in the static binary (the proxy's
  image also holds iptables' libraries, so check_images.py's run inside it proves less).

That it is static with its relocations packed, check_images.py checks for both images' binaries.

Prints one line per check; exits 1 if any failed.
"""

import os
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import check_images as images  # noqa: E402  (its runtime set-up, DNS server and connect check)

ORDER = ROOT / "configs" / "images" / "weft-proxy.order"
# The images check's reporting and helpers.
ok, fail, run = images.ok, images.fail, images.run


def check_order(binary):
    wanted = [l for l in ORDER.read_text().splitlines() if l]
    address = {}
    for line in run(["nm", binary]).stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tTwW":
            address.setdefault(fields[2], int(fields[0], 16))
    present = [address[name] for name in wanted if name in address]
    if len(present) < len(wanted) * 8 // 10:
        fail(f"the binary has {len(present)} of the {len(wanted)} functions the link order names: write a new order")
        return
    # Code folded with identical code elsewhere may sit at another function's address; the rest
    # must follow the order.
    ascending = sum(1 for a, b in zip(present, present[1:]) if b > a)
    if ascending < (len(present) - 1) * 9 // 10:
        fail(f"the ordered functions are not laid out in the order: {ascending} of {len(present) - 1} steps ascend")
        return
    ok(
        f"{len(present)} of the {len(wanted)} ordered functions present, laid out in the order "
        f"({ascending} of {len(present) - 1} steps ascend)"
    )


def check_starts(binary):
    want = f"weft-proxy {images.cargo_package()['version']}"
    r = run([binary, "--version"])
    if r.stdout.strip() != want:
        fail(f"{binary} --version says {r.stdout.strip() or r.stderr.strip()!r}, not {want!r}")
        return
    if os.geteuid() != 0:
        ok(f"starts ({want}); not root, so not tried in an empty root")
        return
    with tempfile.TemporaryDirectory(prefix="weft-static.") as work:
        # A root with no library at all: the binary, /etc/nsswitch.conf as the image has it, and
        # what a runtime and volumes add (the images check's own set-up).
        work = pathlib.Path(work)
        root = work / "root"
        for d in ("etc", "tmp", "usr/local/bin"):
            (root / d).mkdir(parents=True)
        os.chmod(root, 0o755)
        os.chmod(root / "tmp", 0o1777)
        (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")
        shutil.copy(binary, root / "usr/local/bin/weft-proxy")
        images.as_a_runtime_would(str(root), work)
        r = run(["chroot", "--userspec=65532:65532", str(root), "/usr/local/bin/weft-proxy", "--version"])
        if r.returncode != 0 or r.stdout.strip() != want:
            fail(f"in a root without libraries it says {r.stdout.strip() or r.stderr.strip()!r}")
            return
        ok(f"starts as 65532 in a root without libraries ({want})")
        dns = images.DnsServer(images.DNS_NAME)
        try:
            for name, source in ((images.HOSTS_NAME, "/etc/hosts"), (images.DNS_NAME, "DNS")):
                result = images.reaches("weft-proxy", root, name)
                if result is not True:
                    fail(f"{name} (from {source}), in a root without libraries: {result}; DNS questions {dns.questions}")
                else:
                    ok(f"resolves {name} from {source} without glibc's shared libraries, and connects there")
        finally:
            dns.close()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2])
    binary = sys.argv[1]
    check_order(binary)
    check_starts(binary)
    sys.exit(1 if images.failures else 0)


if __name__ == "__main__":
    main()
