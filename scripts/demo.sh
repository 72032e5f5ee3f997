#!/usr/bin/env bash
# The demo: a bare-metal deploy, end to end, in a virtual machine.
#
#   this host (127.0.0.1)                          QEMU VM (TCG, user-mode network)
#   fake Ironic API + conductor  <-- lookup, heartbeats ---  Ferric ramdisk: Debian kernel,
#   image server                 <-- image download ------   busybox init, ferric-agent
#                                --- deploy commands ---->   (127.0.0.1:P -> VM port 9999)
#                                                            writes its virtio disk
#
# Installs what is missing (Debian packages, the musl Rust target), builds the static agent
# and the ramdisk, makes a GPT whole-disk image with an ext4 root, boots the ramdisk in QEMU
# and lets the fake conductor drive a deploy exactly as Ironic does: lookup, heartbeats,
# get_deploy_steps, write_image (image + config drive), get_partition_uuids,
# install_bootloader, power_off. The VM powers itself off; the script then shows what is on
# the VM's disk (a sparse file) and how long each phase took.
#
# Servers listen on 127.0.0.1 only; the VM reaches them as 10.0.2.2 (QEMU's user network).
# No block device of this machine is touched. Root is only needed to install packages.
# Faster, without a VM (the agent runs on this host against a loop device): demo-loop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_packages
ensure_rust_targets

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d /var/tmp/ferric-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
t0=$(now)
# sub A B: B - A in seconds, one decimal; "?" when either is missing.
sub() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-") print "?"; else printf "%.1f", b - a }'; }
add() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "-" || b == "") print ""; else printf "%.3f", a + b }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# field NAME FILE: NAME=value from the conductor's timings line.
field() { sed -n "s/.*fake-conductor: timings.* $1=\([^ ]*\).*/\1/p" "$2" | tail -1; }

step "build: static agent (musl, release), fake conductor, ramdisk"
tb=$(now)
cargo build --release --target x86_64-unknown-linux-musl -p ferric-agent
cargo build --release -p ferric-tests --bin fake-conductor
agent=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/ferric-agent
cargo run --release -q -p ramdisk-build -- --out "$work/ramdisk" --agent "$agent" | tee "$work/ramdisk.txt"
t_build=$(sub "$tb" "$(now)")
echo "built in ${t_build}s"

step "a whole-disk image: GPT, an ext4 root with files, 128 MiB"
img=$work/disk-image.raw
mkdir -p "$work/rootfs/etc"
echo "ferric-demo" > "$work/rootfs/etc/hostname"
head -c 8M /dev/urandom > "$work/rootfs/payload.bin"
# mke2fs wipes the start of whatever it is given: build the filesystem on its own, then
# place it inside the partitioned image.
mkfs.ext4 -q -F -L root -d "$work/rootfs" "$work/root.ext4" 100M
truncate -s 128M "$img"
sgdisk -n 1:2048:+100M -t 1:8300 -c 1:root "$img" > /dev/null
dd if="$work/root.ext4" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
echo "image: $img ($(du -h --apparent-size "$img" | cut -f1)), sha256 $(sha256sum "$img" | cut -d' ' -f1)"

step "the VM's disk: a 5 GiB sparse file (the agent picks the smallest disk >= 4 GiB, as IPA)"
disk=$work/vm-disk.raw
truncate -s 5G "$disk"
echo "disk: $disk"

step "start the fake Ironic (API + conductor) and the image server on 127.0.0.1"
"$CARGO_TARGET_DIR/release/fake-conductor" --listen 127.0.0.1:0 --image-listen 127.0.0.1:0 \
  --image-url-host 10.0.2.2 --image "$img" --timeout 900 \
  > >(tee "$work/conductor.log" | sed -u 's/^/conductor | /') 2>&1 &
conductor=$!
pids+=("$conductor")
for _ in $(seq 100); do grep -q "time base" "$work/conductor.log" 2>/dev/null && break; sleep 0.1; done
api_port=$(sed -n 's/.*Ironic API http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/conductor.log" | head -1)
base=$(sed -n 's/.*time base unix=\([0-9.]*\).*/\1/p' "$work/conductor.log" | head -1)
[ -n "$api_port" ] && [ -n "$base" ] || { echo "the fake conductor did not start" >&2; exit 1; }

step "power on the VM: QEMU (TCG), the ramdisk, ipa-api-url=http://10.0.2.2:$api_port"
agent_port=$(free_port)
append="console=ttyS0 quiet panic=-1 ipa-api-url=http://10.0.2.2:$api_port"
append+=" ipa-advertise-host=127.0.0.1 ipa-advertise-port=$agent_port BOOTIF=01-52-54-00-12-34-56"
echo "kernel command line: $append"
power_on=$(now)
qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot \
  -kernel "$work/ramdisk/vmlinuz" -initrd "$work/ramdisk/initramfs" -append "$append" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$agent_port-:9999" \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
  -drive "file=$disk,if=virtio,format=raw" </dev/null \
  > >(sed -u 's/\r//g; s/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tee "$work/serial.log" \
       | sed -u '/^ *$/d; s/^/       vm | /') 2>"$work/qemu.err" &
qemu=$!
pids+=("$qemu")

status=0
wait "$conductor" || status=$?
if [ "$status" -ne 0 ]; then
  echo "deploy FAILED; last lines of the VM console:" >&2
  tail -40 "$work/serial.log" >&2
  exit 1
fi

step "standby.power_off: waiting for the VM to power itself off"
off=""
for _ in $(seq 1200); do
  if ! kill -0 "$qemu" 2>/dev/null; then off=$(now); break; fi
  sleep 0.1
done
if [ -z "$off" ]; then
  echo "the VM is still running 120 s after standby.power_off: killing QEMU" >&2
  exit 1
fi
wait "$qemu" || { echo "QEMU exited with status $? ($(cat "$work/qemu.err"))" >&2; exit 1; }
grep -q "reboot: Power down" "$work/serial.log" || { echo "QEMU exited without a guest power-off" >&2; exit 1; }
sleep 0.2 # let the console pipe drain

step "what was written where (the VM's /dev/vda is $disk)"
size=$(stat -c %s "$img")
# Adding the config-2 partition moves the GPT backup to the end of the disk, which updates
# the protective MBR's partition entry, the primary header and the entry array (LBA 0-33)
# and retires the image's own backup (its last 33 sectors). Everything else is the image.
gpt=$((34 * 512)); tail_=$((33 * 512))
same() { cmp -s -i "$1:$1" -n "$2" "$img" "$disk"; }
if same 0 440 && same "$gpt" $((size - gpt - tail_)); then
  echo "image:        $size bytes at offset 0: boot code and every byte after the GPT identical"
  echo "              (GPT headers updated for the new partition, backup moved to the disk's end)"
else
  echo "image:        MISMATCH" >&2; exit 1
fi
sfdisk -l "$disk" 2>/dev/null | sed -n '/^Device/,$p'
cd_line=$(sfdisk -d "$disk" 2>/dev/null | grep 'name="config-2"' || true)
start=$(echo "$cd_line" | sed -n 's/.*start= *\([0-9]*\).*/\1/p')
if [ -z "$start" ]; then
  echo "config drive: no partition named config-2" >&2; exit 1
fi
label=$(dd if="$disk" bs=512 skip="$start" count=80 status=none | dd bs=1 skip=$((32768 + 40)) count=32 status=none | tr -d ' ')
echo "config drive: ISO 9660 volume '$label' in partition config-2 at sector $start (end of the disk)"
echo "disk file:    $(du -h --apparent-size "$disk" | cut -f1) apparent, $(du -h "$disk" | cut -f1) allocated"
grep -E "written to device|config drive" "$work/serial.log" | sed 's/^/agent:        /' | head -4 || true

step "timings (this machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
c=$work/conductor.log
lookup=$(add "$base" "$(field first_lookup "$c")")
heartbeat=$(add "$base" "$(field first_heartbeat "$c")")
started=$(field started "$c"); active=$(field active "$c")
ws=$(field write_image_sent "$c"); wd=$(field write_image_done "$c")
poff=$(add "$base" "$(field power_off_sent "$c")")
kernel_b=$(stat -c %s "$work/ramdisk/vmlinuz"); initrd_b=$(stat -c %s "$work/ramdisk/initramfs")
agent_b=$(stat -c %s "$agent")
printf '  %-36s %6ss\n' "build (agent, conductor, ramdisk)" "$t_build" \
  "power-on -> first lookup" "$(sub "$power_on" "$lookup")" \
  "power-on -> first heartbeat" "$(sub "$power_on" "$heartbeat")" \
  "deploy (first command -> active)" "$(sub "$started" "$active")" \
  "  of which write_image" "$(sub "$ws" "$wd")" \
  "power_off sent -> VM off" "$(sub "$poff" "$off")"
awk -v k="$kernel_b" -v i="$initrd_b" -v a="$agent_b" 'BEGIN {
  printf "  kernel + initramfs %.1f MiB (%d + %d bytes); agent %.1f MiB\n", (k + i) / 1048576, k, i, a / 1048576 }'
echo
echo "demo finished in $(sub "$t0" "$(now)")s — files were in $work (removed on exit)"
