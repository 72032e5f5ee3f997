#!/usr/bin/env bash
# Drive the Ferric agent with a REAL, unmodified OpenStack Ironic conductor.
#
# Usage: tests/real-ironic/run.sh [inspect|deploy|clean|all]     (default: all)
#   inspect create node → manage → inspect (Ironic's built-in "agent" inspection: the agent
#           posts its inventory to /v1/continue_inspection) → `manageable`, then compare the
#           inventory Ironic stored with the agent's own and check the hooks' results.
#   deploy  create node → manage → provide (cleaning per CLEAN_STEPS, default off)
#           → deploy a raw whole-disk image + config drive → `active`, then check the disk.
#   clean   create node → manage → provide with automated cleaning → `available`,
#           then check the disk was erased.
#   all     inspect, clean, then deploy on the same node (a fresh agent per "boot").
#
# Environment (all optional):
#   FERRIC_AGENT        agent binary (default ${CARGO_TARGET_DIR:-target}/debug/ferric-agent)
#   IRONIC_VENV         venv holding Ironic (default target/ironic-venv; created if missing)
#   IRONIC_VERSION      Ironic release to install (default 39.0.0)
#   IRONIC_REQUIRE_TLS  [agent]require_tls (default false)
#   CLEAN_STEPS         full | metadata | off   (default: full for clean/all, off for deploy)
#   ROOT_DEVICE_HINT    1 → set properties.root_device = {"name": <loop device>} (default 0)
#   RECORD              1 → put a recording proxy between Ironic and the agent (both
#                       directions) and write exchanges.jsonl (default 0; not with TLS)
#   REAL_IRONIC_WORK    scratch dir, wiped at start (default target/real-ironic)
#   STEP_TIMEOUT        seconds to wait for one provision-state goal (default 300)
#   DISK_MB             size of the sparse file behind the loop device (default 1024)
#   IMAGE_MB            size of the generated raw image (default 64)
#   CONFIGDRIVE         0 → deploy without a config drive (to isolate failures; default 1)
#
# Everything listens on 127.0.0.1 only. The agent runs in its own mount + PID namespace with
# a private /dev that holds nothing but the loop device this script created (plus null, zero,
# random, urandom), a read-only /sys, and its own PID 1: whatever it tries, it cannot open a
# host disk, and a reboot(2) only ends its namespace, not this machine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=${1:-all}
case "$MODE" in inspect | deploy | clean | all) ;; *)
	echo "usage: $0 [inspect|deploy|clean|all]" >&2
	exit 2
	;;
esac

IRONIC_VERSION=${IRONIC_VERSION:-39.0.0}
IRONIC_VENV=${IRONIC_VENV:-$ROOT/target/ironic-venv}
FERRIC_AGENT=${FERRIC_AGENT:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/ferric-agent}
IRONIC_REQUIRE_TLS=${IRONIC_REQUIRE_TLS:-false}
ROOT_DEVICE_HINT=${ROOT_DEVICE_HINT:-0}
RECORD=${RECORD:-0}
WORK=${REAL_IRONIC_WORK:-$ROOT/target/real-ironic}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
DISK_MB=${DISK_MB:-1024}
IMAGE_MB=${IMAGE_MB:-64}
CONFIGDRIVE=${CONFIGDRIVE:-1}
if [[ -z "${CLEAN_STEPS:-}" ]]; then
	if [[ "$MODE" == deploy || "$MODE" == inspect ]]; then CLEAN_STEPS=off; else CLEAN_STEPS=full; fi
fi
case "$CLEAN_STEPS" in full | metadata | off) ;; *)
	echo "CLEAN_STEPS must be full, metadata or off" >&2
	exit 2
	;;
esac
if [[ ( "$MODE" == clean || "$MODE" == all ) && "$CLEAN_STEPS" == off ]]; then
	echo "mode $MODE needs cleaning: CLEAN_STEPS=off makes no sense here" >&2
	exit 2
fi
case "$CONFIGDRIVE" in 0 | 1) ;; *)
	echo "CONFIGDRIVE must be 0 or 1" >&2
	exit 2
	;;
esac
case "$IRONIC_REQUIRE_TLS" in true | false) ;; *)
	echo "IRONIC_REQUIRE_TLS must be true or false" >&2
	exit 2
	;;
esac
if [[ "$RECORD" == 1 && "$IRONIC_REQUIRE_TLS" == true ]]; then
	echo "RECORD=1 cannot see inside TLS; use it with IRONIC_REQUIRE_TLS=false" >&2
	exit 2
fi

API_PORT=6385
IMG_PORT=8089
AGENT_PORT=9999
# With RECORD=1 the agent talks to Ironic through :6386 and advertises :9998.
PROXY_API_PORT=6386
PROXY_AGENT_PORT=9998
MAC=52:54:00:12:34:56
API=http://127.0.0.1:$API_PORT
HDR_VER="X-OpenStack-Ironic-API-Version: latest"

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%7.1fs", b-a}'; }
log() { echo "[$(elapsed)] $*"; }
die() {
	echo "[$(elapsed)] FAIL: $*" >&2
	exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
AGENT_PIDS=()
LOOPDEV=""
cleanup() {
	local rc=$?
	set +e
	for pid in "${AGENT_PIDS[@]}"; do
		kill -9 "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null
	done
	if [[ -n "$LOOPDEV" ]]; then
		# Detach only the device this run attached, and only if it still backs our file.
		if losetup -nO BACK-FILE "$LOOPDEV" 2>/dev/null | grep -qF "$WORK/disk.img"; then
			losetup -d "$LOOPDEV"
		fi
	fi
	if ((rc != 0)); then
		local alog
		alog=$(find "$WORK" -maxdepth 1 -name 'agent-*.log' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2)
		if [[ -n "$alog" ]]; then
			echo "---- last lines of $alog" >&2
			tail -n 20 "$alog" >&2
		fi
		echo "---- logs kept in $WORK (ironic.log, agent-*.log, images.log)" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- preconditions
[[ $(id -u) == 0 ]] || die "needs root (loop devices, namespaces)"
for tool in curl jq losetup unshare mknod python3 sfdisk; do
	command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ -x "$FERRIC_AGENT" ]] || die "agent binary not found: $FERRIC_AGENT (cargo build -p ferric-agent, or set FERRIC_AGENT)"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $API_PORT $IMG_PORT $AGENT_PORT $PROXY_API_PORT $PROXY_AGENT_PORT; do
	port_busy "$p" && die "127.0.0.1:$p is already in use"
done

# ---------------------------------------------------------------- venv
T_INSTALL=0
if [[ ! -x "$IRONIC_VENV/bin/ironic" ]] ||
	[[ "$("$IRONIC_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("ironic"))' 2>/dev/null)" != "$IRONIC_VERSION" ]]; then
	log "installing ironic==$IRONIC_VERSION into $IRONIC_VENV (PyPI)"
	t=$(date +%s)
	rm -rf "$IRONIC_VENV"
	python3 -m venv "$IRONIC_VENV"
	"$IRONIC_VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
	cons=()
	# The dependency set that was tested with this release; OpenStack's own
	# upper-constraints file is not reachable from here, PyPI is.
	if [[ "$IRONIC_VERSION" == 39.0.0 ]]; then cons=(-c "$HERE/constraints-39.0.0.txt"); fi
	"$IRONIC_VENV/bin/pip" install -q --disable-pip-version-check "${cons[@]}" "ironic==$IRONIC_VERSION"
	T_INSTALL=$(($(date +%s) - t))
	log "ironic installed in ${T_INSTALL}s"
fi
IRONIC_BIN=$IRONIC_VENV/bin

# ---------------------------------------------------------------- scratch dir
case "$WORK" in /*/*) ;; *) die "REAL_IRONIC_WORK must be an absolute path below /: $WORK" ;; esac
# A run killed with SIGKILL could not detach its loop device: detach whatever still backs
# this harness's own disk file (and nothing else) before the file is deleted.
if [[ -e "$WORK/disk.img" ]]; then
	losetup -j "$WORK/disk.img" -O NAME -n 2>/dev/null | while read -r stale; do
		[[ "$stale" == /dev/loop* ]] && losetup -d "$stale" && echo "detached stale $stale"
	done
fi
rm -rf "$WORK"
mkdir -p "$WORK"/{state,locks,deploy-logs,certs,images,agent-tmp}

# ---------------------------------------------------------------- image + disk
log "generating a ${IMAGE_MB} MiB raw whole-disk image (GPT, one partition, random payload)"
python3 "$HERE/harness.py" make-image "$WORK/images/disk.raw" "$IMAGE_MB"
IMG_SHA256=$(sha256sum "$WORK/images/disk.raw" | cut -d' ' -f1)
IMG_SIZE=$(stat -c %s "$WORK/images/disk.raw")

truncate -s "${DISK_MB}M" "$WORK/disk.img"
LOOPDEV=$(losetup -f --show "$WORK/disk.img")
[[ "$LOOPDEV" == /dev/loop* ]] || die "losetup gave an unexpected device: $LOOPDEV"
log "loop device $LOOPDEV backs $WORK/disk.img (${DISK_MB} MiB, sparse)"
# Something to erase: an old "instance" with a partition table and data.
dd if="$WORK/images/disk.raw" of="$LOOPDEV" bs=1M conv=fsync status=none

# ---------------------------------------------------------------- image server
(cd "$WORK/images" && exec python3 -m http.server --bind 127.0.0.1 "$IMG_PORT") \
	>"$WORK/images.log" 2>&1 &
PIDS+=($!)

# ---------------------------------------------------------------- ironic.conf
case "$CLEAN_STEPS" in
full) AUTOCLEAN=true ERASE_PRIO=10 META_PRIO=99 ;;
metadata) AUTOCLEAN=true ERASE_PRIO=0 META_PRIO=99 ;;
off) AUTOCLEAN=false ERASE_PRIO=10 META_PRIO=99 ;;
esac
cat >"$WORK/ironic.conf" <<EOF
[DEFAULT]
debug = true
log_file = $WORK/ironic.log
auth_strategy = noauth
rpc_transport = none
host = harness-conductor
my_ip = 127.0.0.1
state_path = $WORK/state
tempdir = $WORK/state
enabled_hardware_types = fake-hardware
enabled_deploy_interfaces = direct
default_deploy_interface = direct
enabled_boot_interfaces = fake
enabled_power_interfaces = fake
enabled_management_interfaces = fake
enabled_network_interfaces = noop
enabled_storage_interfaces = noop
enabled_bios_interfaces = fake
enabled_console_interfaces = fake
enabled_firmware_interfaces = fake
enabled_inspect_interfaces = fake,agent
enabled_raid_interfaces = fake
enabled_rescue_interfaces = fake
enabled_vendor_interfaces = fake
minimum_memory_warning_only = true

[api]
host_ip = 127.0.0.1
port = $API_PORT

[database]
connection = sqlite:///$WORK/ironic.sqlite

[dhcp]
dhcp_provider = none

[service_catalog]
# Where the (fake-booted) ramdisk would be told to find the API; noauth → no keystone.
endpoint_override = $API

[oslo_concurrency]
lock_path = $WORK/locks

[conductor]
automated_clean = $AUTOCLEAN
heartbeat_interval = 2
sync_power_state_interval = -1
check_provision_state_interval = 5
deploy_callback_timeout = $STEP_TIMEOUT
clean_callback_timeout = $STEP_TIMEOUT

[deploy]
fast_track = false
erase_devices_priority = $ERASE_PRIO
erase_devices_metadata_priority = $META_PRIO
# One zero pass: the check after cleaning can then demand an all-zero disk.
shred_random_overwrite_iterations = 0
shred_final_overwrite_with_zeros = true

[inspector]
# Built-in in-band inspection: the default hooks (ramdisk-error, validate-interfaces, ports,
# architecture); a port is created for the PXE (BOOTIF) interface.
add_ports = pxe
# The fake boot interface cannot boot a ramdisk: the harness "boots" the agent itself.
require_managed_boot = false

[agent]
require_tls = $IRONIC_REQUIRE_TLS
certificates_path = $WORK/certs
image_download_source = http
deploy_logs_collect = on_failure
deploy_logs_storage_backend = local
deploy_logs_local_path = $WORK/deploy-logs
# The fake power interface reports whatever it was last told, so the soft power-off via
# the agent is never observed: keep the wait before Ironic's forced power-off short.
post_deploy_get_power_state_retries = 1
post_deploy_get_power_state_retry_interval = 1
command_timeout = 60
EOF

log "creating the database"
"$IRONIC_BIN/ironic-dbsync" --config-file "$WORK/ironic.conf" create_schema >"$WORK/dbsync.log" 2>&1 ||
	die "ironic-dbsync failed: $(tail -5 "$WORK/dbsync.log")"

log "starting ironic (all-in-one: API + conductor, rpc_transport=none)"
"$IRONIC_BIN/ironic" --config-file "$WORK/ironic.conf" >"$WORK/ironic.stdout" 2>&1 &
PIDS+=($!)
IRONIC_PID=$!

wait_for() { # wait_for <seconds> <description> <command...>
	local limit=$1 what=$2
	shift 2
	local end=$(($(date +%s) + limit))
	until "$@"; do
		(($(date +%s) < end)) || die "timed out after ${limit}s waiting for $what"
		kill -0 "$IRONIC_PID" 2>/dev/null || die "ironic died: $(tail -20 "$WORK/ironic.log" "$WORK/ironic.stdout")"
		sleep 0.5
	done
}
api_up() { curl -fsS -o /dev/null "$API/v1/" 2>/dev/null; }
wait_for 120 "the Ironic API" api_up
T_READY=$(elapsed)
log "ironic API up: $(curl -fsS "$API/" | jq -r .default_version.version) (max microversion)"

# The conductor registers itself and its drivers shortly after the API answers.
driver_up() { curl -fsS -H "$HDR_VER" "$API/v1/drivers" | jq -e '.drivers[] | select(.name=="fake-hardware")' >/dev/null; }
wait_for 60 "the fake-hardware driver to register" driver_up

# ---------------------------------------------------------------- recording proxy
AGENT_API_URL=$API
AGENT_ADVERTISE=127.0.0.1:$AGENT_PORT
if [[ "$RECORD" == 1 ]]; then
	python3 "$HERE/harness.py" record-proxy "$WORK/exchanges.jsonl" \
		"$PROXY_API_PORT=127.0.0.1:$API_PORT:agent->ironic" \
		"$PROXY_AGENT_PORT=127.0.0.1:$AGENT_PORT:ironic->agent" >"$WORK/proxy.log" 2>&1 &
	PIDS+=($!)
	AGENT_API_URL=http://127.0.0.1:$PROXY_API_PORT
	AGENT_ADVERTISE=127.0.0.1:$PROXY_AGENT_PORT
	proxy_up() { port_busy $PROXY_API_PORT && port_busy $PROXY_AGENT_PORT; }
	wait_for 20 "the recording proxy" proxy_up
	log "recording every exchange to $WORK/exchanges.jsonl"
fi

# ---------------------------------------------------------------- REST helpers
api() { # api METHOD PATH [JSON]
	local method=$1 path=$2 body=${3:-} out code
	out=$(mktemp -p "$WORK")
	if [[ -n "$body" ]]; then
		code=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "$HDR_VER" \
			-H 'Content-Type: application/json' --data "$body" "$API$path")
	else
		code=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "$HDR_VER" "$API$path")
	fi
	if [[ "$code" != 2* ]]; then
		echo "$method $path → HTTP $code: $(cat "$out")" >&2
		rm -f "$out"
		return 1
	fi
	cat "$out"
	rm -f "$out"
}
node_field() { api GET "/v1/nodes/$NODE" | jq -r "$1"; }
provision() { # provision TARGET [extra JSON object merged into the body]
	local body
	body=$(jq -cn --arg t "$1" --argjson extra "${2:-{\}}" '{target: $t} + $extra')
	api PUT "/v1/nodes/$NODE/states/provision" "$body" >/dev/null || die "provision $1 refused"
}

# wait_state GOAL TIMEOUT FAIL_STATES... : polls provision_state, prints each transition.
wait_state() {
	local goal=$1 limit=$2
	shift 2
	local end=$(($(date +%s) + limit)) last="" state url last_url="" row
	while :; do
		row=$(node_field '[.provision_state, (.driver_internal_info.agent_url // "")] | @tsv') ||
			die "cannot read the node"
		IFS=$'\t' read -r state url <<<"$row"
		if [[ "$state" != "$last" ]]; then
			log "  provision_state: $state"
			last=$state
		fi
		if [[ -n "$url" && "$url" != "$last_url" ]]; then
			log "  agent_url: $url"
			last_url=$url
			if [[ "$IRONIC_REQUIRE_TLS" == true && "$url" != https://* ]]; then
				die "require_tls is on but Ironic recorded a plain agent_url"
			fi
		fi
		[[ "$state" == "$goal" ]] && return 0
		for bad in "$@"; do
			if [[ "$state" == "$bad" ]]; then
				echo "last_error: $(node_field .last_error)" >&2
				die "node reached '$state' instead of '$goal'"
			fi
		done
		(($(date +%s) < end)) || die "timed out after ${limit}s waiting for '$goal' (state '$state', last_error: $(node_field .last_error))"
		kill -0 "$IRONIC_PID" 2>/dev/null || die "ironic died"
		sleep 1
	done
}

# ---------------------------------------------------------------- agent
AGENT_N=0
AGENT_PID=""
start_agent() { # start_agent TAG [CMDLINE [AGENT ARGS...]]: one "boot" of the ramdisk
	AGENT_N=$((AGENT_N + 1))
	local tag=$1 cmdline=${2:-"BOOTIF=01-${MAC//:/-} ipa-debug=1"} devmm
	shift 2 || shift $#
	devmm=$(stat -c '%t %T' "$LOOPDEV")
	echo "$cmdline" >"$WORK/cmdline"
	log "starting agent #$AGENT_N ($tag): $FERRIC_AGENT"
	# Private /dev with only our loop device, read-only /sys, own PID namespace.
	# shellcheck disable=SC2016
	unshare --mount --pid --fork --mount-proc --kill-child --propagation private \
		env LOOPDEV="$LOOPDEV" DEVMM="$devmm" AGENT_TMP="$WORK/agent-tmp" bash -c '
		set -eu
		mount -t tmpfs -o mode=0755,size=1m ferric-dev /dev
		mknod -m 0660 "$LOOPDEV" b $((16#${DEVMM% *})) $((16#${DEVMM#* }))
		mknod -m 0666 /dev/null c 1 3
		mknod -m 0666 /dev/zero c 1 5
		mknod -m 0666 /dev/random c 1 8
		mknod -m 0666 /dev/urandom c 1 9
		mount --bind /sys /sys
		mount -o remount,bind,ro /sys
		export TMPDIR="$AGENT_TMP"
		exec "$@"' ferric-sandbox \
		"$FERRIC_AGENT" --api-url "$AGENT_API_URL" --install-device "$LOOPDEV" \
		--listen "127.0.0.1:$AGENT_PORT" --advertise "$AGENT_ADVERTISE" \
		--power-action exit --cmdline-file "$WORK/cmdline" "$@" \
		>"$WORK/agent-$AGENT_N-$tag.log" 2>&1 &
	AGENT_PID=$!
	disown "$AGENT_PID"
	AGENT_PIDS+=("$AGENT_PID")
}
# The agent is PID 1 of its namespace, so it only sees the signals it handles; unshare
# ignores SIGTERM. "Power off" the machine instead: SIGKILL unshare, whose --kill-child
# takes the agent and its namespace down with it.
stop_agent() {
	if [[ -n "$AGENT_PID" ]]; then
		kill -9 "$AGENT_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
	fi
	AGENT_PID=""
}

# ---------------------------------------------------------------- the node
# Why vendor "lenovo": in Ironic 39.0.0 the fake management interface supports only the PXE
# boot device, so the prepare_instance_boot deploy step fails with "Invalid boot device disk
# specified" after install_bootloader. agent.set_boot_to_disk() skips setting the boot device
# for Lenovo nodes in UEFI mode (Ironic bug 2053064); nothing else in the flow changes.
log "creating node + port"
NODE_JSON=$(jq -cn '{name: "harness-node", driver: "fake-hardware",
	deploy_interface: "direct", boot_interface: "fake", power_interface: "fake",
	management_interface: "fake", network_interface: "noop", inspect_interface: "agent",
	properties: {cpu_arch: "x86_64", cpus: 2, memory_mb: 2048, local_gb: 1,
	             capabilities: "boot_mode:uefi", vendor: "lenovo"}}')
if [[ "$MODE" == inspect || "$MODE" == all ]]; then
	# Inspection's architecture hook must fill it in.
	NODE_JSON=$(jq -c 'del(.properties.cpu_arch)' <<<"$NODE_JSON")
fi
if [[ "$ROOT_DEVICE_HINT" == 1 ]]; then
	NODE_JSON=$(jq -c --arg d "$LOOPDEV" '.properties.root_device = {name: $d}' <<<"$NODE_JSON")
fi
NODE=$(api POST /v1/nodes "$NODE_JSON" | jq -r .uuid)
api POST /v1/ports "$(jq -cn --arg n "$NODE" --arg m "$MAC" '{node_uuid: $n, address: $m}')" >/dev/null
log "node $NODE"

provision manage
wait_state manageable 60 "enroll" "error"

T_INSPECT=""
if [[ "$MODE" == inspect || "$MODE" == all ]]; then
	# The "machine" inspected is the sysfs/procfs fixture of a two-socket server (NICs eno1,
	# eno2, bond0, a VLAN, InfiniBand; NVMe and SATA disks): the agent reads it with
	# --sys-root. Ironic finds the node by a port MAC among the inventory's interfaces (eno1);
	# BOOTIF names eno2, for which the ports hook must create a port.
	FIXTURE=$ROOT/hardware/tests/fixtures/server
	ENO1=3c:fd:fe:aa:bb:01 ENO2=3c:fd:fe:aa:bb:02
	api POST /v1/ports "$(jq -cn --arg n "$NODE" --arg m "$ENO1" '{node_uuid: $n, address: $m}')" >/dev/null
	log "inspect (agent inspection, callback $API/v1/continue_inspection)"
	t=$(date +%s.%N)
	provision inspect
	# Ironic "powers the machine on" once it is waiting for the ramdisk; earlier, the lookup
	# of continue_inspection refuses a node that is still 'inspecting'.
	wait_state "inspect wait" 60 "inspect failed" "error"
	start_agent inspect "BOOTIF=01-${ENO2//:/-} ipa-debug=1 ipa-inspection-callback-url=$API/v1/continue_inspection" \
		--sys-root "$FIXTURE"
	wait_state manageable "$STEP_TIMEOUT" "inspect failed" "error"
	T_INSPECT=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
	stop_agent
	# The same machine and kernel command line, read by the agent outside Ironic.
	"$FERRIC_AGENT" inventory --sys-root "$FIXTURE" --cmdline-file "$WORK/cmdline" \
		>"$WORK/inventory-agent.json" ||
		die "ferric-agent inventory failed"
	api GET "/v1/nodes/$NODE/inventory" >"$WORK/inventory-ironic.json" ||
		die "Ironic stored no inventory"
	api GET "/v1/ports?node=$NODE&detail=true" >"$WORK/ports.json"
	NODE_AFTER=$(api GET "/v1/nodes/$NODE")
	"$IRONIC_BIN/python" "$HERE/harness.py" verify-inspect "$WORK/inventory-agent.json" \
		"$WORK/inventory-ironic.json" "$WORK/ports.json" "$ENO2" <(echo "$NODE_AFTER") ||
		die "inspection did not store what the agent sent"
	log "INSPECT OK: manageable after ${T_INSPECT}s; inventory stored as sent, port for BOOTIF created, cpu_arch set"
fi

T_CLEAN=""
if [[ "$MODE" == inspect ]]; then
	:
elif [[ "$CLEAN_STEPS" != off ]]; then
	log "provide with automated cleaning ($CLEAN_STEPS)"
	t=$(date +%s.%N)
	provision provide
	start_agent clean
	wait_state available "$STEP_TIMEOUT" "clean failed" "error"
	T_CLEAN=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
	stop_agent # Ironic powered the node off; the fake power interface did not.
	python3 "$HERE/harness.py" verify-clean "$LOOPDEV" "$CLEAN_STEPS" "$IMG_SIZE" ||
		die "the disk was not erased as the clean steps promise"
	log "CLEAN OK: available after ${T_CLEAN}s; disk erased ($CLEAN_STEPS)"
else
	provision provide
	wait_state available 60 "clean failed" "error"
fi

T_DEPLOY=""
if [[ "$MODE" == deploy || "$MODE" == all ]]; then
	IMG_URL=http://127.0.0.1:$IMG_PORT/disk.raw
	api PATCH "/v1/nodes/$NODE" "$(jq -cn --arg u "$IMG_URL" --arg h "$IMG_SHA256" '[
		{op: "add", path: "/instance_info/image_source", value: $u},
		{op: "add", path: "/instance_info/image_os_hash_algo", value: "sha256"},
		{op: "add", path: "/instance_info/image_os_hash_value", value: $h},
		{op: "add", path: "/instance_info/image_disk_format", value: "raw"}]')" >/dev/null
	VALIDATE=$(api GET "/v1/nodes/$NODE/validate")
	jq -e '.deploy.result and .power.result and .boot.result' >/dev/null <<<"$VALIDATE" ||
		die "node does not validate: $VALIDATE"
	CONFIGDRIVE_JSON=$(jq -cn '{meta_data: {uuid: "harness-instance", hostname: "ferric-test",
		name: "ferric-test", public_keys: {k: "ssh-ed25519 AAAAferric harness"}},
		user_data: "#cloud-config\nfinal_message: ferric\n"}')
	log "deploy $IMG_URL (sha256 $IMG_SHA256) $( ((CONFIGDRIVE)) && echo with || echo without) a config drive"
	t=$(date +%s.%N)
	if [[ "$CONFIGDRIVE" == 1 ]]; then
		provision active "$(jq -cn --argjson c "$CONFIGDRIVE_JSON" '{configdrive: $c}')"
	else
		provision active
	fi
	start_agent deploy
	wait_state active "$STEP_TIMEOUT" "deploy failed" "error"
	T_DEPLOY=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
	# --power-action exit: standby.power_off must have ended the agent.
	for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$AGENT_PID" 2>/dev/null; then
		log "WARNING: the agent is still running after 'active' (no standby.power_off seen?)"
	fi
	stop_agent
	"$IRONIC_BIN/python" "$HERE/harness.py" verify-deploy "$LOOPDEV" "$WORK/images/disk.raw" "$CONFIGDRIVE" ||
		die "the disk does not hold the image + config drive"
	log "DEPLOY OK: active after ${T_DEPLOY}s; image bytes$( ((CONFIGDRIVE)) && echo " and config-2 partition") verified"
fi

echo
echo "==== real-ironic $MODE: PASS"
echo "ironic $IRONIC_VERSION ($(curl -fsS "$API/" | jq -r .default_version.version)), require_tls=$IRONIC_REQUIRE_TLS, clean=$CLEAN_STEPS"
echo "agent: $FERRIC_AGENT"
((T_INSTALL > 0)) && echo "ironic install: ${T_INSTALL}s"
echo "ironic API ready at: $T_READY"
[[ -n "$T_INSPECT" ]] && echo "manage→inspect→manageable (agent inspection): ${T_INSPECT}s"
[[ -n "$T_CLEAN" ]] && echo "manage→provide→available (cleaning): ${T_CLEAN}s"
[[ -n "$T_DEPLOY" ]] && echo "deploy→active: ${T_DEPLOY}s"
echo "total: $(elapsed)"
