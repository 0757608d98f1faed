// libFuzzer target: loading a state into a session of any method and
// storage. Byte 0 picks the session (index % 60); its bit 7 clear means the
// section checksums are recomputed first, so the fuzzer reaches the field
// validation behind them (bit 7 set: the file is loaded as given). Any input
// must be rejected with an error (session unchanged) or accepted, and the
// session must then answer with finite outputs.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/session/state_io.h"
#include "fuzz/state_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<kvsketch::Session> sessions[kvsketch_fuzz::kSessions];
  if (size < 1) return 0;
  const size_t i = (data[0] & 0x7F) % kvsketch_fuzz::kSessions;
  if (!sessions[i]) sessions[i] = kvsketch_fuzz::Make(i);
  kvsketch::Session& s = *sessions[i];
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (!(data[0] & 0x80)) bytes = kvsketch::ResealStateBytes(bytes);
  const std::string before = s.SaveBytes();
  try {
    s.LoadBytes(bytes);
  } catch (const kvsketch::Error&) {
    if (s.SaveBytes() != before) std::abort();  // a failed load changed it
  }
  std::vector<float> q(16, 0.5f), out(16);
  s.Attend(0, q.data(), out.data());
  for (float x : out)
    if (!std::isfinite(x)) std::abort();  // an accepted state answers NaN
  std::vector<float> k(8, 0.25f), v(8, 1.0f);
  try {
    s.Append(0, k.data(), v.data());  // exact may be full: a clean error
  } catch (const kvsketch::Error&) {
  }
  s.Attend(0, q.data(), out.data());
  for (float x : out)
    if (!std::isfinite(x)) std::abort();
  // Back to the valid state, so the next input starts from a known session.
  s.LoadBytes(before);
  return 0;
}
