#!/usr/bin/env bash
# Proves the test setup on a bare machine: a Debian 12 minbase root made here with
# debootstrap, holding only what a new machine of this project's kind has (gcc, Python 3
# with pip, git, and the image's libclang-cpp14, whose library is not the libclang bindgen
# loads), the Rust toolchain bind-mounted read-only, and a copy of this working tree. In it:
#
#   default    tests/setup.sh, the prerequisite check tests/run.sh makes before building,
#              ffmpeg and the RTSP server script's own check (tests/rtsp-server.py),
#              chromium rendering a page and the browser test's own check
#              (tests/web-browser.py), a Vulkan adapter for the GPU training test
#              (tests/prereqs.sh vulkan_usable),
#              then a debug build of glimpse with the V4L2 camera code (bindgen + libclang:
#              what failed on a fresh machine before setup.sh looked for the library
#              bindgen loads; ~10 min) and one classification with it
#   --readme   the README's two commands as written: `cargo run --release -p
#              glimpse-runtime -- classify samples/` and `bash tests/run.sh` (cold builds
#              of everything: about an hour on 2 cores)
#
# usage: bash tests/fresh-machine.sh [--readme]     (root; needs Debian's package mirror)
# env:   GLIMPSE_FRESH_ROOT (default /var/tmp/glimpse-fresh, removed and made anew)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
mode=${1:-setup}
root=${GLIMPSE_FRESH_ROOT:-/var/tmp/glimpse-fresh}
say() { printf '[fresh] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, chroot, mounts)"; exit 1; }
toolchain=$(rustc --print sysroot)
[ -x "$toolchain/bin/cargo" ] || { say "no cargo in $toolchain (rustup's active toolchain)"; exit 1; }
if [ "$(dpkg-query -W -f='${Status}' debootstrap 2>/dev/null)" != "install ok installed" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)

cleanup() {
  for m in "$root/opt/rust" "$root/proc" "$root/dev"; do mountpoint -q "$m" && umount -R -l "$m"; done
  return 0
}
trap cleanup EXIT
cleanup
# --one-file-system: never into a mount left behind (/dev above all).
rm -rf --one-file-system "$root"
say "debootstrap bookworm minbase into $root"
debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/opt/rust" "$root/work/glimpse"
mount --bind "$toolchain" "$root/opt/rust" && mount -o remount,bind,ro "$root/opt/rust"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
# The working tree as git sees it (tracked, and untracked files it does not ignore).
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$root/work/glimpse"

# The machine's own network settings go in as they are: the CA certificates it trusts
# (an egress proxy's, say) and the variables that point clients at them.
mkdir -p "$root/usr/local/share/ca-certificates"
cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
mapfile -t net_env < <(env | grep -E '^[A-Z_]*(CERT|CA_BUNDLE|CAINFO|SSL)[A-Z_]*=|^(https?|no)_proxy=|^(HTTPS?|NO)_PROXY=' || true)
run() { chroot "$root" env -i HOME=/root PATH=/opt/rust/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  GLIMPSE_REQUIRE_DATA=1 TERM=dumb "${net_env[@]}" bash -c "cd /work/glimpse && $1"; }
say "what a new machine of this kind has: gcc, python3 + pip, git, libclang-cpp14"
run 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  gcc libc6-dev python3 python3-pip git ca-certificates libclang-cpp14 >/dev/null && update-ca-certificates >/dev/null'
run 'ls /usr/lib/llvm-14/lib/libclang*'

case "$mode" in
  setup)
    run 'bash tests/setup.sh'
    run '. tests/prereqs.sh && libclang_usable && echo "libclang for bindgen: $(libclang_lib)"'
    # What the network-camera tests use: ffmpeg, and GStreamer's RTSP server from Python.
    run 'ffmpeg -hide_banner -version | head -1 && /usr/bin/python3 tests/rtsp-server.py --check && echo "RTSP server: ok"'
    # What the web page's test uses: chromium, chromedriver and selenium, and the browser
    # really rendering a page headless in this root.
    run '/usr/bin/python3 tests/web-browser.py --check && chromium --headless=new --no-sandbox --disable-gpu --dump-dom "data:text/html,<p id=x>rendered</p>" 2>/dev/null | grep -q "<p id=\"x\">rendered</p>" && echo "chromium, chromedriver, selenium: ok"'
    # What the GPU training test uses: a Vulkan adapter (lavapipe) through the loader.
    run '. tests/prereqs.sh && n=$(vulkan_usable) && echo "Vulkan adapters: $n"'
    # A debug build: the quickest build of the same code, bindgen and libclang included.
    run 'cargo build -p glimpse-runtime --features camera -j2 && target/debug/glimpse classify samples/coffee.png -k 1'
    say "passed: setup.sh installed what the camera build needs; glimpse built with the camera code and classified" ;;
  --readme)
    run 'cargo run --release -p glimpse-runtime -- classify samples/'
    run 'bash tests/run.sh'
    say "passed: the README's two commands on a bare Debian 12" ;;
  *) say "unknown mode $mode (expected nothing or --readme)"; exit 2 ;;
esac
