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

# The official Python runtime interface client (awslambdaric >= 4), unmodified, in a venv of its own under the
# repository's .cache/ (gitignored): tests run it as a provided.al2023 bootstrap with LMI_RIC_PYTHON pointing at
# this interpreter. Reinstalled only when missing or older than 4.
RIC_VENV="$(cd "$(dirname "$0")/.." && pwd)/.cache/python-ric"
ric_ok() {
  "$RIC_VENV/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as m, awslambdaric.__main__  # noqa: F401
assert int(m.version("awslambdaric").split(".")[0]) >= 4
PY
}
if ! ric_ok; then
  rm -rf "$RIC_VENV"
  "$(command -v python3.11 || command -v python3)" -m venv "$RIC_VENV"
  "$RIC_VENV/bin/python" -m pip install -q 'awslambdaric>=4,<5'
  ric_ok || { echo "setup: awslambdaric did not install into $RIC_VENV" >&2; exit 1; }
fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
echo "setup: ok"
