#!/usr/bin/env bash
# The cheap check of the cross setup that CI runs (a few minutes, against the ~25 of full
# cross builds): installs the toolchain (cross/install-toolchain.sh), builds
# cross/smoke for aarch64 and armv7 with the linkers of .cargo/config.toml and with zig
# against glibc 2.17 (what cross/build.sh ships), runs them under qemu, and packages the
# host build as a .deb whose contents are checked. The full build and verification:
# cross/build.sh && cross/verify.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. cross/targets.sh

bash cross/install-toolchain.sh
for f in cross/*.sh; do bash -n "$f"; done

# Every crate build.sh keeps at opt-level 3 is still in the board binary's dependencies.
deps=$(cargo tree -p glimpse-runtime --features camera --target aarch64-unknown-linux-gnu \
  -e normal --prefix none | sed 's/ .*//' | sort -u)
for crate in "${HOT_CRATES[@]}"; do
  grep -qx "$crate" <<<"$deps" || { echo "HOT_CRATES: $crate is not a dependency of glimpse any more" >&2; exit 1; }
done

# The smoke program's output for the current target (what `target` set), with its label.
smoke_ok() {
  local want=aarch64
  [ "$TRIPLE" = armv7-unknown-linux-gnueabihf ] && want=arm
  echo "$1: $2"
  [[ "$2" == "glimpse-cross-smoke: $want ok"* ]] || { echo "$1: unexpected output: $2" >&2; exit 1; }
}

cd cross/smoke
for arch in aarch64 armv7; do
  target "$arch"
  env "${BOOTSTRAP[@]}" cargo +debian build --quiet --release --target "$TRIPLE" "${STD_ARGS[@]}"
  # The timeout catches a program hanging under qemu (see QEMU_PREFIX in targets.sh).
  out=$(QEMU_LD_PREFIX=$QEMU_PREFIX env "${BOOTSTRAP[@]}" timeout 60 \
    cargo +debian run --quiet --release --target "$TRIPLE" "${STD_ARGS[@]}")
  smoke_ok "$TRIPLE" "$out"
done
# The route cross/build.sh ships with: zig linking against glibc $GLIBC. The binaries must
# need nothing newer, and still run.
zig_ready
[ "$ZIG" = 1 ] || { echo "zig/cargo-zigbuild missing after install-toolchain.sh" >&2; exit 1; }
for arch in aarch64 armv7; do
  target "$arch"
  env "${BOOTSTRAP[@]}" cargo +debian zigbuild --quiet --release --target "$TRIPLE.$GLIBC" "${STD_ARGS[@]}"
  bin=${CARGO_TARGET_DIR:-target}/$TRIPLE/release/glimpse-cross-smoke
  need=$(newest_glibc "$bin")
  newest=$(printf '%s\n' "$need" "$GLIBC" | sort -V | tail -1)
  [ "$newest" = "$GLIBC" ] || { echo "$TRIPLE.$GLIBC: the binary needs glibc $need" >&2; exit 1; }
  out=$(QEMU_LD_PREFIX=$QEMU_PREFIX timeout 60 "${QEMU[@]}" "$bin")
  smoke_ok "$TRIPLE.$GLIBC (zig, needs glibc $need)" "$out"
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
# Listed into a variable first: `grep -q` stopping at the first match would make tar's
# next write fail with SIGPIPE, which pipefail turns into a failed check.
control=$(dpkg-deb --ctrl-tarfile "$deb" | tar -tf -)
grep -q conffiles <<<"$control"
# The packaged binary finds the packaged model where it is installed.
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
dpkg-deb -x "$deb" "$stage"
label=$(env -u GLIMPSE_MODEL "$stage/usr/bin/glimpse" classify samples/coffee.png -f json -k 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["label"])')
[ "$label" = espresso ] || { echo "packaged glimpse says $label for coffee.png" >&2; exit 1; }
echo "cross check passed: smoke binaries (gcc, and zig against glibc $GLIBC) ran under qemu for aarch64 and armv7; $deb is complete"
