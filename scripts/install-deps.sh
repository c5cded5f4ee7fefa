#!/usr/bin/env bash
# Installs the Debian packages Miresga needs, only those missing, so running it twice is cheap.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool nginx haproxy wrk apache2-utils curl iproute2 nftables tcpdump ethtool procps psmisc iputils-ping python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged nginx/haproxy services are not ours: the testbed starts its own instances.
for svc in nginx haproxy; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
done
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
