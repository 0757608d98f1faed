#include "engine/io/trace.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

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
  t->scale = j["scale"].get<float>();
  if (!std::isfinite(t->scale) || t->scale <= 0.0f) {
    throw Error(what + ": \"scale\" must be positive and finite");
  }
  if (j.contains("rope")) {
    const auto& r = j["rope"];
    if (!r.is_object()) throw Error(what + ": \"rope\" must be an object");
    t->rope.present = true;
    if (r.contains("theta")) {
      if (!r["theta"].is_number())
        throw Error(what + ": rope.theta not a number");
      t->rope.theta = r["theta"].get<float>();
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
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
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
  return t;
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
