# Sourced by tests/setup.sh and tests/run.sh: is each build or test prerequisite there,
# decided by the very thing its consumer uses (a package's files can exist without the
# one that is loaded: the machine image ships libclang-cpp14, whose libclang-cpp.so.14 is
# not the libclang bindgen loads).

# The libclang shared library that bindgen (clang-sys) would load, printed; fails when
# there is none. Same directories and names as clang-sys searches: $LIBCLANG_PATH, the
# LLVM install dirs and the system library dirs; libclang.so, libclang-N.so,
# libclang.so.N, libclang-N.so.N (never libclang-cpp).
libclang_lib() {
  local multiarch dir f
  multiarch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
  for dir in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib "/usr/lib/$multiarch" /usr/lib /usr/local/lib; do
    for f in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so "$dir"/libclang.so.[0-9]* "$dir"/libclang-[0-9]*.so.[0-9]*; do
      [ -f "$f" ] && { echo "$f"; return 0; }
    done
  done
  return 1
}

# bindgen needs clang's own headers too (stddef.h, from the resource dir that
# libclang-common-N-dev installs): a libclang without them fails on the first #include.
libclang_usable() {
  libclang_lib >/dev/null && compgen -G '/usr/lib/llvm-*/lib/clang/*/include/stddef.h' >/dev/null
}
