#!/usr/bin/env bash
# Where the bytes of a glimpse binary are: its largest sections, and its named code per
# group (tract, rayon, std, images, daemon, glimpse, other) and per crate. Needs the
# symbols: `GLIMPSE_STRIP=false bash cross/build.sh aarch64`, then strip the binary
# (aarch64-linux-gnu-strip) before shipping it.
#
# usage: cross/size.sh BINARY [N]     (N: crates to list, default 20)
#
# A generic function counts for the crate that defines it, wherever it is instantiated
# (ndarray's Zip::for_each instantiated by tract-core counts for ndarray).
set -euo pipefail
bin=${1:?usage: cross/size.sh BINARY [N]}
syms=$(nm -S --size-sort "$bin" 2>/dev/null | awk 'NF == 4 {print $2 "\t" $4}')
[ -n "$syms" ] || { echo "$bin: no symbols (stripped?); build with GLIMPSE_STRIP=false" >&2; exit 1; }
echo "$bin: $(stat -c %s "$bin") bytes"
size -A "$bin" | awk '$2 ~ /^[0-9]+$/ && $1 != "Total" && $1 !~ /^\.(debug|symtab|strtab)/ {printf "  %-20s %6.2f MB\n", $1, $2 / 1e6}' |
  sort -k2 -rn | head -6
# c++filt reads Rust's legacy mangling; one pass over all names.
paste <(cut -f1 <<<"$syms") <(cut -f2 <<<"$syms" | c++filt) | python3 -c '
import collections, re, sys
top = int(sys.argv[1])
groups = [
    ("tract and its dependencies", r"tract_|ndarray$|rustfft$|smallvec$|num_|primal_check$|transpose$|strength_reduce$|matrixmultiply$|half$|dyn_clone$|downcast_rs$|dyn_hash$|erased_serde$|string_interner$|itertools$|anymap3$|nom|maplit$|bit_set$|bit_vec$|fixedbitset$|rand|libm$|metrics$|inventory$|tar$|flate2$|miniz_oxide$|prost"),
    ("rayon (tract intra-op threads)", r"rayon|crossbeam_"),
    ("std, core, alloc (generics included)", r"(core|alloc|std|hashbrown|compiler_builtins|gimli|addr2line|rustc_demangle|object|memchr|\?)$"),
    ("image decoding and resizing", r"image|zune_|png$|fdeflate$|gif$|weezl$|fast_image_resize$|moxcms$|pxfm$|bytemuck$|simd_adler32$|crc32fast$|adler2$|color_quant$|byteorder"),
    ("HTTP daemon, MQTT, metrics", r"tokio|axum|hyper|http|matchit$|multer$|rumqttc$|prometheus_client$|tower|futures_|mio$|socket2$|flume$|serde_urlencoded$|form_urlencoded$|percent_encoding$|sd_notify$|subtle$|mime$|encoding_rs$|bytes$|slab$|sync_wrapper$|serde_path_to_error$|spin$"),
    ("glimpse", r"glimpse"),
]
crates = collections.Counter()
for line in sys.stdin:
    size, _, name = line.rstrip("\n").partition("\t")
    name = re.sub(r"(mut |const |dyn )", "", name.lstrip("<&*"))
    m = re.match(r"([A-Za-z0-9_]+)::", name)
    crates[m.group(1) if m else "?"] += int(size, 16)
per_group = collections.Counter()
for crate, n in crates.items():
    g = next((g for g, pat in groups if re.match(pat, crate)), "other (CLI, config, logs, camera)")
    per_group[g] += n
print(f"named code: {sum(crates.values()) / 1e6:.2f} MB")
for g, n in per_group.most_common():
    print(f"  {g:40s} {n / 1e6:6.2f} MB")
print(f"largest {top} crates:")
for c, n in crates.most_common(top):
    print(f"  {c:40s} {n / 1e6:6.2f} MB")
' "${2:-20}"
