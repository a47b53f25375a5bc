#!/bin/sh
# The README's test command: installs what the tests need (scripts/install-test-deps.sh), then runs
# the whole workspace's tests with every feature on. Extra arguments go to `cargo test`.
set -eu
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
exec cargo test --workspace --all-features "$@"
