#!/usr/bin/env bash
# Fuzz every target in fuzz/ for a bounded time; fail if any input crashes, hangs or blows the
# memory limit. Usage:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 30 s, every target)
#
# Works with the stable toolchain alone and without cargo-fuzz: the targets are built the way
# `cargo fuzz build` builds them (libfuzzer-sys, SanitizerCoverage, AddressSanitizer), with
# RUSTC_BOOTSTRAP=1 so stable rustc accepts the -Z flag ASan needs. Installing cargo-fuzz
# would cost CI about two minutes for nothing. cargo-fuzz itself works too:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run cmdline
#
# Installs what it needs on Debian when root (g++ for libFuzzer, qemu-img for the qcow2
# target's comparison). scripts/test.sh runs it with 20 s per target (CI).
#
# Environment:
#   FUZZ_SANITIZER=address|none   (default address; none = coverage-guided only, ~2x faster)
#   FUZZ_JOBS=N                   targets fuzzed at once (default 1)
#   CARGO_TARGET_DIR              build directory (default fuzz/target)
#   FUZZ_TOLERATE=a,b             qcow2 target: accept qemu-img refusals whose message contains
#                                 one of these (a reported difference, while it is being fixed)
#
# Corpora: fuzz/corpus/<target> (committed seeds, read only here) and
# fuzz/regressions/<target> (inputs that once crashed or must keep passing; run first). New
# inputs found in this run go to a scratch directory, printed at the end, so a CI run never
# changes the checkout. Crashing inputs are saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib.sh

SECS=${1:-30}
shift || true
case $SECS in '' | *[!0-9]*)
  echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
  ;;
esac
SANITIZER=${FUZZ_SANITIZER:-address}
JOBS=${FUZZ_JOBS:-1}
TRIPLE=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/fuzz/target}

ALL_TARGETS=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^ferric-fuzz$')
TARGETS=${*:-$ALL_TARGETS}

# Largest input per target. Disk images need room for a GPT (34 sectors + a backup); the
# rest parse short text, where small inputs keep the exec rate high.
max_len() {
  case $1 in
    partition_table | qcow2 | wipe_plan) echo 65536 ;;
    configdrive) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

seed_fuzz_lock

# libFuzzer's C++ runtime is compiled by libfuzzer-sys's build script. Without qemu-img the
# qcow2 target only checks for crashes, not the bytes written; CI must compare.
if [ "$(id -u)" -eq 0 ]; then
  ensure_packages g++ qemu-utils
fi
if ! command -v c++ >/dev/null; then
  echo "a C++ compiler is needed to build libFuzzer (apt-get install g++)" >&2
  exit 1
fi
if ! command -v qemu-img >/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "qemu-img is needed to check the qcow2 target's output (apt-get install qemu-utils)" >&2
    exit 1
  fi
  echo "WARNING: qemu-img is not installed; the qcow2 target will not compare with it" >&2
fi

# The flags `cargo fuzz build` uses (cargo-fuzz 0.13 src/project.rs), plus debug assertions
# and overflow checks: an arithmetic overflow on a hostile partition table is a bug to find,
# not to wrap silently.
RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
case $SANITIZER in
  address) RUSTFLAGS="$RUSTFLAGS -Zsanitizer=address" ;;
  none) ;;
  *)
    echo "FUZZ_SANITIZER must be address or none" >&2
    exit 2
    ;;
esac

step "build fuzz targets (sanitizer: $SANITIZER)"
bins=()
for t in $TARGETS; do bins+=(--bin "$t"); done
t0=$(date +%s)
# --target keeps RUSTFLAGS away from build scripts and proc macros, as cargo-fuzz does.
RUSTC_BOOTSTRAP=1 RUSTFLAGS="$RUSTFLAGS" cargo build --manifest-path fuzz/Cargo.toml \
  --release --target "$TRIPLE" "${bins[@]}"
echo "built in $(($(date +%s) - t0)) s"
BIN_DIR=$CARGO_TARGET_DIR/$TRIPLE/release

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/ferric-fuzz.XXXXXX")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0:detect_leaks=0}

# Run one target; its log goes to $SCRATCH/<target>.log, its status to <target>.rc. libFuzzer
# stops itself after $SECS s; `timeout` is the backstop for a run that does not (a hang in
# loading the corpus, a stuck child process), so CI never waits for its own job timeout.
run_target() {
  local t=$1
  local dirs=("$SCRATCH/new/$t" "$ROOT/fuzz/corpus/$t")
  mkdir -p "$SCRATCH/new/$t" "$ROOT/fuzz/artifacts/$t" "$ROOT/fuzz/corpus/$t"
  [ -d "$ROOT/fuzz/regressions/$t" ] && dirs+=("$ROOT/fuzz/regressions/$t")
  touch "$SCRATCH/$t.start"
  local rc=0
  timeout --kill-after=10 $((SECS + 120)) "$BIN_DIR/$t" "${dirs[@]}" \
    -max_total_time="$SECS" -rss_limit_mb=1024 -timeout=10 \
    -max_len="$(max_len "$t")" -print_final_stats=1 \
    -artifact_prefix="$ROOT/fuzz/artifacts/$t/" \
    >"$SCRATCH/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$SCRATCH/$t.rc"
}

step "fuzz each target for $SECS s"
t0=$(date +%s)
running=0
for t in $TARGETS; do
  echo "-- $t"
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

step "results (fuzzing took $(($(date +%s) - t0)) s)"
failed=()
printf '%-16s %12s %8s %8s  %s\n' target execs exec/s corpus status
for t in $TARGETS; do
  log=$SCRATCH/$t.log
  rc=$(cat "$SCRATCH/$t.rc" 2>/dev/null || echo missing)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" 2>/dev/null | tail -1) || true
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" 2>/dev/null | tail -1) || true
  corpus=$({ grep -o 'corp: [0-9]*' "$log" || true; } | tail -1 | cut -d' ' -f2)
  if [ "$rc" = 0 ]; then status=ok; else status="FAILED (exit $rc)"; failed+=("$t"); fi
  printf '%-16s %12s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${corpus:-?}" "$status"
done

for t in "${failed[@]}"; do
  step "$t failed; last lines of its log ($SCRATCH/$t.log)"
  grep -E 'panicked at|ERROR: |SUMMARY|Test unit written|artifact_prefix' "$SCRATCH/$t.log" | head -20 || true
  tail -n 30 "$SCRATCH/$t.log"
  # The input, so that a crash on a CI machine can be reproduced from its log alone:
  #   base64 -d > input; scripts/fuzz.sh builds $BIN_DIR/<target>; run it with the file.
  find "$ROOT/fuzz/artifacts/$t" -type f -newer "$SCRATCH/$t.start" | while read -r a; do
    if [ "$(stat -c %s "$a")" -le 65536 ]; then
      echo "crashing input $a, base64:"
      base64 -w 0 "$a"
      echo
    else
      echo "crashing input $a ($(stat -c %s "$a") bytes)"
    fi
  done || true
done

echo
echo "new inputs found in this run: $SCRATCH/new (merge worthwhile ones into fuzz/corpus)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all targets passed"
