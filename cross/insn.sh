# Sourced by the instruction-count scripts: qemu-user with its "insn" TCG plugin, installed
# and built on demand, and one counted run that fails loudly instead of printing a zero.
#
#   insn_ready            installs qemu-user (the dynamically linked qemu-aarch64/qemu-arm:
#                         the -static build cannot load plugins) and libglib, and builds the
#                         plugin from Debian's source of the installed qemu when missing;
#                         sets QEMU_PLUGIN
#   insn_count QEMU CPU CMD...
#                         runs CMD under qemu-user QEMU (qemu-aarch64, qemu-arm) on CPU with
#                         the plugin and prints the guest instructions it executed; fails
#                         when the run fails or counts nothing
#
# The plugin's inline counter is one plain 64-bit add shared by every guest thread, so a
# counted program must run one thread at a time (threads running at once lose counts).

. "$(dirname "${BASH_SOURCE[0]}")/targets.sh"
INSN_DIR="${GLIMPSE_QEMU_PLUGIN_DIR:-$HOME/.cache/glimpse-qemu-plugin}"

insn_say() { printf '[insn] %s\n' "$*" >&2; }
insn_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  insn_say "needs root or sudo to run: $*"; return 1; fi; }

# Debian's source package of the installed qemu-user into the current folder, through an
# apt configuration of its own: the deb-src twins of the system's deb sources, so that
# neither a deb-src entry in /etc/apt nor the system's package lists are needed or touched.
insn_qemu_source() {
  local version="$1" apt_dir="$2" f
  mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial"
  : > "$apt_dir/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -n 's/^deb \(.*\)/deb-src \1/p' "$f" >> "$apt_dir/sources.list"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed 's/^Types:.*/Types: deb-src/' "$f" > "$apt_dir/parts/$(basename "$f")"
  done
  local apt=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
             -o "Dir::State::Lists=$apt_dir/lists" -o APT::Sandbox::User=root)
  apt-get "${apt[@]}" update -qq || insn_say "apt-get update (deb-src) reported errors; going on"
  apt-get "${apt[@]}" source --download-only -qq "qemu=$version"
}

insn_build_plugin() { # plugin-path qemu-source-version
  local plugin="$1" version="$2" work
  work=$(mktemp -d)
  insn_say "building the insn plugin from Debian's qemu $version source (a ~120 MB download)"
  ( cd "$work" && insn_qemu_source "$version" "$work/apt" \
    && tar xf qemu_*.orig.tar.* --wildcards '*/include/qemu/qemu-plugin.h' '*/tests/plugin/insn.c' \
    && src=$(ls -d qemu-*/ | head -1) \
    && gcc -shared -fPIC -O2 $(pkg-config --cflags glib-2.0) -I"$src/include/qemu" \
         -o "$plugin.tmp" "$src/tests/plugin/insn.c" $(pkg-config --libs glib-2.0) \
    && mv "$plugin.tmp" "$plugin" )
  local rc=$?
  rm -rf "$work"
  return $rc
}

insn_ready() {
  local pkgs=() p
  for p in qemu-user libglib2.0-dev pkg-config dpkg-dev xz-utils; do deb_installed "$p" || pkgs+=("$p"); done
  if [ ${#pkgs[@]} -gt 0 ]; then
    insn_say "installing ${pkgs[*]}"
    insn_sudo apt-get update -qq || insn_say "apt-get update reported errors; going on"
    DEBIAN_FRONTEND=noninteractive insn_sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  # The plugin API must be the installed qemu's: one plugin per qemu source version.
  local version
  version=$(dpkg-query -W -f='${source:Version}' qemu-user)
  QEMU_PLUGIN="$INSN_DIR/libinsn-${version//[:+~]/_}.so"
  mkdir -p "$INSN_DIR"
  [ -f "$QEMU_PLUGIN" ] || insn_build_plugin "$QEMU_PLUGIN" "$version" \
    || { insn_say "could not build the insn plugin for qemu $version"; return 1; }
}

insn_count() { # qemu cpu cmd...
  local qemu="$1" cpu="$2" log n
  shift 2
  log=$(mktemp)
  if ! "$qemu" -cpu "$cpu" -plugin "$QEMU_PLUGIN,inline=on" -d plugin -D "$log" "$@" >/dev/null; then
    insn_say "failed under $qemu -cpu $cpu: $*"
    rm -f "$log"; return 1
  fi
  n=$(sed -n 's/^insns: //p' "$log")
  rm -f "$log"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || { insn_say "the plugin counted nothing (got '$n') for: $*"; return 1; }
  echo "$n"
}
