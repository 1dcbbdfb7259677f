#!/usr/bin/env bash
# Builds weft-control as it ships in its image, and prints the binary's path:
#
#   configs/images/build-control.sh [CARGO_ARGS...]     # e.g. -q
#
# The release profile, linked statically with relative relocations packed
# (configs/images/static.sh), so that its image needs no library. The binary is
# <target dir>/<host triple>/release/weft-control, apart from target/release's plain build.
set -euo pipefail
source "$(dirname "$0")/static.sh"
RUSTFLAGS="${static_flags[*]}" cargo build --release --locked -p weft-control --target "$host" "$@" >&2
echo "$target_dir/$host/release/weft-control"
