#!/usr/bin/env bash
# Builds weft-proxy as it ships in its image, and prints the binary's path:
#
#   configs/images/build-proxy.sh [CARGO_ARGS...]     # e.g. -q
#
# - the `sidecar` profile of Cargo.toml: one codegen unit, whole-program LTO, start-up-only
#   crates optimized for size;
# - linked statically, relative relocations packed (configs/images/static.sh);
# - the functions the bench's proxies ran laid out first, hottest first
#   (configs/images/weft-proxy.order, from `ORDER=configs/images/weft-proxy.order
#   tests/bench/run.sh 3 16`), so that a proxy's code sits on few pages. The order names
#   symbols as the toolchain that wrote it (rustc 1.95) and Cargo.lock mangle them; a symbol it
#   names that the binary lacks is skipped, so an order older than the code or the compiler costs
#   memory, never correctness, and the script says when most of it no longer applies. LLD
#   reads the order (GNU ld does not).
#
# The binary is <target dir>/<host triple>/sidecar/weft-proxy; RUSTFLAGS differ from a plain build,
# so it gets a directory of its own under target/ and does not rebuild target/release.
set -euo pipefail
source "$(dirname "$0")/static.sh"
order=configs/images/weft-proxy.order
[ -f "$order" ] || { echo "build-proxy.sh: $order is missing" >&2; exit 1; }
flags=("${static_flags[@]}" -C "link-arg=-Wl,--symbol-ordering-file=$order" -C link-arg=-Wl,--no-warn-symbol-ordering)
RUSTFLAGS="${flags[*]}" cargo build --profile sidecar --locked -p weft-proxy --target "$host" "$@" >&2
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
