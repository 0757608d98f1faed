#include "engine/io/trace.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "arch/attend.h"  // kMaxGroup, kMaxHeadDim
#include "engine/io/file.h"
#include "engine/io/npy.h"
#include "kvsketch/error.h"
#include "nlohmann/json.hpp"

namespace kvsketch {
namespace fs = std::filesystem;

void ParseTraceJson(const std::string& text, const std::string& what,
                    Trace* t) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(what + ": invalid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("scale") || !j["scale"].is_number()) {
    throw Error(what + ": needs a numeric \"scale\"");
  }
  const double scale = j["scale"].get<double>();
  if (!(scale > 0.0) || !(scale <= 1e30)) {
    throw Error(what + ": \"scale\" must be positive and finite");
  }
  t->scale = float(scale);
  if (j.contains("rope")) {
    const auto& r = j["rope"];
    if (!r.is_object()) throw Error(what + ": \"rope\" must be an object");
    t->rope.present = true;
    if (r.contains("theta")) {
      if (!r["theta"].is_number())
        throw Error(what + ": rope.theta not a number");
      const double theta = r["theta"].get<double>();
      ValidateRope(theta, 0, 0, what);
      t->rope.theta = float(theta);
    }
    if (r.contains("layout")) {
      if (!r["layout"].is_string())
        throw Error(what + ": rope.layout not a string");
      const std::string layout = r["layout"].get<std::string>();
      if (layout != "interleaved" && layout != "half") {
        throw Error(what + ": rope.layout must be \"interleaved\" or \"half\"");
      }
      t->rope.interleaved = layout == "interleaved";
    }
    if (r.contains("dims")) {
      if (!r["dims"].is_number_unsigned())
        throw Error(what + ": rope.dims invalid");
      t->rope.dims = r["dims"].get<size_t>();
    }
    if (r.contains("first_position")) {
      if (!r["first_position"].is_number_unsigned()) {
        throw Error(what + ": rope.first_position invalid");
      }
      t->rope.first_position = r["first_position"].get<size_t>();
    }
  }
}

static std::string ReadFile(const std::string& path) {
  return ReadRegularFile(path, "trace file", uint64_t(1) << 20);  // 1 MiB
}

static void CheckFinite(const std::vector<float>& x, const std::string& what) {
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      throw Error(what + ": non-finite value at flat index " +
                  std::to_string(i));
    }
  }
}

Trace LoadTrace(const std::string& dir) {
  Trace t;
  t.name = fs::path(dir).filename().string();
  if (t.name.empty()) t.name = fs::path(dir).parent_path().filename().string();
  ParseTraceJson(ReadFile(dir + "/trace.json"), dir + "/trace.json", &t);
  for (size_t l = 0;; ++l) {
    const std::string base = dir + "/L" + std::to_string(l) + "_";
    if (!fs::exists(base + "q.npy")) break;
    NpyArray q = LoadNpy(base + "q.npy"), k = LoadNpy(base + "k.npy"),
             v = LoadNpy(base + "v.npy");
    for (const auto* a : {&q, &k, &v}) {
      if (a->dtype != "<f4" || a->shape.size() != 3) {
        throw Error(base + "*.npy: need float32 arrays of rank 3");
      }
    }
    if (l == 0) {
      t.n_heads = q.shape[0];
      t.n_kv_heads = k.shape[0];
      t.seq = q.shape[1];
      t.dk = q.shape[2];
      t.dv = v.shape[2];
    }
    if (q.shape != std::vector<size_t>{t.n_heads, t.seq, t.dk} ||
        k.shape != std::vector<size_t>{t.n_kv_heads, t.seq, t.dk} ||
        v.shape != std::vector<size_t>{t.n_kv_heads, t.seq, t.dv}) {
      throw Error(base + "*.npy: inconsistent shapes across q/k/v or layers");
    }
    if (t.n_kv_heads == 0 || t.n_heads % t.n_kv_heads != 0) {
      throw Error(base + "q.npy: query heads must be a multiple of KV heads");
    }
    CheckFinite(q.f32, base + "q.npy");
    CheckFinite(k.f32, base + "k.npy");
    CheckFinite(v.f32, base + "v.npy");
    t.q.push_back(std::move(q.f32));
    t.k.push_back(std::move(k.f32));
    t.v.push_back(std::move(v.f32));
  }
  t.layers = t.q.size();
  if (t.layers == 0) throw Error(dir + ": no L0_q.npy found");
  ValidateTrace(t, dir);
  return t;
}

void ValidateRope(double theta, size_t dims, size_t dk,
                  const std::string& what) {
  if (!(theta >= 0.0) || !(theta <= 3.4e38)) {
    char text[32];
    std::snprintf(text, sizeof(text), "%g", theta);
    throw Error(what + ": rope theta " + text +
                " must be 0 (none) or positive and finite (f32)");
  }
  if (dims % 2 != 0 || (dk && dims > dk)) {
    throw Error(what + ": rope dims " + std::to_string(dims) +
                " must be even and at most the head dimension " +
                std::to_string(dk));
  }
}

void ValidateTrace(const Trace& t, const std::string& what) {
  if (t.seq < 2) {
    throw Error(what + ": " + std::to_string(t.seq) +
                " tokens; a trace needs at least 2");
  }
  if (t.dk == 0 || t.dv == 0 || t.dk > kMaxHeadDim || t.dv > kMaxHeadDim) {
    throw Error(what + ": head dimensions dk=" + std::to_string(t.dk) +
                " dv=" + std::to_string(t.dv) + " must be in [1, " +
                std::to_string(kMaxHeadDim) + "]");
  }
  if (t.n_kv_heads == 0 || t.n_heads % t.n_kv_heads != 0 ||
      t.n_heads / t.n_kv_heads > kMaxGroup) {
    throw Error(what + ": " + std::to_string(t.n_heads) + " query heads over " +
                std::to_string(t.n_kv_heads) +
                " KV heads (need a multiple, at most " +
                std::to_string(kMaxGroup) + " per KV head)");
  }
  if (!(t.scale > 0.0f) || !std::isfinite(t.scale))
    throw Error(what + ": scale must be positive and finite");
  if (t.rope.present) ValidateRope(t.rope.theta, t.rope.dims, t.dk, what);
  for (size_t l = 0; l < t.layers; ++l) {
    for (const auto* a : {&t.q[l], &t.k[l], &t.v[l]}) {
      for (size_t i = 0; i < a->size(); ++i) {
        if (!(std::fabs((*a)[i]) <= kInputMaxAbs)) {
          throw Error(what + ": layer " + std::to_string(l) + " " +
                      (a == &t.q[l]   ? "query"
                       : a == &t.k[l] ? "key"
                                      : "value") +
                      " value " + std::to_string((*a)[i]) + " at flat index " +
                      std::to_string(i) +
                      " is beyond the input range |x| <= 1e8");
        }
      }
    }
  }
}

std::vector<std::string> FindTraceDirs(const std::string& path) {
  if (!fs::is_directory(path)) throw Error(path + ": not a directory");
  if (fs::exists(fs::path(path) / "trace.json")) return {path};
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(path)) {
    if (e.is_directory() && fs::exists(e.path() / "trace.json")) {
      dirs.push_back(e.path().string());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  if (dirs.empty()) throw Error(path + ": no trace.json here or in subfolders");
  return dirs;
}

}  // namespace kvsketch
