#!/bin/sh
# Installs what `switchyard bench` runs besides itself, if it is missing: Debian's nginx and
# HAProxy (the peers) and valgrind (`bench cost` counts the gateway's instructions with callgrind).
# Idempotent: a second run installs nothing. The distro services are not started: the bench runs
# its own instances with its own config files in a temporary folder.
set -eu

missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx"
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
{ command -v valgrind >/dev/null 2>&1 && command -v callgrind_control >/dev/null 2>&1; } || missing="$missing valgrind"

if [ -z "$missing" ]; then
    echo "install-bench-deps: nginx, haproxy and valgrind already installed, nothing to do"
    nginx -v 2>&1 | sed 's/^/install-bench-deps:   /'
    haproxy -v 2>&1 | head -n 1 | sed 's/^/install-bench-deps:   /'
    valgrind --version 2>&1 | sed 's/^/install-bench-deps:   /'
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root="sudo"; fi

echo "install-bench-deps: missing:$missing; running apt-get update"
$as_root apt-get update
# policy-rc.d exit 101 keeps the packages' postinst from starting the distro services.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $as_root tee "$policy" >/dev/null
    $as_root chmod +x "$policy"
    created_policy=yes
fi
echo "install-bench-deps: apt-get install -y --no-install-recommends$missing"
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y --no-install-recommends $missing || status=$?
if [ -n "$created_policy" ]; then $as_root rm -f "$policy"; fi
if [ "${status:-0}" -ne 0 ]; then
    echo "install-bench-deps: apt-get install failed ($status)" >&2
    exit "$status"
fi
echo "install-bench-deps: installed:$missing"
nginx -v 2>&1 | sed 's/^/install-bench-deps:   /'
haproxy -v 2>&1 | head -n 1 | sed 's/^/install-bench-deps:   /'
valgrind --version 2>&1 | sed 's/^/install-bench-deps:   /'
