#include "engine/io/synthetic.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "arch/random.h"
#include "kvsketch/error.h"

namespace kvsketch {

namespace {
// needle: old passages per KV head, each queried once near the end, and
// their length in tokens.
constexpr size_t kNeedles = 16;
constexpr size_t kNeedleTokens = 4;
constexpr size_t kNeedleMinSeq = 512;
// needle: the other queries look this far back at most.
constexpr size_t kRecentSpan = 256;
}  // namespace

std::vector<std::string> SyntheticNames() {
  return {"default", "d128", "long", "needle"};
}

SyntheticSpec SyntheticByName(const std::string& name, size_t seq,
                              uint64_t seed) {
  SyntheticSpec s;
  s.name = name;
  if (name == "default") {
  } else if (name == "d128") {
    s.d = 128;
  } else if (name == "long") {
    s.seq = 65536;
  } else if (name == "needle") {
    s.seq = 16384;
  } else {
    throw Error("unknown synthetic workload '" + name +
                "' (known: default, d128, long, needle)");
  }
  if (seq) s.seq = seq;
  if (name == "needle" && s.seq < kNeedleMinSeq) {
    throw Error("synthetic workload 'needle' needs at least " +
                std::to_string(kNeedleMinSeq) + " tokens (--length " +
                std::to_string(s.seq) + ")");
  }
  if (seed) s.seed = seed;
  return s;
}

namespace {

// Deterministic Gaussian stream keyed by (seed, stream, counter).
struct Gauss {
  uint64_t seed, stream, counter = 0;
  float operator()() { return float(CounterNormal(seed, stream, counter++)); }
  float Uniform() {
    return CounterUniform(seed, stream ^ 0xABCDEFull, counter++);
  }
};

}  // namespace

// Per KV head (see docs/synthetic.md):
//  - a shared key direction u with magnitude 4 and two outlier channels
//    (+8, -6) on every key: a large common component, as in real heads;
//  - 48 topics with centres mu_c ~ N(0, I); a sticky topic sequence (stay
//    with p = 0.97) so that keys cluster in time;
//  - k_t = 4u + outliers + mu_{c_t} + N(0, 0.6^2 I);
//  - v_t = nu_{c_t} + N(0, 1/d I) with |nu_c| ~ 2.8, so |v| ~ 3;
//  - queries of head h: with p = 0.5 about the current topic, otherwise about
//    the topic of a uniformly chosen earlier token (retrieval of old
//    context): q = g_h mu_target / |mu| * sqrt(d) / 8 * 8 / sqrt(d)... i.e.
//    scaled so the matching logit is about g_h in {4..9} (head-dependent
//    temperature), plus 0.5 u and N(0, 0.3^2 I).
Trace MakeSynthetic(const SyntheticSpec& s) {
  Trace t;
  t.name = "synthetic:" + s.name;
  t.layers = 1;
  t.n_kv_heads = s.n_kv_heads;
  t.n_heads = s.n_kv_heads * s.group;
  t.seq = s.seq;
  t.dk = t.dv = s.d;
  t.scale = 1.0f / std::sqrt(float(s.d));
  const size_t d = s.d, n = s.seq;
  t.q.assign(1, std::vector<float>(t.n_heads * n * d));
  t.k.assign(1, std::vector<float>(t.n_kv_heads * n * d));
  t.v.assign(1, std::vector<float>(t.n_kv_heads * n * d));
  const size_t topics = 48;
  const bool needle = s.name == "needle";
  // needle: the needles sit in the first quarter, their queries in the last
  // sixteenth (the same positions in every head); only those are evaluated.
  std::vector<size_t> needle_pos, needle_query;
  if (needle) {
    for (size_t j = 0; j < kNeedles; ++j) {
      needle_pos.push_back((j + 1) * n / (4 * (kNeedles + 1)));
      needle_query.push_back(n - n / 16 + j * (n / 16) / kNeedles);
    }
    t.eval_positions = needle_query;
  }
  for (size_t h = 0; h < s.n_kv_heads; ++h) {
    Gauss g{s.seed, 1000 + h};
    std::vector<float> u(d), mu(topics * d), nu(topics * d);
    double un = 0;
    for (auto& x : u) {
      x = g();
      un += double(x) * x;
    }
    for (auto& x : u) x = float(x / std::sqrt(un));
    for (auto& x : mu) x = g();
    for (auto& x : nu) x = g() * 2.8f / std::sqrt(float(d));
    // needle: each needle its own key centre and value, unlike any topic.
    std::vector<float> eta, nv;
    if (needle) {
      eta.resize(kNeedles * d);
      nv.resize(kNeedles * d);
      for (auto& x : eta) x = g();
      for (auto& x : nv) x = g() * 2.8f / std::sqrt(float(d));
    }
    std::vector<uint32_t> topic(n);
    uint32_t cur = 0;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0 && g.Uniform() > 0.97f)
        cur = uint32_t(g.Uniform() * topics) % topics;
      topic[i] = cur;
      float* k = t.k[0].data() + (h * n + i) * d;
      float* v = t.v[0].data() + (h * n + i) * d;
      for (size_t c = 0; c < d; ++c) {
        k[c] = 4.0f * u[c] + mu[cur * d + c] + 0.6f * g();
        v[c] = nu[cur * d + c] + g() / std::sqrt(float(d));
      }
      k[0] += 8.0f;  // outlier channels
      k[1] -= 6.0f;
    }
    // Each needle is a short passage of kNeedleTokens adjacent tokens.
    for (size_t j = 0; j < needle_pos.size(); ++j) {
      for (size_t r = 0; r < kNeedleTokens; ++r) {
        float* k = t.k[0].data() + (h * n + needle_pos[j] + r) * d;
        float* v = t.v[0].data() + (h * n + needle_pos[j] + r) * d;
        for (size_t c = 0; c < d; ++c) {
          k[c] = 4.0f * u[c] + eta[j * d + c] + 0.6f * g();
          v[c] = nv[j * d + c] + g() / std::sqrt(float(d));
        }
        k[0] += 8.0f;
        k[1] -= 6.0f;
      }
    }
    for (size_t j = 0; j < s.group; ++j) {
      const size_t qh = h * s.group + j;
      const float gain = 4.0f + 5.0f * float(qh % 4) / 3.0f;  // 4 .. 9
      size_t next_needle = 0;
      for (size_t i = 0; i < n; ++i) {
        uint32_t target = topic[i];
        const float* m;
        float qgain = gain;
        if (needle) {
          // Recent context only, except one query per needle, late: a
          // retrieval whose logit ln(i / kNeedleTokens) + 1 above the rest
          // gives the passage most of the attention among i tokens.
          if (next_needle < kNeedles && i == needle_query[next_needle]) {
            m = eta.data() + next_needle * d;
            qgain = std::log(float(i) / float(kNeedleTokens)) + 1.0f;
            ++next_needle;
          } else {
            const size_t span = std::min(i + 1, kRecentSpan);
            target =
                topic[i + 1 - span + size_t(g.Uniform() * float(span)) % span];
            m = mu.data() + target * d;
          }
        } else {
          if (g.Uniform() < 0.5f)
            target = topic[size_t(g.Uniform() * (i + 1)) % (i + 1)];
          m = mu.data() + target * d;
        }
        double mn = 0;
        for (size_t c = 0; c < d; ++c) mn += double(m[c]) * m[c];
        // <q, mu> * scale = gain  =>  q = gain * mu / |mu|^2 / scale.
        const float a = qgain / float(mn) / t.scale;
        float* q = t.q[0].data() + (qh * n + i) * d;
        for (size_t c = 0; c < d; ++c)
          q[c] = a * m[c] + 0.5f * u[c] + 0.3f * g();
      }
    }
  }
  return t;
}

}  // namespace kvsketch
