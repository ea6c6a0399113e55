#!/usr/bin/env bash
# Every test of switchyard: the Rust unit and integration tests (real binary, real sled, fake
# providers on loopback), then the Python tests that drive the gateway with the official
# `openai` and `anthropic` SDKs, in a virtualenv this script makes (.venv, or $SWITCHYARD_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${CI:-}" = "true" ]; then
  # A clean clone builds everything once: incremental state would only take disk.
  export CARGO_INCREMENTAL=0
fi
# Packaging (systemd unit, .deb) needs a release build: run in CI, or when asked.
if [ "${CI:-}" = "true" ] || [ "${SWITCHYARD_PACKAGING:-}" = "1" ]; then
  tests/packaging.sh
fi
# Builds the binary the integration and Python tests start (target/debug/switchyard) with the
# same dependency features as the tests, so the dependencies are built once, not twice.
cargo test --no-fail-fast

venv="${SWITCHYARD_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
SWITCHYARD_BIN="$PWD/target/debug/switchyard" "$venv/bin/python" -m pytest -q tests/python
