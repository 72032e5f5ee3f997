#!/usr/bin/env bash
# The project's test command (README.md names it; .ci/run runs exactly what README says).
# Installs what the suites need on a fresh Debian machine, then: format check, clippy with
# warnings as errors (the fuzz targets too), every test of the workspace, a bounded fuzzing
# run, and a deploy driven by the real Ironic conductor. Suites that need root, loop devices
# or QEMU run here (CI is root); they fail rather than skip when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure_packages
ensure_rust_targets
seed_fuzz_lock

step "cargo fmt --check"
cargo fmt --all -- --check
# fuzz/ is a workspace of its own: neither --all nor --workspace reaches it.
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

step "cargo test"
# Integration suites start servers, agents and loop devices; two at a time is what two
# cores carry without timeouts turning flaky.
cargo test --workspace --no-fail-fast -- --test-threads=2

step "fuzz every target for 20 s (libFuzzer + AddressSanitizer)"
# The parsers of hostile input (images, partition tables, requests…): the inputs that once
# crashed them (fuzz/regressions) first, then 20 s of new ones each. About 3 minutes plus
# 4–5 for the ASan build on two cores; fails on any crash, hang or memory blow-up and
# prints the input. Longer runs: scripts/fuzz.sh 600 <target>.
scripts/fuzz.sh 20

step "real OpenStack Ironic 39.0.0 (from PyPI) drives the agent: inspection, cleaning, then a deploy, require_tls=true"
# The acceptance test of the whole product: an unmodified Ironic conductor takes a node
# through in-band inspection to manageable, automated cleaning to available and a deploy to
# active with this agent, over HTTPS (auto TLS), on a loop device.
cargo build -q -p ferric-agent
FERRIC_AGENT="${CARGO_TARGET_DIR:-target}/debug/ferric-agent" IRONIC_REQUIRE_TLS=true \
  tests/real-ironic/run.sh all
