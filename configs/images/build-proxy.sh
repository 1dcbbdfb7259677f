#!/usr/bin/env bash
# Builds weft-proxy as it ships in its image, and prints the binary's path:
#
#   configs/images/build-proxy.sh [CARGO_ARGS...]     # e.g. -q
#
# - the `sidecar` profile of Cargo.toml: one codegen unit, whole-program LTO, start-up-only
#   crates optimized for size;
# - linked statically (glibc's static libraries; `getaddrinfo` needs no shared library for the
#   `files` and `dns` sources that glibc 2.34 and later builds in), so a proxy maps no libc,
#   libm, libgcc_s or loader beside its binary;
# - relative relocations packed (`-z pack-relative-relocs`): a static PIE relocates itself at
#   start-up, and the packed table is 5 KB instead of 430 KB read and kept resident;
# - the functions the bench's proxies ran laid out first, hottest first
#   (configs/images/weft-proxy.order, from `ORDER=configs/images/weft-proxy.order
#   tests/bench/run.sh 3 16`), so that a proxy's code sits on few pages. The order names
#   symbols as the toolchain that wrote it (rustc 1.95) and Cargo.lock mangle them; a symbol it
#   names that the binary lacks is skipped, so an order older than the code or the compiler costs
#   memory, never correctness, and the script says when most of it no longer applies. The
#   linker is the LLD that ships with rustc (`gcc-ld/ld.lld`), which reads the order (GNU ld
#   does not).
#
# The binary is <target dir>/<host triple>/sidecar/weft-proxy; RUSTFLAGS differ from a plain build,
# so it gets a directory of its own under target/ and does not rebuild target/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
host=$(rustc -vV | sed -n 's/^host: //p')
order=configs/images/weft-proxy.order
[ -f "$order" ] || { echo "build-proxy.sh: $order is missing" >&2; exit 1; }
lld_dir="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
[ -x "$lld_dir/ld.lld" ] || { echo "build-proxy.sh: no $lld_dir/ld.lld in this toolchain" >&2; exit 1; }
flags=(-C target-feature=+crt-static -C "link-arg=-B$lld_dir" -C link-arg=-fuse-ld=lld
       -C link-arg=-Wl,-z,pack-relative-relocs
       -C "link-arg=-Wl,--symbol-ordering-file=$order" -C link-arg=-Wl,--no-warn-symbol-ordering)
RUSTFLAGS="${flags[*]}" cargo build --profile sidecar --locked -p weft-proxy --target "$host" "$@" >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
binary="$target_dir/$host/sidecar/weft-proxy"
# How much of the order this binary still has.
wanted=$(wc -l < "$order")
found=$(nm "$binary" | awk '{print $NF}' | sort -u | comm -12 - <(sort -u "$order") | wc -l)
if [ "$found" -lt $((wanted * 8 / 10)) ]; then
  echo "build-proxy.sh: the binary has only $found of the $wanted functions $order names (another" \
    "rustc, or much changed code): its code is laid out mostly in the default order, and an idle" \
    "proxy maps more of it. Write a new order: ORDER=$order tests/bench/run.sh 3 16" >&2
fi
echo "$binary"
