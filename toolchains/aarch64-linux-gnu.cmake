# Cross-compile for 64-bit ARM (Raspberry Pi 3/4/5 on a 64-bit OS).
# Libraries come from Debian's arm64 multiarch packages (toolchains/install-deps.sh).
# No global -march/-mcpu: Highway compiles NEON/SVE/SVE2 itself and picks one at
# run time (a global -march breaks its NEON target under GCC 12).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)

# ctest runs the tests under QEMU. The CPU model comes from the QEMU_CPU
# environment variable (qemu-user reads it): cortex-a72 = NEON as on a Pi 4,
# max = SVE/SVE2. No QEMU_LD_PREFIX: the arm64 multiarch libraries are found by
# the arm64 loader directly, and QEMU_LD_PREFIX makes threaded programs hang.
find_program(KVSKETCH_QEMU_AARCH64 qemu-aarch64)
if(KVSKETCH_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${KVSKETCH_QEMU_AARCH64})
endif()
