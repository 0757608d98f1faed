// Writes the state fuzzer's seed corpus: one valid state of every method and
// storage (byte 0: the session index), into the directory given.
#include <cstdio>
#include <fstream>
#include <string>

#include "fuzz/state_common.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: state_corpus DIR\n");
    return 2;
  }
  for (size_t i = 0; i < kvsketch_fuzz::kSessions; ++i) {
    const std::string bytes = kvsketch_fuzz::Make(i)->SaveBytes();
    std::ofstream out(
        std::string(argv[1]) + "/state_" + std::to_string(i) + ".kvs",
        std::ios::binary);
    out.put(char(i));
    out.write(bytes.data(), std::streamsize(bytes.size()));
    if (!out) return 1;
  }
  std::printf("state corpus: %zu states\n", kvsketch_fuzz::kSessions);
  return 0;
}
