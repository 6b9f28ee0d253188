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
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install -q pytest
# boto3: the Invoke API test drives the agent with the AWS SDK for Python.
python3 -c "import boto3" >/dev/null 2>&1 || python3 -m pip install -q boto3
# Offline checks of the AMI recipes: HCL2 (Packer) and YAML (Image Builder) parsers.
python3 -c "import hcl2" >/dev/null 2>&1 || python3 -m pip install -q python-hcl2
python3 -c "import yaml" >/dev/null 2>&1 || python3 -m pip install -q pyyaml
# systemd-analyze verifies the unit (systemd need not be PID 1); rpm lists the .rpm's contents.
have systemd-analyze || apt_install systemd
have rpm || apt_install rpm
have dpkg-deb || apt_install dpkg
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
echo "setup: ok"
