#!/usr/bin/env bash
# The fast demo (no VM; scripts/demo.sh boots the real ramdisk in QEMU instead): one whole
# deploy, the way an Ironic conductor drives it, with the agent running on this host.
#
#   fake Ironic conductor + image server (127.0.0.1)  <-- lookup/heartbeat --  ferric-agent
#                         \-- get_deploy_steps, write_image, ... ---------->/      |
#                                                                     writes a loop device
#
# Installs what is missing, builds, generates a GPT whole-disk image, deploys it with a
# config drive onto a loop device backed by a temporary file, and prints what was written
# where and how long each phase took. Needs root (loop devices). Touches no other device.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[ "$(id -u)" -eq 0 ] || { echo "demo-loop.sh needs root (it creates a loop device)" >&2; exit 1; }
ensure_packages
ensure_rust_targets

work=$(mktemp -d /var/tmp/ferric-demo.XXXXXX)
loop=""
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

t0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

step "build (release)"
tb=$(date +%s.%N)
cargo build --release -q -p ferric-agent -p ferric-tests --bin ferric-agent --bin fake-conductor
bin=${CARGO_TARGET_DIR:-target}/release
echo "built in $(since "$tb")s"

step "make a whole-disk image: GPT, an ext4 root with files, 256 MiB"
img=$work/disk.raw
mkdir -p "$work/rootfs/etc"
echo "ferric-demo" > "$work/rootfs/etc/hostname"
head -c 8M /dev/urandom > "$work/rootfs/payload.bin"
# mke2fs wipes the start of whatever it is given: build the filesystem on its own, then
# place it inside the partitioned image.
mkfs.ext4 -q -F -L root -d "$work/rootfs" "$work/root.ext4" 200M
truncate -s 256M "$img"
sgdisk -n 1:2048:+200M -t 1:8300 -c 1:root "$img" > /dev/null
dd if="$work/root.ext4" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
sha=$(sha256sum "$img" | cut -d' ' -f1)
echo "image: $img ($(du -h --apparent-size "$img" | cut -f1)), sha256 $sha"

step "a 1 GiB target disk (loop device over a sparse file)"
truncate -s 1G "$work/target.img"
loop=$(losetup -f --show "$work/target.img")
echo "install device: $loop"

step "start the fake conductor and the agent"
: > "$work/conductor.log"
"$bin/fake-conductor" --listen 127.0.0.1:6385 --image-listen 127.0.0.1:8089 \
  --image "$img" --heartbeat-timeout 20 > "$work/conductor.log" 2>&1 &
pids+=($!)
conductor=$!
echo "BOOTIF=01-52-54-00-12-34-56 ipa-api-url=http://127.0.0.1:6385" > "$work/cmdline"
"$bin/ferric-agent" --cmdline-file "$work/cmdline" --listen 127.0.0.1:9999 \
  --advertise 127.0.0.1:9999 --install-device "$loop" > "$work/agent.log" 2>&1 &
pids+=($!)
agent=$!

step "deploy (conductor's view)"
tail -n +1 -f "$work/conductor.log" --pid "$conductor" &
tailer=$!
status=0
wait "$conductor" || status=$?
kill "$tailer" 2>/dev/null || true
if [ "$status" -ne 0 ]; then
  echo "deploy FAILED; agent log:" >&2
  tail -40 "$work/agent.log" >&2
  exit 1
fi
# power_off outside a ramdisk ends the agent process (it never powers this machine off).
for _ in $(seq 50); do kill -0 "$agent" 2>/dev/null || break; sleep 0.1; done

step "what was written where"
size=$(stat -c %s "$img")
# Adding the config-2 partition moves the GPT backup to the end of the disk, which updates
# the protective MBR's partition entry, the primary header and the entry array (LBA 0-33)
# and retires the image's own backup (its last 33 sectors). Everything else is the image.
gpt=$((34 * 512)); tail_=$((33 * 512))
same() { cmp -s -i "$1:$1" -n "$2" "$img" "$loop"; }
if same 0 440 && same "$gpt" $((size - gpt - tail_)); then
  echo "image:        $size bytes at offset 0 of $loop: boot code and every byte after the GPT"
  echo "              identical (GPT headers updated for the new partition)"
else
  echo "image:        MISMATCH" >&2; exit 1
fi
sfdisk -l "$loop" | sed -n '/^Device/,$p'
cd_line=$(sfdisk -d "$loop" | grep 'name="config-2"' || true)
start=$(echo "$cd_line" | sed -n 's/.*start= *\([0-9]*\).*/\1/p')
if [ -n "$start" ]; then
  label=$(dd if="$loop" bs=512 skip="$start" count=80 status=none | dd bs=1 skip=$((32768 + 40)) count=32 status=none | tr -d ' ')
  echo "config drive: ISO 9660 volume '$label' in the partition at sector $start (end of disk)"
fi
grep -E "written to device|config drive" "$work/agent.log" | sed 's/^/agent: /' | head -5
echo
echo "demo finished in $(since "$t0")s — logs were in $work (removed on exit)"
