// Save / load of a session's state: a versioned binary file (format in
// docs/state-format.md) holding the configuration, the arena bytes and each
// sketch's scalar state, each section with an xxHash64 checksum.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/io/serial.h"  // StateWriter, StateReader
#include "kvsketch/error.h"

namespace kvsketch {

class Arena;
class Sketch;
struct SessionConfig;

// Canonical text of the configuration (what must match to load a state).
std::string ConfigFingerprint(const SessionConfig& c);

// The arena bytes [begin, used) are the state (before `begin`: scratch).
void SaveState(const std::string& path, const SessionConfig& c,
               const Arena& arena, size_t begin,
               const std::vector<std::unique_ptr<Sketch>>& sketches);
// Throws Error naming the problem; the session is unchanged on any error.
void LoadState(const std::string& path, const SessionConfig& c, Arena& arena,
               size_t begin, std::vector<std::unique_ptr<Sketch>>& sketches);
// Same, from bytes in memory (used by LoadState and the fuzz target).
void LoadStateBytes(const std::string& bytes, const std::string& what,
                    const SessionConfig& c, Arena& arena, size_t begin,
                    std::vector<std::unique_ptr<Sketch>>& sketches);
// Same, from caller memory, read in place; commit = false validates
// everything and changes nothing.
void LoadStateBytes(const char* data, size_t size, const std::string& what,
                    const SessionConfig& c, Arena& arena, size_t begin,
                    std::vector<std::unique_ptr<Sketch>>& sketches,
                    bool commit);
// Recomputes both section checksums of a state (tests and the state fuzzer
// use it to reach the validation behind the checksum); returns the input
// unchanged when its layout cannot be parsed.
std::string ResealStateBytes(std::string bytes);
std::string SaveStateBytes(
    const SessionConfig& c, const Arena& arena, size_t begin,
    const std::vector<std::unique_ptr<Sketch>>& sketches);
// The size SaveStateBytes would return, without serialising the arena.
size_t StateBytesSize(const SessionConfig& c, const Arena& arena, size_t begin,
                      const std::vector<std::unique_ptr<Sketch>>& sketches);
// Writes the state into caller memory (no intermediate copy of the arena);
// throws naming both sizes, writing nothing, when capacity is too small.
size_t SaveStateInto(void* dst, size_t capacity, const SessionConfig& c,
                     const Arena& arena, size_t begin,
                     const std::vector<std::unique_ptr<Sketch>>& sketches);

}  // namespace kvsketch
