# Cross build for aarch64 Linux (Grace, GH200 hosts) with Debian's cross compiler
# (g++-aarch64-linux-gnu), against arm64 libraries installed as multiarch packages under
# /usr/lib/aarch64-linux-gnu (dpkg --add-architecture arm64). deploy/cross-aarch64.sh installs
# both and configures with this file.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Package configs (absl, GTest) and libraries come from lib/aarch64-linux-gnu, never the build
# machine's lib/x86_64-linux-gnu.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# ctest runs every test binary under qemu-user. The multiarch libc6:arm64 puts the aarch64
# dynamic loader at /lib/ld-linux-aarch64.so.1 and the shared libraries where it looks, so
# qemu needs no -L prefix.
find_program(TESSERA_QEMU_AARCH64 qemu-aarch64 REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${TESSERA_QEMU_AARCH64})
