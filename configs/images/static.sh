# Sourced by build-proxy.sh and build-control.sh: how both images' binaries are linked.
#
# - statically (glibc's static libraries; `getaddrinfo` needs no shared library for the `files`
#   and `dns` sources that glibc 2.34 and later builds in), so a binary maps no libc, libm,
#   libgcc_s or loader beside itself and its image needs none;
# - relative relocations packed (`-z pack-relative-relocs`): a static PIE relocates itself at
#   start-up, and the packed table is a few KB instead of hundreds read and kept resident;
# - by the LLD that ships with rustc (`gcc-ld/ld.lld`), which also reads the proxy's link order.
#
# Sets `host` (the target triple, given to cargo as --target so that RUSTFLAGS reach neither
# build scripts nor proc macros, and the binaries get a directory of their own under target/),
# `static_flags` (an array of rustc flags) and `target_dir`.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
host=$(rustc -vV | sed -n 's/^host: //p')
lld_dir="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
[ -x "$lld_dir/ld.lld" ] || { echo "$(basename "$0"): no $lld_dir/ld.lld in this toolchain" >&2; exit 1; }
static_flags=(-C target-feature=+crt-static -C "link-arg=-B$lld_dir" -C link-arg=-fuse-ld=lld
              -C link-arg=-Wl,-z,pack-relative-relocs)
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
