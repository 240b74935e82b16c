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

# The GPU training test (`glimpse-train --device gpu`) runs on whatever Vulkan adapter
# wgpu finds, which on these CPU-only machines is Mesa's software one (lavapipe). Checked
# the way wgpu finds it: the Vulkan loader (libvulkan.so.1) creates an instance and
# lists at least one physical device, whose count is printed.
vulkan_usable() {
  /usr/bin/python3 - <<'PY'
import ctypes, sys
try:
    vk = ctypes.CDLL("libvulkan.so.1")
except OSError as e:
    sys.exit(f"no Vulkan loader: {e}")
class CreateInfo(ctypes.Structure):  # VkInstanceCreateInfo, nothing enabled
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.c_void_p), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]
info, instance = CreateInfo(sType=1), ctypes.c_void_p()
if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
    sys.exit("vkCreateInstance failed (no Vulkan driver)")
count = ctypes.c_uint32()
vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
vk.vkDestroyInstance(instance, None)
print(count.value)
sys.exit(0 if count.value > 0 else "no Vulkan physical device")
PY
}
