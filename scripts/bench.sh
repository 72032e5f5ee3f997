#!/usr/bin/env bash
# Usage: sudo bash scripts/bench.sh        (root; Debian; ~6-10 min on 2 cores, first run builds)
#
# Image-deploy benchmark: deterministic 2 GiB images (GPT + ext4 holding ~1 GiB of files, about
# half zero blocks), as raw, qcow2 and gzip, served from 127.0.0.1 (a small Python server with
# sendfile and Range support), each deployed by the real agent binary
# (`ferric-agent --standalone`, POST standby.prepare_image?wait=true) onto a loop device backed
# by a file on disk. The floor is measured in the same run: `dd oflag=direct` of the raw file to
# the same device, and `imagewriter/examples/floor.rs` (one GET -> sha256 -> write -> fsync).
# Prints wall time, ratios to both floors, agent peak RSS (VmHWM), CPU seconds and temporary
# bytes. Before every run the page cache is dropped and the served file read once (an image
# server holds its images in cache; a cold Python sendfile server is slower than any agent).
# It prints; it never fails a test.
#
# Env: BENCH_DIR (default /var/tmp/ferric-bench, must be on disk, not tmpfs; images are kept for
# the next run), BENCH_SIZE_MIB (default 2048), BENCH_RUNS (default 1).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root (loop devices, drop_caches)" >&2; exit 1; }
ensure_packages

dir=${BENCH_DIR:-/var/tmp/ferric-bench}
size_mib=${BENCH_SIZE_MIB:-2048}
runs=${BENCH_RUNS:-1}
mkdir -p "$dir"
if [ "$(stat -f -c %T "$dir")" = tmpfs ]; then
  echo "BENCH_DIR $dir is on tmpfs; the device must be backed by a disk" >&2
  exit 1
fi

step "building ferric-agent and the floor example (release)"
(cd "$here" && cargo build -q --release -p ferric-agent && cargo build -q --release -p ferric-imagewriter --example floor)
target=${CARGO_TARGET_DIR:-$here/target}
agent=$target/release/ferric-agent
floor=$target/release/examples/floor

# --- images ---------------------------------------------------------------------------------
stamp=$dir/images-$size_mib.done
if [ ! -e "$stamp" ]; then
  step "making ${size_mib} MiB images in $dir (once)"
  rm -rf "$dir/tree" "$dir"/disk.*
  mkdir -p "$dir/tree"
  # ~1/2 of the disk in files: 3/4 incompressible, 1/4 text; deterministic (seeded PRNG).
  python3 - "$dir/tree" "$size_mib" <<'PY'
import os, random, sys
root, size_mib = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
budget = size_mib * 1024 * 1024 // 2
i = 0
while budget > 0:
    n = min(budget, r.choice([4096, 65536, 1 << 20, 8 << 20, 32 << 20]))
    d = os.path.join(root, "d%02d" % (i % 16))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        if i % 4 == 3:
            line = b"ferric benchmark text line %08d\n"
            f.write(b"".join(line % k for k in range(n // len(line % 0) + 1))[:n])
        else:
            f.write(r.randbytes(n))
    budget -= n
    i += 1
PY
  raw=$dir/disk.raw
  truncate -s "${size_mib}M" "$raw"
  sgdisk -q --clear -U 11111111-2222-4333-8444-555555555555 \
    -n 1:2048:0 -t 1:8300 -u 1:11111111-0000-4000-8000-000000000001 "$raw" >/dev/null
  part_mib=$((size_mib - 2))
  E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -d "$dir/tree" -L root \
    -U 22222222-3333-4444-8555-666666666666 -E hash_seed=33333333-4444-4555-8666-777777777777 \
    "$dir/part.img" "${part_mib}M"
  dd if="$dir/part.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
  rm -f "$dir/part.img"
  rm -rf "$dir/tree"
  qemu-img convert -f raw -O qcow2 "$raw" "$dir/disk.qcow2"
  gzip -1 -n -c "$raw" >"$dir/disk.raw.gz"
  for f in disk.raw disk.qcow2 disk.raw.gz; do
    sha256sum "$dir/$f" | cut -d' ' -f1 >"$dir/$f.sha256"
  done
  touch "$stamp"
fi
zero_pct=$(python3 - "$dir/disk.raw" <<'PY'
import sys
z = t = 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        for i in range(0, len(b), 65536):
            t += 1
            z += not any(b[i:i + 65536])
print(round(100 * z / t))
PY
)

# --- server and device ------------------------------------------------------------------------
port=$((20000 + RANDOM % 20000))
python3 - "$dir" "$port" >"$dir/server.log" 2>&1 <<'PY' &
import http.server, os, re, sys
root, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        path = os.path.join(root, os.path.basename(self.path.split("?")[0]))
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404); return
        with f:
            size = os.fstat(f.fileno()).st_size
            st = os.fstat(f.fileno())
            etag = '"%x-%x"' % (st.st_size, int(st.st_mtime))
            start, end = 0, size
            m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
            ranged = m and self.headers.get("If-Range", etag) == etag
            if ranged:
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end - 1, size))
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            off = start
            while off < end:
                sent = os.sendfile(self.wfile.fileno(), f.fileno(), off, min(end - off, 1 << 30))
                if sent == 0:
                    break
                off += sent
http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
server=$!
backing=$dir/device.img
truncate -s 0 "$backing"
fallocate -l $(((size_mib + 256) * 1024 * 1024)) "$backing"
loop=$(losetup -f --show --direct-io=on "$backing" 2>/dev/null || losetup -f --show "$backing")
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  losetup -d "$loop" 2>/dev/null || true
  rm -f "$backing"
}
trap cleanup EXIT
sleep 0.5
url=http://127.0.0.1:$port

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Drop caches, then warm the served file so the server is not what is measured.
fresh() { drop_caches; cat "$dir/$1" >/dev/null; }
now() { date +%s.%N; }
# CPU seconds (user+sys) of a pid from /proc/PID/stat.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$1/stat"; }

results=()
record() { results+=("$(printf '%-24s %7.2f %7s %7s %9s %7s %6s' "$@")"); }

floor_dd=999999
floor_net=999999
run_floors() {
  fresh disk.raw
  local t0 t1 out
  t0=$(now)
  dd if="$dir/disk.raw" of="$loop" bs=4M oflag=direct conv=fsync status=none
  t1=$(now)
  local dd_s
  dd_s=$(echo "$t1 - $t0" | bc -l)
  record "floor: dd oflag=direct" "$dd_s" - - - - -
  floor_dd=$(echo "if ($dd_s < $floor_dd) $dd_s else $floor_dd" | bc -l)
  fresh disk.raw
  out=$( { /usr/bin/time -f '%M %U %S' "$floor" "$url/disk.raw" "$loop" sha256; } 2>&1 )
  local secs rss cpu
  secs=$(echo "$out" | sed -n 's/^floor: .* in \([0-9.]*\) s.*/\1/p')
  rss=$(echo "$out" | tail -1 | awk '{printf "%d", $1/1024}')
  cpu=$(echo "$out" | tail -1 | awk '{printf "%.2f", $2+$3}')
  grep -q "$(cat "$dir/disk.raw.sha256")" <<<"$out" || echo "floor digest mismatch: $out" >&2
  record "floor: GET+sha256+write" "$secs" - - "${rss}M" "$cpu" 0
  floor_net=$(echo "if ($secs < $floor_net) $secs else $floor_net" | bc -l)
}

deploy() { # file disk_format
  local file=$1 fmt=$2 tok=benchtoken api_port tmpd
  api_port=$((port + 1))
  tmpd=$(mktemp -d "$dir/agent-tmp.XXXX")
  fresh "$file"
  TMPDIR=$tmpd RUST_LOG=info "$agent" --standalone --agent-token "$tok" \
    --listen "127.0.0.1:$api_port" --install-device "$loop" >"$dir/agent-$file.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$api_port/v1/status" >/dev/null 2>&1 && break
    sleep 0.1
  done
  local cpu0 body t0 t1 resp
  cpu0=$(cpu_of "$agent_pid")
  body=$(printf '{"name":"standby.prepare_image","params":{"image_info":{"id":"%s","urls":["%s/%s"],"disk_format":"%s","os_hash_algo":"sha256","os_hash_value":"%s"},"configdrive":null}}' \
    "$file" "$url" "$file" "$fmt" "$(cat "$dir/$file.sha256")")
  t0=$(now)
  resp=$(curl -s -m 600 -X POST -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:$api_port/v1/commands/?wait=true&agent_token=$tok")
  t1=$(now)
  local secs rss cpu status tmp_bytes
  secs=$(echo "$t1 - $t0" | bc -l)
  rss=$(awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$agent_pid/status")
  cpu=$(echo "$(cpu_of "$agent_pid") - $cpu0" | bc -l | awk '{printf "%.2f", $1}')
  tmp_bytes=$(find "$tmpd" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null || true
  agent_pid=
  rm -rf "$tmpd"
  status=$(echo "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("command_status"))' 2>/dev/null || echo "?")
  if [ "$status" != SUCCEEDED ]; then
    echo "deploy of $file: $status: $resp" >&2
    record "agent $file (FAILED)" "$secs" - - "${rss}M" "$cpu" "$tmp_bytes"
    return
  fi
  local r_net r_dd
  r_net=$(echo "$secs / $floor_net" | bc -l | awk '{printf "%.2fx", $1}')
  r_dd=$(echo "$secs / $floor_dd" | bc -l | awk '{printf "%.2fx", $1}')
  record "agent $file" "$secs" "$r_net" "$r_dd" "${rss}M" "$cpu" "$tmp_bytes"
}

verify_device() { # the device must hold the raw image after every deploy of it
  local n
  n=$(stat -c %s "$dir/disk.raw")
  if cmp -s -n "$n" "$dir/disk.raw" "$loop"; then echo ok; else echo MISMATCH; fi
}

step "benchmark: $size_mib MiB image (${zero_pct}% zero 64K blocks), loop device $loop, $runs run(s)"
for _ in $(seq "$runs"); do
  run_floors
  deploy disk.raw raw
  v_raw=$(verify_device)
  deploy disk.qcow2 qcow2
  v_qcow=$(verify_device)
  deploy disk.raw.gz raw
  v_gz=$(verify_device)
done

printf '\n%-24s %7s %7s %7s %9s %7s %6s\n' "run" "wall s" "/stream" "/dd" "peak RSS" "CPU s" "tmp B"
printf '%s\n' "${results[@]}"
printf '\nfloor (best GET+sha256+write): %.2f s; dd oflag=direct: %.2f s; device read back: raw %s, qcow2 %s, gzip %s\n' \
  "$floor_net" "$floor_dd" "$v_raw" "$v_qcow" "$v_gz"
printf 'sizes: raw %s, qcow2 %s, gzip %s\n' "$(du -h --apparent-size "$dir/disk.raw" | cut -f1)" \
  "$(du -h "$dir/disk.qcow2" | cut -f1)" "$(du -h "$dir/disk.raw.gz" | cut -f1)"
printf 'targets: raw <= 1.2x, qcow2 <= 1.3x the floor, peak RSS <= 32 MiB, 0 temporary bytes\n'
