#!/usr/bin/env bash
# Builds den's AWS Lambda package without Docker: den compiled for Amazon
# Linux 2023 (glibc 2.34) with cargo-zigbuild, renamed `bootstrap`, zipped
# with the persona and campaign-template folders beside it.
#
#   scripts/build-lambda.sh [x86_64|arm64] [FILE_OR_FOLDER...]
#
# writes target/lambda/<arch>/den-lambda.zip, and `bootstrap` beside it (under $CARGO_TARGET_DIR if set). Extra arguments are added to
# the zip's root (a den.toml, your own persona folder); by default the
# `personas` and `campaign-templates` folders of the current directory are.
set -euo pipefail

ARCH=${1:-x86_64}
shift || true
case "$ARCH" in
  x86_64) TRIPLE=x86_64-unknown-linux-gnu ;;
  arm64) TRIPLE=aarch64-unknown-linux-gnu ;;
  *) echo "usage: $0 [x86_64|arm64] [FILE_OR_FOLDER...]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
INCLUDE=("$@")
if [ ${#INCLUDE[@]} -eq 0 ]; then
  for d in personas campaign-templates; do [ -e "$d" ] && INCLUDE+=("$d"); done
fi

# zig (the linker for glibc 2.34) and cargo-zigbuild come from PyPI, once.
VENV=${DEN_ZIG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/den/zig}
if [ ! -x "$VENV/bin/cargo-zigbuild" ] || ! "$VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
  echo "== installing zig and cargo-zigbuild into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'ziglang==0.17.1' 'cargo-zigbuild==0.24.1'
fi
# The compiler needs the target's standard library: rustup's, or where rustup
# cannot download it, a rustc that ships it, chosen with RUSTC (on Debian 12:
# rustc-web with libstd-rust-web-dev:arm64, RUSTC=/usr/bin/rustc).
has_std() { [ -d "$("$1" --print sysroot)/lib/rustlib/$TRIPLE/lib" ]; }
if [ -n "${RUSTC:-}" ]; then
  has_std "$RUSTC" || { echo "error: $RUSTC has no standard library for $TRIPLE" >&2; exit 1; }
elif ! rustup target list --installed | grep -qx "$TRIPLE" && ! rustup target add "$TRIPLE"; then
  echo "error: the Rust standard library for $TRIPLE is missing and rustup could not fetch it;" >&2
  echo "  set RUSTC to a compiler that has it (on Debian 12: dpkg --add-architecture arm64 && apt-get update &&" >&2
  echo "  apt-get install rustc-web libstd-rust-web-dev:arm64, then RUSTC=/usr/bin/rustc $0 $ARCH)" >&2
  exit 1
fi

echo "== building den for $TRIPLE (glibc 2.34) with $(${RUSTC:-rustc} -V)"
(cd "$ROOT" && PATH="$VENV/bin:$PATH" cargo zigbuild --locked --profile lambda -p den --features aws \
  --target "$TRIPLE.2.34")

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT="$TARGET/lambda/$ARCH"
mkdir -p "$OUT"
cp "$TARGET/$TRIPLE/lambda/den" "$OUT/bootstrap"
"$VENV/bin/python" - "$TARGET/$TRIPLE/lambda/den" "$OUT/den-lambda.zip" "${INCLUDE[@]}" <<'PY'
import os, sys, zipfile
binary, out, *extra = sys.argv[1:]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    info = zipfile.ZipInfo("bootstrap")
    info.external_attr = 0o100755 << 16  # a regular file Lambda may execute
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(binary, "rb") as f:
        z.writestr(info, f.read())
    for path in extra:
        if os.path.isdir(path):
            parent = os.path.dirname(os.path.abspath(path))
            for folder, _, files in os.walk(os.path.abspath(path)):
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    z.write(full, os.path.relpath(full, parent))
        else:
            z.write(path, os.path.basename(path))
print(f"{out}: {os.path.getsize(out) / 1e6:.1f} MB (bootstrap {os.path.getsize(binary) / 1e6:.1f} MB unpacked)")
PY
