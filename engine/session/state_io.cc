#include "engine/session/state_io.h"

#include <sys/stat.h>

#include <cstdio>
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
// 3: coreset weights from levels; 4: 64-bit sequence counters, every field
// validated on load; 7: risk's summary of dropped tokens; 8: every method's
// items in one pool layout (exact capacities, columns reordered).
constexpr uint32_t kVersion = 8;
constexpr uint32_t kEndian = 0x01020304;
constexpr uint32_t kArenaSection = 1, kScalarSection = 2;

struct Section {
  const char* data = nullptr;
  size_t size = 0;
};

Section GetSection(const char* b, size_t b_size, size_t& pos, uint32_t want,
                   const std::string& what) {
  StateReader r(b + pos, b_size - pos);
  const uint32_t id = r.Get<uint32_t>();
  if (id != want) {
    throw IoError(what + ": expected section " + std::to_string(want) +
                  ", found " + std::to_string(id));
  }
  const uint64_t size = r.Get<uint64_t>();
  const uint64_t sum = r.Get<uint64_t>();
  pos += 20;
  if (size > b_size - pos)
    throw IoError(what + ": truncated (section " + std::to_string(id) + ")");
  Section s{b + pos, size_t(size)};
  if (XXH64(s.data, s.size, 0) != sum) {
    throw IoError(what + ": checksum mismatch in section " +
                  std::to_string(id) + " (corrupted file)");
  }
  pos += size;
  return s;
}

// Scalars first (small; backed up), then every field of the staged arena
// bytes is validated; only then do the arena bytes go live. Any error leaves
// the session exactly as it was, with one extra copy of the state at most.
void Apply(const std::string& what, const Section& arena_bytes,
           const Section& scalars, Arena& arena, size_t begin,
           std::vector<std::unique_ptr<Sketch>>& sketches, bool commit) {
  StateWriter backup;
  for (const auto& s : sketches) s->SaveScalars(backup);
  const StagedState staged(arena.data() + begin,
                           reinterpret_cast<const uint8_t*>(arena_bytes.data),
                           arena_bytes.size);
  try {
    StateReader r(scalars.data, scalars.size);
    for (auto& s : sketches) s->LoadScalars(r);
    if (!r.done())
      throw IoError("state file: trailing bytes in the scalar section");
    for (size_t i = 0; i < sketches.size(); ++i) {
      try {
        sketches[i]->CheckState(staged);
      } catch (const IoError& e) {
        const uint64_t stream = sketches[i]->config().stream;
        throw IoError(std::string(e.what()) + " (layer " +
                      std::to_string(stream >> 32) + ", KV head " +
                      std::to_string(stream & 0xffffffffu) + ")");
      }
    }
  } catch (const Error& e) {
    StateReader r(backup.bytes().data(), backup.bytes().size());
    for (auto& s : sketches) s->LoadScalars(r);
    throw IoError(what + ": " + e.what() + "; nothing was changed");
  }
  if (!commit) {  // validated only: the scalars as they were
    StateReader r(backup.bytes().data(), backup.bytes().size());
    for (auto& s : sketches) s->LoadScalars(r);
    return;
  }
  std::memcpy(arena.data() + begin, arena_bytes.data, arena_bytes.size);
}

}  // namespace

std::string ConfigFingerprint(const SessionConfig& c) {
  std::ostringstream o;
  o << "layers=" << c.layers << " heads=" << c.n_heads << " kv=" << c.n_kv_heads
    << " dk=" << c.dk << " dv=" << c.dv << " scale=" << c.scale
    << " method=" << c.method << " budget=" << c.budget_bytes << "/"
    << c.budget_bytes_per_head << "/" << c.budget_tokens_per_head
    << " storage=" << c.storage << "/" << c.storage_k << "/" << c.storage_v
    << " rotate=" << c.rotate;
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
  // Knobs added in 0.2, only when set (states of earlier sessions load).
  if (c.window_share >= 0.0f) o << " window_share=" << c.window_share;
  if (c.probes) o << " probes=" << c.probes;
  return o.str();
}

namespace {

// The small parts of a state (the arena section is the arena's bytes).
struct StateParts {
  std::string fp, scalars;
  const char* arena = nullptr;
  size_t arena_size = 0;
  size_t Size() const {
    return 8 + 4 + 4 + 8 + fp.size() + 2 * (4 + 8 + 8) + arena_size +
           scalars.size();
  }
};

StateParts Parts(const SessionConfig& c, const Arena& arena, size_t begin,
                 const std::vector<std::unique_ptr<Sketch>>& sketches) {
  StateParts p;
  p.fp = ConfigFingerprint(c);
  StateWriter scalars;
  for (const auto& s : sketches) s->SaveScalars(scalars);
  p.scalars = std::move(scalars.bytes());
  p.arena = reinterpret_cast<const char*>(arena.data()) + begin;
  p.arena_size = arena.used() - begin;
  return p;
}

// Writes the state into dst (p.Size() bytes), the arena straight from the
// arena: no copy of it in between.
void WriteParts(const StateParts& p, char* dst) {
  auto put = [&](const void* x, size_t n) {
    std::memcpy(dst, x, n);
    dst += n;
  };
  auto put_u32 = [&](uint32_t x) { put(&x, 4); };
  auto put_u64 = [&](uint64_t x) { put(&x, 8); };
  auto section = [&](uint32_t id, const char* data, size_t n) {
    put_u32(id);
    put_u64(n);
    put_u64(XXH64(data, n, 0));
    put(data, n);
  };
  put(kMagic, 8);
  put_u32(kVersion);
  put_u32(kEndian);
  put_u64(p.fp.size());
  put(p.fp.data(), p.fp.size());
  section(kArenaSection, p.arena, p.arena_size);
  section(kScalarSection, p.scalars.data(), p.scalars.size());
}

}  // namespace

std::string SaveStateBytes(
    const SessionConfig& c, const Arena& arena, size_t begin,
    const std::vector<std::unique_ptr<Sketch>>& sketches) {
  const StateParts p = Parts(c, arena, begin, sketches);
  std::string b(p.Size(), '\0');
  WriteParts(p, &b[0]);
  return b;
}

size_t StateBytesSize(const SessionConfig& c, const Arena& arena, size_t begin,
                      const std::vector<std::unique_ptr<Sketch>>& sketches) {
  return Parts(c, arena, begin, sketches).Size();
}

size_t SaveStateInto(void* dst, size_t capacity, const SessionConfig& c,
                     const Arena& arena, size_t begin,
                     const std::vector<std::unique_ptr<Sketch>>& sketches) {
  const StateParts p = Parts(c, arena, begin, sketches);
  if (capacity < p.Size()) {
    throw Error("save state: the buffer holds " + std::to_string(capacity) +
                " bytes, the state needs " + std::to_string(p.Size()) +
                " (StateSize); nothing was written");
  }
  WriteParts(p, static_cast<char*>(dst));
  return p.Size();
}

std::string ResealStateBytes(std::string b) {
  if (b.size() < 24 || std::memcmp(b.data(), kMagic, 8) != 0) return b;
  uint64_t fp_len;
  std::memcpy(&fp_len, b.data() + 16, 8);
  if (fp_len > b.size() - 24) return b;
  size_t pos = 24 + size_t(fp_len);
  for (int s = 0; s < 2; ++s) {
    if (b.size() - pos < 20) return b;
    uint64_t size;
    std::memcpy(&size, b.data() + pos + 4, 8);
    if (size > b.size() - pos - 20) return b;
    const uint64_t sum = XXH64(b.data() + pos + 20, size_t(size), 0);
    std::memcpy(&b[pos + 12], &sum, 8);
    pos += 20 + size_t(size);
  }
  return b;
}

void SaveState(const std::string& path, const SessionConfig& c,
               const Arena& arena, size_t begin,
               const std::vector<std::unique_ptr<Sketch>>& sketches) {
  const std::string b = SaveStateBytes(c, arena, begin, sketches);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw IoError("cannot write " + tmp);
    out.write(b.data(), std::streamsize(b.size()));
    out.close();
    if (!out) {
      std::remove(tmp.c_str());  // no partial file left behind
      throw IoError("write failed: " + tmp);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw IoError("cannot rename " + tmp + " to " + path);
  }
}

void LoadStateBytes(const std::string& b, const std::string& what,
                    const SessionConfig& c, Arena& arena, size_t begin,
                    std::vector<std::unique_ptr<Sketch>>& sketches) {
  LoadStateBytes(b.data(), b.size(), what, c, arena, begin, sketches, true);
}

void LoadStateBytes(const char* data, size_t size, const std::string& what,
                    const SessionConfig& c, Arena& arena, size_t begin,
                    std::vector<std::unique_ptr<Sketch>>& sketches,
                    bool commit) {
  if (size < 24 || std::memcmp(data, kMagic, 8) != 0) {
    throw IoError(what + ": not a kvsketch state file (bad magic)");
  }
  StateReader r(data + 8, size - 8);
  const uint32_t version = r.Get<uint32_t>();
  const uint32_t endian = r.Get<uint32_t>();
  if (endian != kEndian)
    throw IoError(what + ": written on a machine of other endianness");
  if (version != kVersion) {
    throw IoError(what + ": format version " + std::to_string(version) +
                  " (this build reads version " + std::to_string(kVersion) +
                  ")");
  }
  const uint64_t fp_len = r.Get<uint64_t>();
  if (fp_len > size - 24) throw IoError(what + ": truncated header");
  const std::string fp(data + 24, size_t(fp_len));
  const std::string mine = ConfigFingerprint(c);
  if (fp != mine) {
    throw IoError(what + ": configuration mismatch: file has '" + fp +
                  "', session has '" + mine + "'");
  }
  size_t pos = 24 + size_t(fp_len);
  const Section arena_bytes = GetSection(data, size, pos, kArenaSection, what);
  const Section scalars = GetSection(data, size, pos, kScalarSection, what);
  if (pos != size)
    throw IoError(what + ": trailing bytes after the last section");
  if (arena_bytes.size != arena.used() - begin) {
    throw IoError(what + ": state size " + std::to_string(arena_bytes.size) +
                  " does not match this session's " +
                  std::to_string(arena.used() - begin));
  }
  Apply(what, arena_bytes, scalars, arena, begin, sketches, commit);
}

void LoadState(const std::string& path, const SessionConfig& c, Arena& arena,
               size_t begin, std::vector<std::unique_ptr<Sketch>>& sketches) {
  // A regular file of plausible size only (a FIFO or device would hang or
  // never end), read once into a buffer of its exact size.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) throw IoError("cannot open " + path);
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": not a regular file");
  const uint64_t expect = 24 + 2 * 20 + (arena.used() - begin) +
                          ConfigFingerprint(c).size() + (uint64_t(1) << 24);
  if (uint64_t(st.st_size) > expect) {
    throw IoError(path + ": " + std::to_string(st.st_size) +
                  " bytes, far more than a state of this session (" +
                  std::to_string(arena.used() - begin) + " state bytes)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open " + path);
  std::string bytes(size_t(st.st_size), '\0');
  in.read(&bytes[0], std::streamsize(bytes.size()));
  if (size_t(in.gcount()) != bytes.size())
    throw IoError(path + ": read failed");
  LoadStateBytes(bytes, path, c, arena, begin, sketches);
}

}  // namespace kvsketch
