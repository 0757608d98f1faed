# Cross-compile for 32-bit ARM (Raspberry Pi OS 32-bit, armv7 hard-float).
# Highway 1.0.3 only dispatches SCALAR here: a build that must pass its tests,
# not a fast target.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_LIBRARY_ARCHITECTURE arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_C_FLAGS_INIT "-mfpu=neon-vfpv4 -mfloat-abi=hard -mfp16-format=ieee -Wno-psabi")
set(CMAKE_CXX_FLAGS_INIT "-mfpu=neon-vfpv4 -mfloat-abi=hard -mfp16-format=ieee -Wno-psabi")

find_program(KVSKETCH_QEMU_ARM qemu-arm)
if(KVSKETCH_QEMU_ARM)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${KVSKETCH_QEMU_ARM})
endif()
