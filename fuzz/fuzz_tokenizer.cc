// libFuzzer target: the tokenizer parser must reject anything malformed with
// kvsketch::Error; an accepted vocabulary must encode and decode any text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/lm/llama2c.h"
#include "kvsketch/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t vocab = 1 + data[0] % 32;  // < 3 must be rejected
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const kvsketch::Tokenizer tok =
        kvsketch::Tokenizer::Parse(bytes, vocab, "fuzz");
    const std::vector<int> ids = tok.EncodeDocuments(
        "ab<|endoftext|> c\xc3\xa9\n" + bytes.substr(0, 64));
    int prev = 1;
    for (int id : ids) {
      if (id < 0 || size_t(id) >= vocab) __builtin_trap();
      tok.Decode(prev, id);
      prev = id;
    }
  } catch (const kvsketch::Error&) {
  }
  return 0;
}
