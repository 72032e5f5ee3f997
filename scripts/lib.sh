# Shared by scripts/*.sh: install what a fresh Debian machine lacks.

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Debian packages the build, the tests and the demo use. g++: libfuzzer-sys compiles
# libFuzzer's C++ runtime (clippy on fuzz/ and scripts/fuzz.sh).
PACKAGES=(util-linux fdisk gdisk mtools ovmf iproute2 genisoimage qemu-utils qemu-system-x86 busybox-static xz-utils cpio e2fsprogs xfsprogs btrfs-progs dosfstools lvm2 cryptsetup-bin musl-tools python3-venv openssl g++)

# Install the Debian packages given (default: all of PACKAGES) that are missing.
ensure_packages() {
  local want=("$@") missing=()
  [ ${#want[@]} -gt 0 ] || want=("${PACKAGES[@]}")
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
      return 1
    fi
    step "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_rust_targets() {
  if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    step "rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
  fi
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
}

# fuzz/ is a workspace of its own; resolve it with the main Cargo.lock, so clippy and the
# fuzz targets build the dependency versions the agent ships with.
seed_fuzz_lock() {
  if [ ! -f fuzz/Cargo.lock ] && [ -f Cargo.lock ]; then
    cp Cargo.lock fuzz/Cargo.lock
  fi
}
