#!/usr/bin/env bash
# Weft proxy benchmark. Measures, in one run and at one fixed connection count, requests/s,
# p50/p99 latency, the proxy's CPU time per request (from /proc, proxy pinned to core 0, load
# generator and backend on core 1) and peak RSS for:
#   direct      wrk -> backend
#   weft plain  wrk -> weft-proxy (outbound, unmeshed endpoint) -> backend
#   weft mTLS   wrk -> weft-proxy -> mutual TLS (HTTP/2) -> weft-proxy -> backend
#   weft plain + 20 route rules  as weft plain, the service with 20 routes of mixed matches (exact,
#               prefix, regular expression, header), the request matching the last in precedence
#   weft plain + split      as weft plain, the service split 90/10 between two backend services
#   weft mTLS + policy      as weft mTLS, to a service whose route has a timeout and a retry and
#               whose server has an inbound rate limit (high enough never to refuse)
#   weft plain + access log  as weft plain, through a proxy of its own whose workload the mesh
#               file gives a common-format access log (written to a file under the run's
#               directory; the script checks it has a line per request)
#   weft mTLS + tracing 100 %  as weft mTLS, from a client proxy of its own that starts a trace
#               for every request: both proxies record a span per request and export them over
#               OTLP/gRPC to a receiver on core 1 (tests/bench/otlp_sink.rs)
#   nginx       wrk -> nginx reverse proxy (1 worker) -> backend
# and, with h2load (h2c, prior knowledge) in place of wrk, the same for HTTP/2 and for gRPC:
#   h2 direct       h2load -> HTTP/2 backend (nginx answering "ok")
#   h2 weft plain   h2load -> weft-proxy (outbound, unmeshed endpoint declared http2) -> backend
#   h2 weft mTLS    h2load -> weft-proxy -> mutual TLS -> weft-proxy -> backend
#   h2 nginx        h2load -> nginx (1 worker, grpc_pass: its proxy_pass speaks only HTTP/1.x
#                   to an upstream) -> backend
#   grpc direct, grpc weft plain, grpc weft mTLS, grpc nginx  the same paths (the endpoint
#                   declared grpc) to a gRPC backend (tests/bench/grpc_backend.rs), with unary
#                   calls: POST, content-type application/grpc, te: trailers, one small message
# The HTTP/2 and gRPC cases have proxies of their own (a client and a server proxy each), so
# that their peak RSS is theirs; a case fails the run if h2load counts a failed request or a
# status other than 2xx, or, for gRPC, an answer without its message or a weft proxy counts a
# failure (a grpc-status other than 0).
# With the two observability cases the mesh names a collector, so every proxy of the run looks
# for a trace context in each request; OBSERVE=0 leaves them and the collector out, which
# measures the other paths with observability off.
# The backend is an nginx worker answering "ok". Then IDLE_CONNS (1000) idle client connections
# are held against the proxy pair to measure memory per connection, and memory IDLE_AFTER (60)
# seconds after they close. Writes markdown tables to stdout and to target/bench/results.md.
# Traffic stays on 127.0.0.1; each run is bounded by DURATION, the idle hold and IDLE_AFTER.
# Then h2load sends H2_REQUESTS through the proxy pair to an nginx HTTP/2 backend that sends
# GOAWAY after every 1000 streams, which must cost no request.
#
# INSN=1 runs the proxies under callgrind instead and reports the instructions each proxy path
# executes per request (summed over the proxies of the path, all threads), counted between a
# reset and a dump of callgrind's counters around each measurement: unlike CPU time on a shared
# machine it varies little from run to run, so it can tell a few per cent apart. Latency and
# RSS mean nothing under callgrind; the direct and nginx cases, memory and the GOAWAY check
# are skipped, the weft HTTP/2 and gRPC cases are counted.
#
# ORDER=FILE runs as INSN=1 and writes to FILE the functions the proxies ran, hottest first, as
# the link order of the proxy's release image (see configs/images/build-proxy.sh).
#
# DHAT=1 runs the memory part only, its client and server proxy under valgrind's DHAT, and
# keeps their heap profiles in target/bench/dhat.<pid>.json.
#
# SYSCALLS=1 also counts, with perf stat, the system calls, context switches and page faults
# per request of each HTTP/1.1 path's processes (nginx's workers for nginx), and splits their
# CPU time per request into user and system time.
#
# The memory part keeps the client proxy's /proc/<pid>/smaps at idle in
# target/bench/smaps-client-idle.txt.
#
# BENCH_ONLY=memory runs only the idle-connection part (and the GOAWAY check); BENCH_ONLY=h2
# only the HTTP/2 and gRPC cases (and the GOAWAY check), BENCH_ONLY=h1 only the HTTP/1.1 cases
# (and the GOAWAY check). H2_STREAMS (10) is h2load's
# concurrent streams per connection, H2_REQUESTS (20000) the GOAWAY check's requests.
#
# Usage: [BENCH_ONLY=memory|h2|h1] [IDLE_CONNS=N] [IDLE_AFTER=S] [INSN=1] [ORDER=FILE] [DHAT=1] [SYSCALLS=1] [OBSERVE=0] [H2_STREAMS=N] tests/bench/run.sh [DURATION_SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-16}
OUT=target/bench
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for pid in "$WORK"/nginx-*.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
[ -n "${INSN:-}" ] && { command -v callgrind_control >/dev/null || need+=(valgrind); }
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

OBSERVE=${OBSERVE:-1}
# The proxy as its image ships it (static, in its link order), the control plane as released.
SHIPPED_PROXY=$(configs/images/build-proxy.sh -q)
cargo build --release --locked -q -p weft-control
bench_bins=(--bin grpc-backend)
[ "$OBSERVE" = 1 ] && bench_bins+=(--bin otlp-sink)
cargo build --release --locked -q -p weft-tests "${bench_bins[@]}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
BIN=target/release
# PROXY_BIN runs another build of the proxy (a variant built in a target directory of its own).
PROXY_BIN=${PROXY_BIN:-$SHIPPED_PROXY}
if [ -n "${DHAT:-}" ]; then
  # DHAT sees the system allocator's calls only, in a dynamically linked binary.
  CARGO_TARGET_DIR=target/dhat cargo build --release --locked -q -p weft-proxy --no-default-features
  PROXY_BIN=target/dhat/release/weft-proxy
fi

# Listening ports: distinct, free now, and below the kernel's ephemeral range, so that no
# outgoing connection of the run (a proxy to a backend, to the control plane) can take one
# between now and its listener's bind (ports from bind(0) come from that range and could).
PORTS=($(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
picked = []
for port in random.sample(range(10000, min(low, 32768)), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        picked.append(port)
    except OSError:
        pass
    finally:
        s.close()
    if len(picked) == 60:
        break
print(" ".join(map(str, picked)))
PY
))
PORT_I=0
next_port() { printf -v "$1" '%s' "${PORTS[$PORT_I]}"; PORT_I=$((PORT_I + 1)); }
next_port BACKEND; next_port NGINX_PROXY; next_port GRPC; next_port HTTP
next_port SRV_IN; next_port CLI_IN; next_port PLAIN_UP; next_port MTLS_UP
next_port ADMIN_A; next_port ADMIN_B
next_port H2_BACKEND; next_port H2_IN; next_port H2_UP; next_port ADMIN_C
next_port ROUTED_UP; next_port SPLIT_UP
next_port GUARD_IN; next_port GUARD_UP; next_port ADMIN_G
# The routed and split services' backends: nginx on ports of their own (a local workload has an
# address of its own), pinned with the first backend.
next_port ROUTED_BACKEND; next_port SPLIT_A; next_port SPLIT_B
# The observability cases: the logging client proxy, the tracing client proxy, the receiver.
next_port LOG_IN; next_port LOG_UP; next_port ADMIN_L
next_port TRACE_IN; next_port TRACE_UP; next_port ADMIN_T; next_port OTLP
# The HTTP/2 and gRPC cases: for each protocol its backend, its nginx proxy, a client proxy
# (inbound, plain and meshed upstream listeners, admin) and a server proxy (inbound, admin).
next_port H2_APP; next_port H2_NGINX; next_port H2C_IN; next_port H2P_UP; next_port H2M_UP; next_port ADMIN_H2C
next_port H2S_IN; next_port ADMIN_H2S
next_port GRPC_APP; next_port GRPC_NGINX; next_port GC_IN; next_port GP_UP; next_port GM_UP; next_port ADMIN_GC
next_port GS_IN; next_port ADMIN_GS

# --- backend and nginx reverse proxy ---------------------------------------------------------
nginx_conf() { # name port worker-core body [listen-options] [http-level directives]
  cat > "$WORK/nginx-$1.conf" <<NGX
worker_processes 1;
worker_cpu_affinity $3;
pid $WORK/nginx-$1.pid;
error_log $WORK/nginx-$1.err warn;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1-body;
  proxy_temp_path $WORK/$1-proxy;
  fastcgi_temp_path $WORK/$1-fcgi;
  uwsgi_temp_path $WORK/$1-uwsgi;
  scgi_temp_path $WORK/$1-scgi;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
  ${6:-}
  server {
    listen 127.0.0.1:$2 ${5:-};
    $4
  }
}
NGX
  "$NGINX" -c "$WORK/nginx-$1.conf" -p "$WORK"
}
nginx_conf backend "$BACKEND" 10 'location / { return 200 "ok\n"; }'
nginx_conf routed "$ROUTED_BACKEND" 10 'location / { return 200 "ok\n"; }'
nginx_conf split-a "$SPLIT_A" 10 'location / { return 200 "ok\n"; }'
nginx_conf split-b "$SPLIT_B" 10 'location / { return 200 "ok\n"; }'
# An HTTP/2 backend with nginx's default keepalive_requests (1000): it sends GOAWAY on each
# connection after 1000 streams, which a proxy must absorb without failing requests.
nginx_conf h2backend "$H2_BACKEND" 10 'location / { return 200 "ok\n"; }' http2
nginx_conf proxy "$NGINX_PROXY" 01 'location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }'
# The HTTP/2 cases' backend: nginx answering "ok" over h2c. Unlike the GOAWAY check's backend
# it keeps a connection for the whole run (no GOAWAY after 1000 streams), and it lets a client
# open 1024 streams on one connection where nginx's default is 128: weft carries all of a
# case's streams on one connection to it, nginx on as many connections as streams (below).
nginx_conf h2app "$H2_APP" 10 'keepalive_requests 1000000000; http2_max_concurrent_streams 1024; location / { return 200 "ok\n"; }' http2
# The gRPC cases' backend: the standard health service's unary Check, served by tonic on one
# thread (tests/bench/grpc_backend.rs); it prints on SIGTERM how many calls it answered.
taskset -c 1 "$BIN/grpc-backend" serve "127.0.0.1:$GRPC_APP" > "$WORK/grpc-backend.count" 2>&1 &
GRPC_BACKEND=$!; PIDS+=($GRPC_BACKEND)
# nginx proxying HTTP/2 and gRPC: its proxy_pass speaks only HTTP/1.x to an upstream, so both
# use grpc_pass, which speaks HTTP/2 (h2c here) to the backend and carries plain HTTP/2 requests
# as well as gRPC calls. It sends one stream per upstream connection (no multiplexing); the
# upstream keeps up to 1024 of them idle, each for any number of requests. The clients'
# connections too last the whole run: nginx sends GOAWAY after 1000 streams by default, and
# h2load, timing the run, does not reconnect after one (its connection's share stops there).
nginx_upstream() { # name port
  echo "upstream $1 { server 127.0.0.1:$2; keepalive 1024; keepalive_requests 1000000000; }"
}
nginx_conf h2proxy "$H2_NGINX" 01 'keepalive_requests 1000000000; location / { grpc_pass grpc://h2app; }' http2 "$(nginx_upstream h2app "$H2_APP")"
nginx_conf grpcproxy "$GRPC_NGINX" 01 'keepalive_requests 1000000000; location / { grpc_pass grpc://grpcapp; }' http2 "$(nginx_upstream grpcapp "$GRPC_APP")"

# Under INSN, each proxy runs in callgrind (same process, so $! is still the proxy's pid).
WRAP=()
READY_TRIES=200
# Before each measurement its proxies' counters are zeroed, or under ORDER dumped, so that
# every function they ran from their start is in some dump.
CALLGRIND_MARK=-z
if [ -n "${ORDER:-}" ]; then INSN=1; CALLGRIND_MARK=-d; fi
if [ -n "${INSN:-}" ]; then
  WRAP=(valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" --dump-line=no)
  [ -n "${ORDER:-}" ] && WRAP+=(--demangle=no --compress-strings=no)
  READY_TRIES=1200
fi
# The memory part's client and server proxy: wrapped as the others, or under DHAT (DHAT=1, the
# memory part only), for where the heap is at its peak, every idle connection held, by site.
MEMWRAP=("${WRAP[@]}")
if [ -n "${DHAT:-}" ]; then
  BENCH_ONLY=memory
  READY_TRIES=1200
  MEMWRAP=(valgrind --tool=dhat --dhat-out-file="$PWD/$OUT/dhat.%p.json")
fi

# --- weft: control plane and two proxies -----------------------------------------------------
cat > "$WORK/mesh.toml" <<TOML
[mesh]
name = "bench"
trust_domain = "weft.bench"
[ca]
data_dir = "$WORK/data"
[control]
grpc_addr = "127.0.0.1:$GRPC"
http_addr = "127.0.0.1:$HTTP"
[platforms.local]
[[platforms.local.workloads]]
name = "backend"
namespace = "bench"
service = "plain"
port = $BACKEND
meshed = false
[[platforms.local.workloads]]
name = "server"
namespace = "bench"
service = "meshed"
port = $SRV_IN
[[platforms.local.workloads]]
name = "client"
namespace = "bench"
port = $CLI_IN
[[platforms.local.workloads]]
name = "h2server"
namespace = "bench"
service = "h2"
port = $H2_IN
[[platforms.local.workloads]]
name = "guard"
namespace = "bench"
service = "guarded"
port = $GUARD_IN
[[platforms.local.workloads]]
name = "routed"
namespace = "bench"
service = "routed"
port = $ROUTED_BACKEND
meshed = false
[[platforms.local.workloads]]
name = "split-a"
namespace = "bench"
service = "split-a"
port = $SPLIT_A
meshed = false
[[platforms.local.workloads]]
name = "split-b"
namespace = "bench"
service = "split-b"
port = $SPLIT_B
meshed = false
[[platforms.local.workloads]]
name = "h2app"
namespace = "bench"
service = "h2app"
port = $H2_APP
meshed = false
protocol = "http2"
[[platforms.local.workloads]]
name = "h2meshed"
namespace = "bench"
service = "h2meshed"
port = $H2S_IN
protocol = "http2"
[[platforms.local.workloads]]
name = "h2client"
namespace = "bench"
port = $H2C_IN
[[platforms.local.workloads]]
name = "grpcapp"
namespace = "bench"
service = "grpcapp"
port = $GRPC_APP
meshed = false
protocol = "grpc"
[[platforms.local.workloads]]
name = "grpcmeshed"
namespace = "bench"
service = "grpcmeshed"
port = $GS_IN
protocol = "grpc"
[[platforms.local.workloads]]
name = "grpcclient"
namespace = "bench"
port = $GC_IN
[[routes.http]]
name = "split"
namespace = "bench"
parent_refs = [{ name = "split-a" }]
[[routes.http.rules]]
backend_refs = [{ name = "split-a", weight = 90 }, { name = "split-b", weight = 10 }]
[[routes.http]]
name = "guarded"
namespace = "bench"
parent_refs = [{ name = "guarded" }]
[[routes.http.rules]]
timeouts = { request = "10s", backend_request = "5s" }
retry = { codes = [503], attempts = 2 }
[[policy.rate_limits]]
service = "guarded.bench"
requests_per_second = 100000000
burst = 100000000
[[routes.http]]
name = "routed"
namespace = "bench"
parent_refs = [{ name = "routed" }]
TOML
if [ "$OBSERVE" = 1 ]; then
  cat >> "$WORK/mesh.toml" <<TOML
[[platforms.local.workloads]]
name = "logger"
namespace = "bench"
port = $LOG_IN
[[platforms.local.workloads]]
name = "tracer"
namespace = "bench"
port = $TRACE_IN
[observability.tracing]
collector = "127.0.0.1:$OTLP"
[[observability.tracing.start]]
namespace = "bench"
workload = "tracer"
sampling = 1.0
[[observability.access_log]]
namespace = "bench"
workload = "logger"
format = "common"
TOML
  # SIGTERM makes it print the spans it received (sink_done).
  taskset -c 1 "$BIN/otlp-sink" "127.0.0.1:$OTLP" > "$WORK/otlp.count" 2>&1 &
  OTLP_SINK=$!; PIDS+=($OTLP_SINK)
fi
# 19 rules the benchmark's requests (GET /bench/x, no extra header) do not match, then the one
# they do: exact paths, longer prefixes, a header on the same prefix (more specific, so checked
# first) and regular expressions (less specific than any prefix), 20 rules in all.
rule() { printf '[[routes.http.rules]]\nmatches = [{ %s }]\nbackend_refs = [{ name = "routed" }]\n' "$1"; }
{
  for i in $(seq 5); do
    rule "path = { type = \"Exact\", value = \"/bench/exact-$i\" }"
    rule "path = { type = \"PathPrefix\", value = \"/bench/x/longer-$i\" }"
    rule "path = { type = \"RegularExpression\", value = \"/bench/[0-9]+/item-$i\" }"
  done
  for i in $(seq 4); do
    rule "path = { type = \"PathPrefix\", value = \"/bench\" }, headers = [{ name = \"x-variant\", value = \"v$i\" }]"
  done
  rule "path = { type = \"PathPrefix\", value = \"/bench\" }"
} >> "$WORK/mesh.toml"
taskset -c 1 "$BIN/weft-control" --config "$WORK/mesh.toml" > "$WORK/control.log" 2>&1 &
PIDS+=($!)
TOKENS="$WORK/data/tokens/bench"
tokens_ready() {
  for w in client server h2server guard h2client h2meshed grpcclient grpcmeshed; do [ -f "$TOKENS/$w" ] || return 1; done
  if [ "$OBSERVE" = 1 ]; then for w in logger tracer; do [ -f "$TOKENS/$w" ] || return 1; done; fi
  [ -f "$WORK/data/trust-bundle.pem" ]
}
for _ in $(seq 100); do tokens_ready && break; sleep 0.1; done
common=(--control-addr "127.0.0.1:$GRPC" --trust-domain weft.bench --trust-bundle "$WORK/data/trust-bundle.pem"
        --namespace bench)
RUST_LOG=warn taskset -c 0 "${MEMWRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/client" --workload client --inbound-addr "127.0.0.1:$CLI_IN" \
  --admin-addr "127.0.0.1:$ADMIN_A" --upstream "plain=127.0.0.1:$PLAIN_UP" --upstream "meshed=127.0.0.1:$MTLS_UP" \
  --upstream "h2=127.0.0.1:$H2_UP" --upstream "routed=127.0.0.1:$ROUTED_UP" --upstream "split-a=127.0.0.1:$SPLIT_UP" \
  --upstream "guarded=127.0.0.1:$GUARD_UP" \
  > "$WORK/client.log" 2>&1 &
PROXY_A=$!; PIDS+=($PROXY_A)
RUST_LOG=warn taskset -c 0 "${MEMWRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/server" --workload server --inbound-addr "127.0.0.1:$SRV_IN" \
  --app-port "$BACKEND" --admin-addr "127.0.0.1:$ADMIN_B" > "$WORK/server.log" 2>&1 &
PROXY_B=$!; PIDS+=($PROXY_B)
RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/h2server" --workload h2server --inbound-addr "127.0.0.1:$H2_IN" \
  --app-port "$H2_BACKEND" --admin-addr "127.0.0.1:$ADMIN_C" > "$WORK/h2server.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/guard" --workload guard --inbound-addr "127.0.0.1:$GUARD_IN" \
  --app-port "$BACKEND" --admin-addr "127.0.0.1:$ADMIN_G" > "$WORK/guard.log" 2>&1 &
PROXY_G=$!; PIDS+=($PROXY_G)
ADMINS=($ADMIN_A $ADMIN_B $ADMIN_C $ADMIN_G)
# The HTTP/2 and gRPC cases' proxies: for each protocol a client proxy with an upstream
# listener to the unmeshed backend (the plain hop) and one to the meshed service, and that
# service's server proxy in front of the same backend.
RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/h2client" --workload h2client --inbound-addr "127.0.0.1:$H2C_IN" \
  --admin-addr "127.0.0.1:$ADMIN_H2C" --upstream "h2app=127.0.0.1:$H2P_UP" --upstream "h2meshed=127.0.0.1:$H2M_UP" > "$WORK/h2client.log" 2>&1 &
PROXY_H2C=$!; PIDS+=($PROXY_H2C)
RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/h2meshed" --workload h2meshed --inbound-addr "127.0.0.1:$H2S_IN" \
  --app-port "$H2_APP" --admin-addr "127.0.0.1:$ADMIN_H2S" > "$WORK/h2meshed.log" 2>&1 &
PROXY_H2S=$!; PIDS+=($PROXY_H2S)
RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/grpcclient" --workload grpcclient --inbound-addr "127.0.0.1:$GC_IN" \
  --admin-addr "127.0.0.1:$ADMIN_GC" --upstream "grpcapp=127.0.0.1:$GP_UP" --upstream "grpcmeshed=127.0.0.1:$GM_UP" > "$WORK/grpcclient.log" 2>&1 &
PROXY_GC=$!; PIDS+=($PROXY_GC)
RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/grpcmeshed" --workload grpcmeshed --inbound-addr "127.0.0.1:$GS_IN" \
  --app-port "$GRPC_APP" --admin-addr "127.0.0.1:$ADMIN_GS" > "$WORK/grpcmeshed.log" 2>&1 &
PROXY_GS=$!; PIDS+=($PROXY_GS)
ADMINS+=($ADMIN_H2C $ADMIN_H2S $ADMIN_GC $ADMIN_GS)
# Where each of them counts its responses, for the failure check of the HTTP/2 and gRPC cases.
declare -A ADMIN_OF=([$PROXY_H2C]=$ADMIN_H2C [$PROXY_H2S]=$ADMIN_H2S [$PROXY_GC]=$ADMIN_GC [$PROXY_GS]=$ADMIN_GS)
if [ "$OBSERVE" = 1 ]; then
  # The access log goes to stderr with the proxy's own (warn-level) log lines.
  RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/logger" --workload logger --inbound-addr "127.0.0.1:$LOG_IN" \
    --admin-addr "127.0.0.1:$ADMIN_L" --upstream "plain=127.0.0.1:$LOG_UP" > "$WORK/logger.log" 2>&1 &
  PROXY_L=$!; PIDS+=($PROXY_L)
  RUST_LOG=warn taskset -c 0 "${WRAP[@]}" "$PROXY_BIN" "${common[@]}" --token-file "$TOKENS/tracer" --workload tracer --inbound-addr "127.0.0.1:$TRACE_IN" \
    --admin-addr "127.0.0.1:$ADMIN_T" --upstream "meshed=127.0.0.1:$TRACE_UP" > "$WORK/tracer.log" 2>&1 &
  PROXY_T=$!; PIDS+=($PROXY_T)
  ADMINS+=($ADMIN_L $ADMIN_T)
fi
for a in "${ADMINS[@]}"; do
  for _ in $(seq "$READY_TRIES"); do curl -sf "127.0.0.1:$a/ready" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$a/ready" >/dev/null || { echo "proxy on admin $a not ready"; cat "$WORK"/*.log; exit 1; }
done

# --- measurement ----------------------------------------------------------------------------
ticks=$(getconf CLK_TCK)
user_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14}' "/proc/$p/stat"))); done; echo $t; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
hwm_kb() { local m=0; for p in "$@"; do v=$(awk '/VmHWM/ {print $2}' "/proc/$p/status"); m=$((m + v)); done; echo $m; }
nginx_workers() { pgrep -P "$(cat "$WORK/nginx-$1.pid")" | tr '\n' ' '; }

# The instructions $1 executed since its counters were last reset: a dump, read once written,
# and kept as $OUT/callgrind/$2.$1 for callgrind_annotate.
callgrind_ir() {
  local before; before=$(ls "$WORK"/cg."$1".* 2>/dev/null | wc -l)
  callgrind_control -d "$1" >/dev/null 2>&1
  local f
  for _ in $(seq 100); do
    f=$(ls -t "$WORK"/cg."$1".* 2>/dev/null | head -1)
    [ "$(ls "$WORK"/cg."$1".* 2>/dev/null | wc -l)" -gt "$before" ] && grep -q '^totals:' "$f" && break
    sleep 0.1
  done
  mkdir -p "$OUT/callgrind"
  cp "$f" "$OUT/callgrind/$2.$1"
  awk '/^totals:/ {print $2}' "$f"
}

rows=()
syscall_rows=()
measure() { # name url pids...
  local name=$1 url=$2; shift 2
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null   # warm-up
  local before=0 user_before=0; [ $# -gt 0 ] && before=$(cpu_ticks "$@") && user_before=$(user_ticks "$@")
  if [ -n "${INSN:-}" ]; then for p in "$@"; do callgrind_control "$CALLGRIND_MARK" "$p" >/dev/null 2>&1; done; fi
  local perf_pid=""
  if [ -n "${PERF_RECORD:-}" ] && [ "$PERF_RECORD" = "$name" ] && [ $# -gt 0 ]; then
    # Profile this path: PERF_RECORD="weft plain (1 proxy)" tests/bench/run.sh; PERF_EVENT picks
    # the event (cycles:u: the proxies' own code, without the kernel's share).
    perf record -F 999 -g ${PERF_EVENT:+-e "$PERF_EVENT"} -o "$OUT/perf.data" -p "$(echo "$@" | tr ' ' ',')" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
  fi
  local stat_pid=""
  if [ -n "${SYSCALLS:-}" ] && [ $# -gt 0 ]; then
    # System calls and context switches of the path's processes while wrk runs (all threads).
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,page-faults -o "$WORK/stat.out" -p "$(echo "$@" | tr ' ' ',')" -- sleep "$DURATION" &
    stat_pid=$!
  fi
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" > "$WORK/wrk.out"
  [ -n "$perf_pid" ] && wait "$perf_pid"
  [ -n "$stat_pid" ] && wait "$stat_pid"
  local after=0 user_after=0; [ $# -gt 0 ] && after=$(cpu_ticks "$@") && user_after=$(user_ticks "$@")
  local reqs rps p50 p99 cpu_us rss insn=0
  if [ -n "${INSN:-}" ]; then for p in "$@"; do insn=$((insn + $(callgrind_ir "$p" "$(echo "$name" | tr -c 'a-zA-Z0-9\n' _)"))); done; fi
  reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.out")
  if grep -q "Non-2xx" "$WORK/wrk.out"; then echo "$name: errors:"; cat "$WORK/wrk.out"; exit 1; fi
  if [ $# -gt 0 ]; then
    cpu_us=$(python3 -c "print(round(($after - $before) / $ticks * 1e6 / $reqs, 1))")
    rss=$(python3 -c "print(round($(hwm_kb "$@") / 1024, 1))")
  else
    cpu_us="-"; rss="-"
  fi
  if [ -n "$stat_pid" ]; then
    local calls switches faults
    calls=$(awk -F, '$3 == "raw_syscalls:sys_enter" {print $1}' "$WORK/stat.out")
    switches=$(awk -F, '$3 == "context-switches" {print $1}' "$WORK/stat.out")
    faults=$(awk -F, '$3 == "page-faults" {print $1}' "$WORK/stat.out")
    syscall_rows+=("$name|$(python3 -c "print(round($calls / $reqs, 2))")|$(python3 -c "print(round($switches / $reqs, 2))")|$(python3 -c "print(round($faults / $reqs, 3))")|$(python3 -c "
u = ($user_after - $user_before) / $ticks * 1e6 / $reqs
t = ($after - $before) / $ticks * 1e6 / $reqs
print(f'{u:.1f} + {t - u:.1f}')")")
  fi
  if [ -n "${INSN:-}" ]; then
    rows+=("$name|$rps|$(python3 -c "print(round($insn / $reqs / 1000, 2))")")
  else
    rows+=("$name|$rps|$p50|$p99|$cpu_us|$rss")
  fi
}

# --- HTTP/2 and gRPC -------------------------------------------------------------------------
# h2load over h2c (prior knowledge), one thread, CONNS connections of H2_STREAMS concurrent
# streams each, for DURATION seconds after a 2-second warm-up run, pinned to core 1. A gRPC case
# makes unary calls: POST with content-type application/grpc and te: trailers, the body one
# length-prefixed message (a HealthCheckRequest naming the service "bench"). p50 and p99 come
# from h2load's per-request log (its summary has only mean and deviation), which costs h2load a
# write per request on core 1; it is left out under callgrind.
H2_STREAMS=${H2_STREAMS:-10}
GRPC_PATH=/grpc.health.v1.Health/Check
printf '\x00\x00\x00\x00\x07\x0a\x05bench' > "$WORK/grpc-request.bin"
# The answer's DATA: one length-prefixed message, 5 + 2 bytes (status SERVING). An error from a
# proxy or the backend is a trailers-only response, without it.
GRPC_ANSWER_BYTES=7
h2_rows=()
h2_notes=()
# The number before WORD in the summary lines of h2load's output (requests, status codes,
# traffic), first match: "2016350" of "traffic: ... (2016350) data".
h2_figure() { # word file
  awk -v w="$1" '/^(requests|status codes|traffic):/ { for (i = 2; i <= NF; i++) { f = $i; sub(/,$/, "", f)
    if (f == w) { v = $(i - 1); gsub(/[(),]/, "", v); print v; exit } } }' "$2"
}
# Responses the weft proxies among the pids classed as failures (an error status, a gRPC
# status other than 0 in the trailers, a body that failed), summed.
weft_failures() { # pids...
  local n=0 p
  for p in "$@"; do
    [ -n "${ADMIN_OF[$p]:-}" ] || continue
    n=$((n + $(curl -s "127.0.0.1:${ADMIN_OF[$p]}/metrics" \
      | awk 'index($0, "weft_responses_total{") == 1 && index($0, "classification=\"failure\"") {s += $NF} END {print s + 0}')))
  done
  echo $n
}
# Fails the run unless every request h2load finished in FILE succeeded with a 2xx, no status
# other than 2xx arrived (h2load counts a status as its headers arrive, so a request still
# open when the duration ended may have one), and, for gRPC, the calls carried their answers
# (DATA of GRPC_ANSWER_BYTES per finished call, at most that per started one).
h2_check() { # name kind file
  local done succeeded failed other started data
  done=$(h2_figure done "$3"); succeeded=$(h2_figure succeeded "$3"); failed=$(h2_figure failed "$3")
  other=$(( $(h2_figure 3xx "$3") + $(h2_figure 4xx "$3") + $(h2_figure 5xx "$3") ))
  started=$(h2_figure started "$3"); data=$(h2_figure data "$3")
  if [ "${done:-0}" = 0 ] || [ "$failed" != 0 ] || [ "$succeeded" != "$done" ] || [ "$other" != 0 ]; then
    echo "$1: h2load counted failures:"; cat "$3"; exit 1
  fi
  if [ "$2" = grpc ] && { [ "$data" -lt $((done * GRPC_ANSWER_BYTES)) ] || [ "$data" -gt $((started * GRPC_ANSWER_BYTES)) ]; }; then
    echo "$1: $data bytes of answers for $done calls: some came without their message"; cat "$3"; exit 1
  fi
}
# p50 and p99 of an h2load log, in wrk's units.
h2_latency() { # log
  python3 - "$1" <<'PY'
import sys
t = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]))
def us(v):
    return f"{v:.2f}us" if v < 1000 else f"{v / 1000:.2f}ms"
print(us(t[len(t) // 2]), us(t[min(len(t) - 1, len(t) * 99 // 100)]))
PY
}
measure_h2() { # name kind(h2|grpc) url pids...
  local name=$1 kind=$2 url=$3; shift 3
  local args=(-t1 -c"$CONNS" -m"$H2_STREAMS")
  [ "$kind" = grpc ] && args+=(-d "$WORK/grpc-request.bin" -H "content-type: application/grpc" -H "te: trailers")
  taskset -c 1 h2load "${args[@]}" -D 2 "$url" > "$WORK/h2case-warm.out" 2>&1 || true   # warm-up
  h2_check "$name (warm-up)" "$kind" "$WORK/h2case-warm.out"
  local failures0; failures0=$(weft_failures "$@")
  local before=0; [ $# -gt 0 ] && before=$(cpu_ticks "$@")
  if [ -n "${INSN:-}" ]; then for p in "$@"; do callgrind_control "$CALLGRIND_MARK" "$p" >/dev/null 2>&1; done; fi
  local log=()
  rm -f "$WORK/h2case.log"
  if [ -z "${INSN:-}" ]; then log=(--log-file="$WORK/h2case.log"); fi
  taskset -c 1 h2load "${args[@]}" -D "$DURATION" "${log[@]}" "$url" > "$WORK/h2case.out" 2>&1 || true
  local after=0; [ $# -gt 0 ] && after=$(cpu_ticks "$@")
  local insn=0
  if [ -n "${INSN:-}" ]; then for p in "$@"; do insn=$((insn + $(callgrind_ir "$p" "$(echo "$name" | tr -c 'a-zA-Z0-9\n' _)"))); done; fi
  h2_check "$name" "$kind" "$WORK/h2case.out"
  local failures=$(( $(weft_failures "$@") - failures0 ))
  [ "$failures" = 0 ] || { echo "$name: the weft proxies counted $failures failed responses"; exit 1; }
  local reqs rps cpu_us rss
  reqs=$(h2_figure done "$WORK/h2case.out")
  rps=$(awk '/^finished in/ {print $4}' "$WORK/h2case.out")
  if [ $# -gt 0 ]; then
    cpu_us=$(python3 -c "print(round(($after - $before) / $ticks * 1e6 / $reqs, 1))")
    rss=$(python3 -c "print(round($(hwm_kb "$@") / 1024, 1))")
  else
    cpu_us="-"; rss="-"
  fi
  if [ -n "${INSN:-}" ]; then
    h2_rows+=("$name|$rps|$(python3 -c "print(round($insn / $reqs / 1000, 2))")")
  else
    local p50 p99
    read -r p50 p99 < <(h2_latency "$WORK/h2case.log")
    h2_rows+=("$name|$rps|$p50|$p99|$cpu_us|$rss")
  fi
}
# Each gRPC path answers one call made with a real gRPC client (tonic's, which reads the
# message and the trailers' status), before h2load, which looks at neither, measures it.
grpc_check() { # url
  "$BIN/grpc-backend" check "$1" || { echo "gRPC check through $1 failed"; cat "$WORK"/grpc*.log; exit 1; }
}
# The HTTP/2 and gRPC cases; under callgrind only weft's.
measure_h2_cases() {
  local p
  if [ -z "${INSN:-}" ]; then
    measure_h2 "h2 direct" h2 "http://127.0.0.1:$H2_APP/"
  fi
  measure_h2 "h2 weft plain" h2 "http://127.0.0.1:$H2P_UP/" $PROXY_H2C
  measure_h2 "h2 weft mTLS" h2 "http://127.0.0.1:$H2M_UP/" $PROXY_H2C $PROXY_H2S
  if [ -z "${INSN:-}" ]; then
    # shellcheck disable=SC2046
    measure_h2 "h2 nginx" h2 "http://127.0.0.1:$H2_NGINX/" $(nginx_workers h2proxy)
  fi
  for p in $GRPC_APP $GP_UP $GM_UP $GRPC_NGINX; do grpc_check "http://127.0.0.1:$p"; done
  if [ -z "${INSN:-}" ]; then
    measure_h2 "grpc direct" grpc "http://127.0.0.1:$GRPC_APP$GRPC_PATH"
  fi
  measure_h2 "grpc weft plain" grpc "http://127.0.0.1:$GP_UP$GRPC_PATH" $PROXY_GC
  measure_h2 "grpc weft mTLS" grpc "http://127.0.0.1:$GM_UP$GRPC_PATH" $PROXY_GC $PROXY_GS
  if [ -z "${INSN:-}" ]; then
    # shellcheck disable=SC2046
    measure_h2 "grpc nginx" grpc "http://127.0.0.1:$GRPC_NGINX$GRPC_PATH" $(nginx_workers grpcproxy)
  fi
}
# The table's rows with their ratios to the nginx case of the same protocol in this run.
h2_table_rows() {
  printf '%s\n' "${h2_rows[@]}" | python3 -c '
import sys
rows = [line.rstrip("\n").split("|") for line in sys.stdin if line.strip()]
nginx = {r[0].split()[0]: r for r in rows if r[0].endswith(" nginx")}
def ratio(a, b):
    try:
        return f"{float(a) / float(b):.2f}"
    except (ValueError, ZeroDivisionError):
        return "-"
for r in rows:
    n = nginx.get(r[0].split()[0])
    print("|" + "|".join(r + [ratio(r[1], n[1]) if n else "-", ratio(r[4], n[4]) if n else "-"]) + "|")
'
}
# Stops the gRPC backend, which prints how many calls it answered, and notes the count.
grpc_backend_done() {
  kill -TERM "$GRPC_BACKEND" 2>/dev/null || true
  wait "$GRPC_BACKEND" || true
  h2_notes+=("the gRPC backend answered $(cat "$WORK/grpc-backend.count") calls (the checks, warm-ups and measurements)")
}

# --- memory per idle client connection --------------------------------------------------------
# IDLE_CONNS idle clients connect to the client proxy's meshed upstream listener and send
# nothing: after the detection timeout each becomes an opaque TCP forward over mutual TLS to the
# server proxy, which opens a connection to the backend. RSS (VmRSS) of both proxies is read
# before, while the connections are held, and IDLE_AFTER seconds after they close.
IDLE_CONNS=${IDLE_CONNS:-1000}
IDLE_AFTER=${IDLE_AFTER:-60}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# RSS split into anonymous memory (the proxy's own) and file-backed pages (the binary's and the
# libraries' code and read-only data, shared with every process that maps the same files).
rss_split() { awk '/RssAnon/ {a = $2} /RssFile/ {f = $2} END {printf "%.1f + %.1f", a / 1024, f / 1024}' "/proc/$1/status"; }
memory_rows=()
measure_idle() {
  local a0 b0 a1 b1 a2 b2 sa sb
  a0=$(rss_kb $PROXY_A); b0=$(rss_kb $PROXY_B)
  sa=$(rss_split $PROXY_A); sb=$(rss_split $PROXY_B)
  cp "/proc/$PROXY_A/smaps" "$OUT/smaps-client-idle.txt"
  mkfifo "$WORK/idle.fifo"
  python3 tests/bench/idle.py "127.0.0.1:$MTLS_UP" "$IDLE_CONNS" 8 > "$WORK/idle.fifo" &
  local idle_pid=$!
  exec 9< "$WORK/idle.fifo"
  read -r line <&9   # "open"
  sleep 4            # past the 1 s detection timeout: every forward is set up
  a1=$(rss_kb $PROXY_A); b1=$(rss_kb $PROXY_B)
  read -r line <&9   # "closed"
  exec 9<&-
  wait "$idle_pid"
  sleep "$IDLE_AFTER"
  a2=$(rss_kb $PROXY_A); b2=$(rss_kb $PROXY_B)
  local sa2 sb2; sa2=$(rss_split $PROXY_A); sb2=$(rss_split $PROXY_B)
  if [ -n "${IDLE_DEBUG:-}" ]; then
    curl -s "127.0.0.1:$ADMIN_A/metrics" | grep -E "^weft_tcp_open" >&2
    curl -s "127.0.0.1:$ADMIN_B/metrics" | grep -E "^weft_tcp_open" >&2
    ls /proc/$PROXY_A/fd | wc -l >&2; ls /proc/$PROXY_B/fd | wc -l >&2
  fi
  per() { python3 -c "print(round(($2 - $1) / $IDLE_CONNS, 1))"; }
  mib() { python3 -c "print(round($1 / 1024, 1))"; }
  memory_rows+=("client proxy|$(mib "$a0")|$sa|$(mib "$a1")|$(per "$a0" "$a1")|$(mib "$a2")|$sa2|$(python3 -c "print(round(100 * ($a2 - $a0) / $a0))")")
  memory_rows+=("server proxy|$(mib "$b0")|$sb|$(mib "$b1")|$(per "$b0" "$b1")|$(mib "$b2")|$sb2|$(python3 -c "print(round(100 * ($b2 - $b0) / $b0))")")
}

# The observability cases (OBSERVE=1): a line per request in the access log, and every traced
# request's two spans (client and server side) exported or counted as dropped.
observe_notes=()
spans_of() { # admin-port outcome
  curl -s "127.0.0.1:$1/metrics" | awk -v o="outcome=\"$2\"" 'index($0, "weft_trace_spans_total{") == 1 && index($0, o) {s += $2} END {print s + 0}'
}
measure_observed() {
  [ "$OBSERVE" = 1 ] || return 0
  local lines0 lines1
  lines0=$(grep -c '" [0-9][0-9][0-9] ' "$WORK/logger.log" || true)
  measure "weft plain + access log" "http://127.0.0.1:$LOG_UP/" $PROXY_L
  lines1=$(grep -c '" [0-9][0-9][0-9] ' "$WORK/logger.log" || true)
  local logged=$((lines1 - lines0)) asked
  asked=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  observe_notes+=("access log: $logged lines for $asked requests (and the warm-up's before them)")
  [ "$logged" -ge "$asked" ] || { echo "the access log has $logged lines for $asked requests"; exit 1; }
  measure "weft mTLS + tracing 100 %" "http://127.0.0.1:$TRACE_UP/" $PROXY_T $PROXY_B
  # Exports go out within a second of a batch filling or ageing; wait for the last one.
  local exported dropped failed
  for _ in $(seq 50); do
    exported=$(( $(spans_of "$ADMIN_T" exported) + $(spans_of "$ADMIN_B" exported) ))
    sleep 0.2
    [ "$exported" = $(( $(spans_of "$ADMIN_T" exported) + $(spans_of "$ADMIN_B" exported) )) ] && break
  done
  dropped=$(( $(spans_of "$ADMIN_T" dropped) + $(spans_of "$ADMIN_B" dropped) ))
  failed=$(( $(spans_of "$ADMIN_T" failed) + $(spans_of "$ADMIN_B" failed) ))
  asked=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  observe_notes+=("tracing: $exported spans exported, $dropped dropped, $failed failed to export, for $asked requests (two spans each, and the warm-up's)")
  [ "$exported" -gt 0 ] || { echo "no span was exported"; cat "$WORK/tracer.log"; exit 1; }
}
# Stops the receiver, which prints what it received, and notes the count.
sink_done() {
  [ "$OBSERVE" = 1 ] || return 0
  kill -TERM "$OTLP_SINK" 2>/dev/null || true
  wait "$OTLP_SINK" || true
  observe_notes+=("the OTLP receiver counted $(cat "$WORK/otlp.count") spans")
}

if [ -n "${INSN:-}" ]; then
  measure "weft plain (1 proxy)" "http://127.0.0.1:$PLAIN_UP/" $PROXY_A
  measure "weft mTLS (2 proxies)" "http://127.0.0.1:$MTLS_UP/" $PROXY_A $PROXY_B
  measure "weft plain + 20 route rules" "http://127.0.0.1:$ROUTED_UP/bench/x" $PROXY_A
  measure "weft plain + split 90/10" "http://127.0.0.1:$SPLIT_UP/" $PROXY_A
  measure "weft mTLS + policy" "http://127.0.0.1:$GUARD_UP/" $PROXY_A $PROXY_G
  measure_observed
  measure_h2_cases
  sink_done
  grpc_backend_done
  {
    echo "Instructions per request under callgrind (wrk -t1 -c$CONNS -d${DURATION}s, HTTP/1.1 keep-alive),"
    echo "summed over the path's proxies, all threads; thousands."
    echo
    echo "| path | req/s (under callgrind) | proxy instructions/req (k) |"
    echo "|---|---|---|"
    for r in "${rows[@]}"; do echo "|${r}|"; done
    echo
    echo "The same for HTTP/2 and gRPC (h2load -t1 -c$CONNS -m$H2_STREAMS -D ${DURATION}s, h2c; gRPC: unary calls)."
    echo
    echo "| path | req/s (under callgrind) | proxy instructions/req (k) |"
    echo "|---|---|---|"
    for r in "${h2_rows[@]}"; do echo "|${r}|"; done
    echo
    for n in "${observe_notes[@]}" "${h2_notes[@]}"; do echo "$n"; done
  } | tee "$OUT/insn.md"
  if [ -n "${ORDER:-}" ]; then
    # What every proxy ran since it started, in one last dump each, then the link order.
    for p in "${PIDS[@]}"; do
      compgen -G "$WORK/cg.$p.*" >/dev/null || continue   # not a proxy, or not measured
      n=$(compgen -G "$WORK/cg.$p.*" | wc -l)
      callgrind_control -d "$p" >/dev/null 2>&1
      for _ in $(seq 100); do [ "$(compgen -G "$WORK/cg.$p.*" | wc -l)" -gt "$n" ] && break; sleep 0.1; done
    done
    python3 tests/bench/link_order.py "$ORDER" "$WORK"/cg.*
  fi
  exit 0
fi
if [ "${BENCH_ONLY:-}" != "memory" ] && [ "${BENCH_ONLY:-}" != "h2" ]; then
  measure "direct" "http://127.0.0.1:$BACKEND/"
  measure "weft plain (1 proxy)" "http://127.0.0.1:$PLAIN_UP/" $PROXY_A
  measure "weft mTLS (2 proxies)" "http://127.0.0.1:$MTLS_UP/" $PROXY_A $PROXY_B
  measure "weft plain + 20 route rules" "http://127.0.0.1:$ROUTED_UP/bench/x" $PROXY_A
  measure "weft plain + split 90/10" "http://127.0.0.1:$SPLIT_UP/" $PROXY_A
  measure "weft mTLS + policy" "http://127.0.0.1:$GUARD_UP/" $PROXY_A $PROXY_G
  measure_observed
  # shellcheck disable=SC2046
  measure "nginx reverse proxy" "http://127.0.0.1:$NGINX_PROXY/" $(nginx_workers proxy)
fi
if [ "${BENCH_ONLY:-}" != "memory" ] && [ "${BENCH_ONLY:-}" != "h1" ]; then
  measure_h2_cases
fi
if [ "${BENCH_ONLY:-}" != "h2" ] && [ "${BENCH_ONLY:-}" != "h1" ]; then
  measure_idle
fi
if [ -n "${DHAT:-}" ]; then
  kill "$PROXY_A" "$PROXY_B"
  wait "$PROXY_A" "$PROXY_B" || true
  echo "DHAT profiles (open in valgrind's dh_view.html): $OUT/dhat.$PROXY_A.json (client proxy), $OUT/dhat.$PROXY_B.json (server proxy)"
  exit 0
fi

# --- HTTP/2 through the mesh to nginx, GOAWAY every 1000 streams ------------------------------
H2_REQUESTS=${H2_REQUESTS:-20000}
h2load -n "$H2_REQUESTS" -c 10 -m 10 "http://127.0.0.1:$H2_UP/" > "$WORK/h2load.out" 2>&1 || true
h2_ok=$(awk '/^status codes:/ {print $3}' "$WORK/h2load.out")
h2_failed=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($i ~ /^failed/) print $(i - 1)}' "$WORK/h2load.out")
h2_other=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$WORK/h2load.out")

sink_done
grpc_backend_done
{
  if [ ${#rows[@]} -gt 0 ]; then
    echo "wrk -t1 -c$CONNS -d${DURATION}s, HTTP/1.1 keep-alive; proxies pinned to core 0, wrk and backend to core 1."
    echo "CPU/req and RSS are the proxies' own (both proxies summed for the mTLS pair; RSS is peak, VmHWM)."
    echo
    echo "| path | req/s | p50 | p99 | proxy CPU/req (us) | proxy peak RSS (MiB) |"
    echo "|---|---|---|---|---|---|"
    for r in "${rows[@]}"; do echo "|${r}|"; done
    echo
  fi
  if [ ${#syscall_rows[@]} -gt 0 ]; then
    echo "System calls, context switches and page faults per request (perf stat, the path's processes, all threads),"
    echo "and the CPU time per request split into user and system time (us)."
    echo
    echo "| path | system calls/req | context switches/req | page faults/req | CPU/req: user + system |"
    echo "|---|---|---|---|---|"
    for r in "${syscall_rows[@]}"; do echo "|${r}|"; done
    echo
  fi
  if [ ${#h2_rows[@]} -gt 0 ]; then
    echo "HTTP/2 and gRPC: h2load -t1 -c$CONNS -m$H2_STREAMS -D ${DURATION}s over h2c (prior knowledge); gRPC: unary"
    echo "calls. Pinned as above; p50/p99 from h2load's per-request log; ratios to the nginx case of"
    echo "the same protocol in this run (nginx proxies with grpc_pass)."
    echo
    echo "| path | req/s | p50 | p99 | proxy CPU/req (us) | proxy peak RSS (MiB) | req/s vs nginx | CPU/req vs nginx |"
    echo "|---|---|---|---|---|---|---|---|"
    h2_table_rows
    echo
  fi
  if [ ${#memory_rows[@]} -gt 0 ]; then
    echo "$IDLE_CONNS idle client connections (opaque forwards over mTLS after detection), RSS in MiB;"
    echo "'after' is ${IDLE_AFTER}s after they closed, as a change from idle."
    echo
    echo "| proxy | idle | idle: anonymous + file-backed | held | KiB per connection | after | after: anonymous + file-backed | after vs idle (%) |"
    echo "|---|---|---|---|---|---|---|---|"
    for r in "${memory_rows[@]}"; do echo "|${r}|"; done
    echo
  fi
  echo "h2load -n $H2_REQUESTS -c 10 -m 10 through the proxy pair to an nginx HTTP/2 backend (GOAWAY"
  echo "after every 1000 streams): ${h2_ok:-?} answered 2xx, ${h2_other:-?} other statuses, ${h2_failed:-?} failed."
  echo
  for n in "${observe_notes[@]}" "${h2_notes[@]}"; do echo "$n"; done
} | tee "$OUT/results.md"
