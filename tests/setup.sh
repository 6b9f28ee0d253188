#!/usr/bin/env bash
# Installs what the tests need and the machine may lack. Safe to run again: each step checks first.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if ! have apt-get; then
    echo "setup: $* missing and apt-get is not available; install it by hand" >&2
    return 1
  fi
  if [ ! -f /var/lib/apt/lists/.lmi-updated ] ; then
    apt-get update -qq && touch /var/lib/apt/lists/.lmi-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have cargo || { echo "setup: cargo is required (rustup)" >&2; exit 1; }
have python3 || apt_install python3
have curl || apt_install curl
# The sandbox's network isolation: veth pairs and addresses (iproute2), NAT for egress (nftables).
have ip || apt_install iproute2
have nft || apt_install nftables
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install -q pytest
python3 -c "import prometheus_client" >/dev/null 2>&1 || python3 -m pip install -q prometheus_client
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
echo "setup: ok"
