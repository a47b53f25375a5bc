#!/bin/sh
# Installs the real servers and tools the tests use, from Debian's packages, if they are missing:
#   etcd-server      `etcd`, started on a loopback port by the discovery tests
#   prometheus       `promtool` and `prometheus`, used by the telemetry tests
#   protobuf-compiler `protoc`, which etcd-client's build script runs (feature `etcd`)
#   libprotobuf-dev  the well-known types (google/protobuf/*.proto) that etcd's protos import
#   nginx, haproxy   the peers tests/bench_herd.rs starts (as scripts/install-bench-deps.sh does)
#   valgrind         callgrind, under which tests/bench_cost.rs runs the gateway
# Idempotent: a second run installs nothing. The distro services are not started: the tests run
# their own instances in temporary folders.
set -eu

missing=""
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing="$missing libprotobuf-dev"
# tests/bench_herd.rs runs four nginx and four HAProxy instances of its own (never the services).
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
# tests/bench_cost.rs runs `switchyard bench cost`: the gateway under callgrind.
{ command -v valgrind >/dev/null 2>&1 && command -v callgrind_control >/dev/null 2>&1; } || missing="$missing valgrind"

if [ -z "$missing" ]; then
    echo "install-test-deps: etcd, promtool, protoc and its includes, nginx, haproxy and valgrind already installed, nothing to do"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root="sudo"; fi

echo "install-test-deps: missing:$missing; running apt-get update"
$as_root apt-get update -q
# policy-rc.d exit 101 keeps the packages' postinst from starting the distro services.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $as_root tee "$policy" >/dev/null
    $as_root chmod +x "$policy"
    created_policy=yes
fi
echo "install-test-deps: apt-get install -y --no-install-recommends$missing"
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -q --no-install-recommends $missing || status=$?
if [ -n "$created_policy" ]; then $as_root rm -f "$policy"; fi
if [ "${status:-0}" -ne 0 ]; then
    echo "install-test-deps: apt-get install failed ($status)" >&2
    exit "$status"
fi
echo "install-test-deps: installed:$missing"
