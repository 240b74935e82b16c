#!/usr/bin/env bash
# The cheap check of the cross setup that CI runs (a few minutes, against the ~25 of full
# cross builds): installs the toolchain (cross/install-toolchain.sh), builds
# cross/smoke for aarch64 and armv7 with the linkers of .cargo/config.toml and runs it
# under their qemu runners, and packages the host build as a .deb whose contents are
# checked. The full build and verification: cross/build.sh && cross/verify.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bash cross/install-toolchain.sh
for f in cross/*.sh; do bash -n "$f"; done

cd cross/smoke
for triple in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  gnu=$( [ "$triple" = armv7-unknown-linux-gnueabihf ] && echo arm-linux-gnueabihf || echo aarch64-linux-gnu )
  extra=()
  if [ ! -d "/usr/lib/rustlib/$triple/lib" ]; then
    extra=(-Zbuild-std=std,panic_unwind)
    export RUSTC_BOOTSTRAP=1
  fi
  # armv7 takes its loader from the cross sysroot; aarch64 from the multiarch libc6:arm64
  # (qemu 7.2 with a prefix hangs multi-threaded aarch64 programs).
  prefix=$( [ "$triple" = armv7-unknown-linux-gnueabihf ] && echo "/usr/$gnu" || true )
  out=$(QEMU_LD_PREFIX=$prefix timeout 120 cargo +debian run --quiet --release --target "$triple" "${extra[@]}")
  unset RUSTC_BOOTSTRAP
  echo "$triple: $out"
  want=$( [ "$triple" = armv7-unknown-linux-gnueabihf ] && echo arm || echo aarch64 )
  [[ "$out" == "glimpse-cross-smoke: $want ok"* ]] || { echo "$triple: unexpected output: $out" >&2; exit 1; }
done
cd "$root"

# The package layout, from the host build the tests used.
host_bin=${CARGO_TARGET_DIR:-target}/release/glimpse
[ -x "$host_bin" ] || cargo build --release -p glimpse-runtime -j2
GLIMPSE_HOST_BIN=$host_bin bash cross/package.sh x86_64
deb=target/packages/glimpse_$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)_amd64.deb
listing=$(dpkg-deb -c "$deb")
for f in ./usr/bin/glimpse ./usr/share/glimpse/models/efficientnet-lite0.onnx \
         ./lib/systemd/system/glimpse.service ./etc/glimpse/glimpse.toml; do
  grep -q " $f\$" <<<"$listing" || { echo "$deb lacks $f" >&2; exit 1; }
done
[ "$(dpkg-deb -f "$deb" Architecture)" = amd64 ]
dpkg-deb --ctrl-tarfile "$deb" | tar -tf - | grep -q conffiles
# The packaged binary finds the packaged model where it is installed.
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
dpkg-deb -x "$deb" "$stage"
label=$(env -u GLIMPSE_MODEL "$stage/usr/bin/glimpse" classify samples/coffee.png -f json -k 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["label"])')
[ "$label" = espresso ] || { echo "packaged glimpse says $label for coffee.png" >&2; exit 1; }
echo "cross check passed: smoke binaries ran under qemu for aarch64 and armv7; $deb is complete"
