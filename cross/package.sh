#!/usr/bin/env bash
# Packages a built `glimpse` as a .deb and a tarball, with the default model, the systemd
# unit and the default config:
#
#   cross/package.sh [aarch64|armv7|x86_64|all]     (default: all that are built)
#
# Reads target/<triple>/release/glimpse (cross/build.sh; x86_64: cargo build --release),
# writes target/packages/glimpse_<version>_<debian arch>.deb and
# target/packages/glimpse-<version>-<triple>.tar.gz. Uses dpkg-deb only (no cargo-deb to
# build first). Installs:
#   /usr/bin/glimpse
#   /usr/share/glimpse/models/efficientnet-lite0.onnx   (found there by default)
#   /lib/systemd/system/glimpse.service                 (not enabled by the package)
#   /etc/glimpse/glimpse.toml                           (a conffile: local edits are kept)
#   /usr/share/doc/glimpse/                             (README, model cards, token and MQTT drop-ins)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/targets.sh

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out=target/packages
mkdir -p "$out"

which=("${1:-all}")
[ "${which[0]}" = all ] && which=(aarch64 armv7 x86_64)

for arch in "${which[@]}"; do
  target "$arch"
  triple=$TRIPLE deb=$DEB bin=target/$TRIPLE/release/glimpse
  [ "$arch" = x86_64 ] && bin=${GLIMPSE_HOST_BIN:-target/release/glimpse}
  if [ ! -x "$bin" ]; then
    [ "${1:-all}" = all ] && { echo "skipping $arch: $bin is not built" >&2; continue; }
    echo "$bin is not built (cross/build.sh $arch)" >&2; exit 1
  fi
  # The newest glibc symbol version the binary needs is what the package depends on.
  glibc=$(newest_glibc "$bin")
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  root=$stage/root
  install -D -m 0755 "$bin" "$root/usr/bin/glimpse"
  # Cross builds are stripped by cross/build.sh; a host release build is not.
  [ "$arch" = x86_64 ] && strip "$root/usr/bin/glimpse"
  install -D -m 0644 models/efficientnet-lite0.onnx "$root/usr/share/glimpse/models/efficientnet-lite0.onnx"
  install -D -m 0644 cross/packaging/glimpse.service "$root/lib/systemd/system/glimpse.service"
  install -D -m 0644 cross/packaging/glimpse.toml "$root/etc/glimpse/glimpse.toml"
  install -D -m 0644 README.md "$root/usr/share/doc/glimpse/README.md"
  install -D -m 0644 models/README.md "$root/usr/share/doc/glimpse/MODELS.md"
  install -D -m 0644 cross/packaging/token-credential.conf "$root/usr/share/doc/glimpse/token-credential.conf"
  install -D -m 0644 cross/packaging/mqtt-credential.conf "$root/usr/share/doc/glimpse/mqtt-credential.conf"
  install -D -m 0644 cross/packaging/webhook-credential.conf "$root/usr/share/doc/glimpse/webhook-credential.conf"
  printf 'glimpse is licensed under the Apache License 2.0 (/usr/share/common-licenses/Apache-2.0).\nThe EfficientNet-Lite0 weights: see MODELS.md.\nThis software is based in part on the work of the Independent JPEG Group (the jpeg-encoder crate, under the IJG license).\n' \
    > "$root/usr/share/doc/glimpse/copyright"

  # Tarball: the same tree, for systems without dpkg.
  tarball=$out/glimpse-$version-$triple.tar.gz
  tar -C "$root" --owner=0 --group=0 -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"

  mkdir -p "$root/DEBIAN"
  size=$(du -sk "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<CONTROL
Package: glimpse
Version: $version
Architecture: $deb
Maintainer: glimpse developers <glimpse@example.invalid>
Installed-Size: $size
Depends: libc6 (>= $glibc)
Recommends: systemd, ca-certificates
Section: science
Priority: optional
Description: image classifier for CPU-only boards: files, cameras, HTTP daemon
 glimpse runs self-describing ONNX image classifiers on the CPU with tract:
 'glimpse classify' for files and folders, 'glimpse camera' for V4L2 cameras,
 'glimpse serve' for an HTTP API with metrics, MQTT and hot model reload
 (systemd unit included, not enabled: systemctl enable --now glimpse).
 Ships the EfficientNet-Lite0 ImageNet model.
CONTROL
  echo /etc/glimpse/glimpse.toml > "$root/DEBIAN/conffiles"
  cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  # Restart only if the administrator enabled and started it.
  if systemctl is-active --quiet glimpse.service; then systemctl try-restart glimpse.service || true; fi
fi
exit 0
POSTINST
  cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop glimpse.service >/dev/null 2>&1 || true
fi
exit 0
PRERM
  chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
  debfile=$out/glimpse_${version}_$deb.deb
  dpkg-deb --root-owner-group -Zxz --build "$root" "$debfile.tmp" >/dev/null
  mv "$debfile.tmp" "$debfile"
  rm -rf "$stage"
  trap - EXIT
  echo "$debfile ($(stat -c %s "$debfile") bytes, needs glibc >= $glibc)"
  echo "$tarball ($(stat -c %s "$tarball") bytes)"
done
