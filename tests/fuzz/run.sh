#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz for the given time each (default 20 s), one after the
# other, at the lowest CPU priority. Usage: tests/fuzz/run.sh [seconds] [target...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`); without them
# it says so in one line and succeeds. Each target starts from its seed corpus
# (tests/fuzz/corpus/<target>, never written to) and a working corpus under the target
# directory, which later runs go on from. A crash, an abort, a timeout (10 s for one input) or
# more than 2 GiB of memory fails the target: its input is left in tests/fuzz/artifacts/<target>/
# and the exit status is 1. One line per target says how it went.
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds="${1:-20}"
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "tests/fuzz: skipped (no nightly toolchain with cargo-fuzz)"
  exit 0
fi
fuzz=(--fuzz-dir tests/fuzz)
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list "${fuzz[@]}")
fi
nice -n 19 cargo +nightly fuzz build "${fuzz[@]}" || exit 1

target_dir="$(cd tests/fuzz && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
work="$target_dir/fuzz-corpus"
status=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  nice -n 19 cargo +nightly fuzz run "${fuzz[@]}" "$t" "$work/$t" "tests/fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')"
  if [ $rc -eq 0 ]; then
    echo "$t: ok, ${seconds} s, ${runs:-?} executions, coverage ${cov:-?}"
  else
    status=1
    echo "$t: FAILED (exit $rc) after ${runs:-?} executions; see $log and tests/fuzz/artifacts/$t/"
    grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/  /'
  fi
done
exit $status
