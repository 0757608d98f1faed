#include "engine/session/state_io.h"

#include <fstream>
#include <sstream>

#include "engine/budget/arena.h"
#include "engine/sketch/sketch.h"
#include "kvsketch/kvsketch.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvsketch {

namespace {

constexpr char kMagic[8] = {'K', 'V', 'S', 'K', 'S', 'T', 'A', 'T'};
constexpr uint32_t kVersion = 3;  // 3: coreset weights from levels
constexpr uint32_t kEndian = 0x01020304;
constexpr uint32_t kArenaSection = 1, kScalarSection = 2;

void PutSection(StateWriter& w, uint32_t id, const std::string& data) {
  w.Put<uint32_t>(id);
  w.Put<uint64_t>(data.size());
  w.Put<uint64_t>(XXH64(data.data(), data.size(), 0));
  w.bytes() += data;
}

struct Section {
  const char* data = nullptr;
  size_t size = 0;
};

Section GetSection(const std::string& b, size_t& pos, uint32_t want,
                   const std::string& what) {
  StateReader r(b.data() + pos, b.size() - pos);
  const uint32_t id = r.Get<uint32_t>();
  if (id != want) {
    throw Error(what + ": expected section " + std::to_string(want) +
                ", found " + std::to_string(id));
  }
  const uint64_t size = r.Get<uint64_t>();
  const uint64_t sum = r.Get<uint64_t>();
  pos += 20;
  if (size > b.size() - pos)
    throw Error(what + ": truncated (section " + std::to_string(id) + ")");
  Section s{b.data() + pos, size_t(size)};
  if (XXH64(s.data, s.size, 0) != sum) {
    throw Error(what + ": checksum mismatch in section " + std::to_string(id) +
                " (corrupted file)");
  }
  pos += size;
  return s;
}

void Apply(const Section& arena_bytes, const Section& scalars, Arena& arena,
           size_t begin, std::vector<std::unique_ptr<Sketch>>& sketches) {
  std::memcpy(arena.data() + begin, arena_bytes.data, arena_bytes.size);
  StateReader r(scalars.data, scalars.size);
  for (auto& s : sketches) s->LoadScalars(r);
  if (!r.done())
    throw Error("state file: trailing bytes in the scalar section");
}

}  // namespace

std::string ConfigFingerprint(const SessionConfig& c) {
  std::ostringstream o;
  o << "layers=" << c.layers << " heads=" << c.n_heads << " kv=" << c.n_kv_heads
    << " dk=" << c.dk << " dv=" << c.dv << " scale=" << c.scale
    << " method=" << c.method << " budget=" << c.budget_bytes << "/"
    << c.budget_bytes_per_head << "/" << c.budget_tokens_per_head
    << " storage=" << c.storage;
  // Results do not depend on the thread count, and neither does the state
  // under per-head budgets: a state saved with 8 threads loads with 1. A
  // total budget also pays for the per-thread scratch, so there the
  // (resolved) thread count decides every head's share and must match.
  if (c.budget_bytes) o << " threads=" << c.threads;
  o << " seed=" << c.seed << " sinks=" << c.sinks << " window=" << c.window
    << " block=" << c.block << " degree=" << c.degree
    << " rope=" << c.rope_theta << "/" << c.rope_dims << "/"
    << c.rope_interleaved << " weights=";
  for (float w : c.head_weights) o << w << ",";
  return o.str();
}

std::string SaveStateBytes(
    const SessionConfig& c, const Arena& arena, size_t begin,
    const std::vector<std::unique_ptr<Sketch>>& sketches) {
  StateWriter w;
  w.bytes().append(kMagic, 8);
  w.Put<uint32_t>(kVersion);
  w.Put<uint32_t>(kEndian);
  const std::string fp = ConfigFingerprint(c);
  w.Put<uint64_t>(fp.size());
  w.bytes() += fp;
  PutSection(w, kArenaSection,
             std::string(reinterpret_cast<const char*>(arena.data()) + begin,
                         arena.used() - begin));
  StateWriter scalars;
  for (const auto& s : sketches) s->SaveScalars(scalars);
  PutSection(w, kScalarSection, scalars.bytes());
  return std::move(w.bytes());
}

void SaveState(const std::string& path, const SessionConfig& c,
               const Arena& arena, size_t begin,
               const std::vector<std::unique_ptr<Sketch>>& sketches) {
  const std::string b = SaveStateBytes(c, arena, begin, sketches);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw Error("cannot write " + tmp);
    out.write(b.data(), std::streamsize(b.size()));
    if (!out) throw Error("write failed: " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw Error("cannot rename " + tmp + " to " + path);
  }
}

void LoadStateBytes(const std::string& b, const std::string& what,
                    const SessionConfig& c, Arena& arena, size_t begin,
                    std::vector<std::unique_ptr<Sketch>>& sketches) {
  if (b.size() < 24 || std::memcmp(b.data(), kMagic, 8) != 0) {
    throw Error(what + ": not a kvsketch state file (bad magic)");
  }
  StateReader r(b.data() + 8, b.size() - 8);
  const uint32_t version = r.Get<uint32_t>();
  const uint32_t endian = r.Get<uint32_t>();
  if (endian != kEndian)
    throw Error(what + ": written on a machine of other endianness");
  if (version != kVersion) {
    throw Error(what + ": format version " + std::to_string(version) +
                " (this build reads version " + std::to_string(kVersion) + ")");
  }
  const uint64_t fp_len = r.Get<uint64_t>();
  if (fp_len > b.size() - 24) throw Error(what + ": truncated header");
  const std::string fp(b.data() + 24, size_t(fp_len));
  const std::string mine = ConfigFingerprint(c);
  if (fp != mine) {
    throw Error(what + ": configuration mismatch: file has '" + fp +
                "', session has '" + mine + "'");
  }
  size_t pos = 24 + size_t(fp_len);
  const Section arena_bytes = GetSection(b, pos, kArenaSection, what);
  const Section scalars = GetSection(b, pos, kScalarSection, what);
  if (pos != b.size())
    throw Error(what + ": trailing bytes after the last section");
  if (arena_bytes.size != arena.used() - begin) {
    throw Error(what + ": state size " + std::to_string(arena_bytes.size) +
                " does not match this session's " +
                std::to_string(arena.used() - begin));
  }
  // Apply; on any error restore the previous state exactly.
  const std::string snapshot = SaveStateBytes(c, arena, begin, sketches);
  try {
    Apply(arena_bytes, scalars, arena, begin, sketches);
  } catch (...) {
    size_t p = 24 + size_t(fp_len);
    const Section a0 = GetSection(snapshot, p, kArenaSection, "snapshot");
    const Section s0 = GetSection(snapshot, p, kScalarSection, "snapshot");
    Apply(a0, s0, arena, begin, sketches);
    throw;
  }
}

void LoadState(const std::string& path, const SessionConfig& c, Arena& arena,
               size_t begin, std::vector<std::unique_ptr<Sketch>>& sketches) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  LoadStateBytes(ss.str(), path, c, arena, begin, sketches);
}

}  // namespace kvsketch
