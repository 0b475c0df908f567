#!/usr/bin/env bash
# den's whole test suite. The AWS backend's tests run against moto, a local
# AWS emulator: this installs it once into a virtualenv, starts it on
# 127.0.0.1, runs `cargo test` with every feature, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.2.5
VENV=${DEN_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/den/moto-$MOTO_VERSION}
if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "== installing moto $MOTO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi

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
