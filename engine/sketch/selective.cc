// Query-aware sketches: sinks + one pool of verbatim tokens (the newest
// `protect_` of which form the recent window) from which old tokens are
// dropped according to the attention the stream's own queries paid them.
//
//  - h2o:  drop the old token with the least accumulated attention mass
//          (summed over the GQA group, optional decay per query) -- H2O.
//  - tova: drop the old token the latest queries (group mean) attend to
//          least -- TOVA.
//  - risk: keep a ring of recent queries as probes (counted against the
//          budget). When the pool is full, choose a weighted subset of the
//          old tokens that minimises the probes' attention-output error
//          (greedy pivoted Cholesky on the response Gram, non-negative least
//          squares for the weights, weights as log-weights); probes are
//          rotated forward to a future position when the RoPE is known.
//          Derivation: docs/risk.md.
//
// Attention weights come from the raw scores AttendGroup already produces
// during Attend: no extra pass over the keys.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/balance.h"  // GramLower, GramRows, GramStride
#include "arch/convert.h"  // probes in f16
#include "arch/dot.h"      // MatVec
#include "arch/random.h"   // CounterHash
#include "arch/risk.h"
#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/methods.h"

namespace kvsketch {
namespace {

// Per item: h2o and tova keep its insertion number (u32) and accumulated
// attention (f32); risk keeps its pool in insertion order (stable removal)
// and only a log-weight (f32). Probes are stored in f16 (they only steer
// the selection) with their position (u32). At head_dim 8 a row is 64
// bytes, so every metadata byte counts.
size_t ItemMeta(const SketchConfig& c) {
  return c.method == Method::kRisk ? 2 : 8;
}
// risk frees 1/kDropDiv of the old items per compaction.
constexpr size_t kDropDiv = 16;
// Half of the probes sample all older queries (a reservoir), half are the
// most recent: the selection serves queries that recur, not only the last.
constexpr bool kOldProbes = true;
// Future offsets (in units of the protected window) at which probes are
// evaluated when the RoPE is known: now, one window ahead, four windows ahead.
constexpr double kHorizons[] = {0.0, 1.0, 4.0};
constexpr size_t kHorizonCount = sizeof(kHorizons) / sizeof(kHorizons[0]);

size_t ProbeCount(const SketchConfig& c, size_t rows) {
  if (c.method != Method::kRisk) return 0;
  if (c.probes) return c.probes;
  return std::min<size_t>(32, std::max<size_t>(4, rows / 5));
}

size_t MaxCandidates(const SketchConfig& c) {
  return std::max<size_t>(8, 2 * c.block);
}

// Bytes the pool carves for `cap` items and `probes` probes (every array
// aligned as the arena carves it).
size_t PoolBytes(const SketchConfig& c, size_t cap, size_t probes) {
  if (cap == 0) return 0;
  size_t b = Arena::Aligned(cap * StorageRowBytes(c.storage_k, c.dk)) +
             Arena::Aligned(cap * StorageRowBytes(c.storage_v, c.dv)) +
             Arena::Aligned(cap * ItemMeta(c));
  if (probes)
    b += Arena::Aligned(probes * c.dk * 2) + Arena::Aligned(probes * 4);
  return b;
}

// Items of the pool for a budget: the most whose rows, metadata and probes
// fit exactly.
size_t PoolCapacity(const SketchConfig& c, size_t bytes, size_t probes) {
  const size_t row = StateRowBytes(c) + ItemMeta(c);
  size_t cap = bytes / row;
  while (cap > 0 && PoolBytes(c, cap, probes) > bytes) --cap;
  return cap;
}

// Rotates a post-RoPE query by `delta` positions (same layout as the keys).
void RotateForward(float* q, const SketchConfig& c, double delta) {
  const size_t dims = c.rope_dims ? std::min(c.rope_dims, c.dk) : c.dk;
  const size_t pairs = dims / 2;
  for (size_t i = 0; i < pairs; ++i) {
    const double freq =
        std::pow(double(c.rope_theta), -2.0 * double(i) / double(dims));
    const double a = delta * freq;
    const float cs = float(std::cos(a)), sn = float(std::sin(a));
    const size_t i0 = c.rope_interleaved ? 2 * i : i;
    const size_t i1 = c.rope_interleaved ? 2 * i + 1 : i + pairs;
    const float x = q[i0], y = q[i1];
    q[i0] = x * cs - y * sn;
    q[i1] = x * sn + y * cs;
  }
}

class SelectiveSketch final : public Sketch {
 public:
  SelectiveSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, 0), mode_(c.method) {
    next_seq_ =
        std::max<uint64_t>(1, std::min<uint64_t>(c.first_seq, UINT32_MAX));
    probes_cap_ = ProbeCount(c, rows);
    const size_t cap = PoolCapacity(c, RemainingBytes(), probes_cap_);
    rows_ = CarveRows("pool", cap);
    if (cap) {
      if (mode_ == Method::kRisk) {
        logw_ = a.CarveArray<uint16_t>("pool log-weights (f16)", cap);
      } else {
        // One carve: positions then scores (both 4 bytes per item).
        seq_ = a.CarveArray<uint32_t>("pool positions and scores", 2 * cap);
        score_ = reinterpret_cast<float*>(seq_ + cap);
      }
    }
    if (probes_cap_ && cap) {
      probe_q_ =
          a.CarveArray<uint16_t>("probe queries (f16)", probes_cap_ * cfg_.dk);
      probe_pos_ = a.CarveArray<uint32_t>("probe positions", probes_cap_);
    } else {
      probes_cap_ = 0;
    }
    // tova follows its paper: only the newest token is protected (it has
    // not been scored yet); h2o and risk keep a recent window.
    size_t w =
        mode_ == Method::kTova && c.window < 0
            ? 1
            : DefaultWindow(c, rows, mode_ == Method::kRisk ? 0.25f : 0.5f);
    protect_ = std::min(std::max<size_t>(w, 1), cap);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " pool=" + std::to_string(rows_.cap) +
           " window=" + std::to_string(protect_) +
           (probes_cap_ ? " probes=" + std::to_string(probes_cap_) : "");
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    if (rows_.cap == 0) return;
    if (count_ < rows_.cap) {
      Put(count_++, k, v, ws);
      return;
    }
    if (mode_ == Method::kRisk) {
      if (probe_count_ == 0 || !Compact(ws)) DropOldest();
      Put(count_++, k, v, ws);
      return;
    }
    Put(Victim(), k, v, ws);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    attended_ = count_;
    if (count_ == 0) {
      EmptyPartial(G, m, z);
      return;
    }
    AttendGroup(rows_.KView(0, count_), rows_.VView(0, count_),
                mode_ == Method::kRisk ? LogW(ws + G * count_) : nullptr, qp, G,
                cfg_.scale, m, z, N, ws);
    if (probes_cap_) {
      const uint32_t pos = uint32_t(cfg_.rope_first_position + tokens_ - 1);
      for (size_t g = 0; g < G; ++g) AddProbe(qp + g * ks_, pos);
    }
  }

  // Attention weight of every pool item, from the raw scores in ws [G][n]
  // and the final partials.
  void Observe(const float* m, const float* z, size_t G, float* ws) override {
    const size_t n = attended_;
    if (n == 0 || score_ == nullptr) return;
    const float decay = mode_ == Method::kTova ? 0.0f : cfg_.decay;
    const float norm = mode_ == Method::kTova ? 1.0f / float(G) : 1.0f;
    for (size_t i = 0; i < n; ++i) score_[i] *= decay;
    for (size_t g = 0; g < G; ++g) {
      if (!(z[g] > 0.0f)) continue;
      const float inv = norm / z[g];
      float* s = ws + g * n;  // raw scores -> weights, in place (SIMD exp)
      for (size_t i = 0; i < n; ++i) s[i] = std::max(s[i] - m[g], -87.0f);
      ExpArray(s, s, n);
      for (size_t i = 0; i < n; ++i) score_[i] += s[i] * inv;
    }
  }

  size_t CompressedRetained() const override { return count_; }

  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    w.Put<uint64_t>(count_);
    w.Put<uint64_t>(next_seq_);
    w.Put<uint64_t>(probe_count_);
    w.Put<uint64_t>(probe_head_);
    w.Put<uint64_t>(offered_);
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    count_ = r.GetAtMost<uint64_t>(rows_.cap, "pool count");
    next_seq_ = r.Get<uint64_t>();
    probe_count_ = r.GetAtMost<uint64_t>(probes_cap_, "probe count");
    probe_head_ =
        r.GetAtMost<uint64_t>(probes_cap_ ? probes_cap_ - 1 : 0, "probe head");
    offered_ = r.Get<uint64_t>();
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    if (count_ > tokens_) InvalidState("pool count (more items than tokens)");
    st.CheckRows(rows_, count_, RowLimit(), "pool");
    if (seq_) {
      // h2o / tova: per-item numbers are 32-bit copies below next_seq_.
      if (next_seq_ == 0 || next_seq_ > UINT32_MAX || next_seq_ <= count_)
        InvalidState("pool sequence counter");
      for (size_t i = 0; i < count_; ++i) {
        const uint32_t s = st.At(seq_, i);
        if (s == 0 || s >= next_seq_)
          InvalidState("pool sequence number [" + std::to_string(i) + "]");
        const float sc = st.At(score_, i);
        if (!(sc >= 0.0f) || !std::isfinite(sc))
          InvalidState("pool attention score [" + std::to_string(i) + "]");
      }
    }
    if (logw_) {
      for (size_t i = 0; i < count_; ++i) {
        // A weight stands for at most 2^62 tokens; far below e^100 either
        // way (log-weights grow by the log of NNLS weights per compaction).
        const float lw = F16BitsToF32(st.At(logw_, i));
        if (!(std::fabs(lw) <= 100.0f))
          InvalidState("pool log-weight [" + std::to_string(i) + "]");
      }
    }
    if (probes_cap_) {
      const size_t R = RecentProbes();
      if (probe_head_ >= R) InvalidState("probe head");
      if (probe_count_ < R ? probe_head_ != probe_count_ % R
                           : offered_ < probe_count_ - R)
        InvalidState("probe ring (head, count and offers disagree)");
      if (offered_ > queries_) InvalidState("probe offer count");
      if (probe_count_ > queries_) InvalidState("probe count");
      const uint32_t now = uint32_t(cfg_.rope_first_position + tokens_);
      for (size_t p = 0; p < probe_count_; ++p) {
        // Positions are 32-bit (age = now - pos, modulo 2^32).
        const uint32_t age = uint32_t(now - st.At(probe_pos_, p));
        if (age == 0 || age > tokens_)
          InvalidState("probe position [" + std::to_string(p) + "]");
        for (size_t x = 0; x < cfg_.dk; ++x) {
          const float v = F16BitsToF32(st.At(probe_q_, p * cfg_.dk + x));
          if (!std::isfinite(v))
            InvalidState("probe query [" + std::to_string(p) + "]");
        }
      }
    } else if (probe_count_ != 0) {
      InvalidState("probe count");
    }
  }

 private:
  void Put(size_t i, const float* k, const float* v, float* ws) {
    if (seq_ && next_seq_ >= UINT32_MAX) Renumber(i, ws);
    rows_.Put(i, k, v);
    if (seq_) seq_[i] = uint32_t(next_seq_);
    ++next_seq_;
    if (score_) score_[i] = 0.0f;
    if (logw_) logw_[i] = 0;  // f16 +0
  }
  // risk's log-weights of the pool in f32 (into dst [count_]).
  const float* LogW(float* dst) const {
    ConvertRowToF32(Storage::kF16, logw_, dst, count_);
    return dst;
  }
  // h2o / tova: before the 32-bit per-item numbers would wrap, the items
  // get 1..n in their order (slot `skip`, about to be overwritten, drops
  // out). O(n log n) in the scratch (no allocation), once per ~4e9 tokens.
  void Renumber(size_t skip, float* ws) {
    uint32_t* idx = reinterpret_cast<uint32_t*>(ws);
    size_t n = 0;
    for (size_t i = 0; i < count_; ++i)
      if (i != skip) idx[n++] = uint32_t(i);
    std::sort(idx, idx + n,
              [&](uint32_t a, uint32_t b) { return seq_[a] < seq_[b]; });
    for (size_t r = 0; r < n; ++r) seq_[idx[r]] = uint32_t(r + 1);
    next_seq_ = uint64_t(n) + 1;
  }
  // The newest protect_ items (risk's pool is in insertion order).
  bool Protected(size_t i) const {
    return seq_ ? uint64_t(seq_[i]) + protect_ >= next_seq_
                : i + protect_ >= count_;
  }
  // risk without a usable compaction (no probes yet, e.g. a prefill without
  // queries, or nothing old): the oldest items leave, 1/32 of the pool at a
  // time so the stable shift costs O(32 rows) per token.
  void DropOldest() {
    const size_t d = std::min(count_, std::max<size_t>(1, rows_.cap / 32));
    for (size_t i = d; i < count_; ++i) {
      rows_.Move(i - d, i);
      logw_[i - d] = logw_[i];
    }
    count_ -= d;
  }

  // Probes: slots [0, R) are a ring of the most recent queries; a query
  // leaving the ring is offered to a reservoir sample of all older queries
  // in slots [R, probes_cap_) (counter-based, deterministic). Valid slots
  // are always [0, probe_count_).
  size_t RecentProbes() const {
    return kOldProbes ? probes_cap_ - probes_cap_ / 2 : probes_cap_;
  }
  void AddProbe(const float* q, uint32_t pos) {
    const size_t R = RecentProbes();
    if (probe_count_ >= R && R < probes_cap_) {
      // The ring is full: its oldest entry (at probe_head_) leaves it.
      ++offered_;
      const size_t old = probe_count_ - R, room = probes_cap_ - R;
      size_t dst = SIZE_MAX;
      if (old < room) {
        dst = R + old;
        ++probe_count_;
      } else {
        const uint64_t j =
            CounterHash(cfg_.seed, cfg_.stream ^ 0x9b0be5ull, offered_) %
            offered_;
        if (j < room) dst = R + size_t(j);
      }
      if (dst != SIZE_MAX) {
        std::memcpy(probe_q_ + dst * cfg_.dk, probe_q_ + probe_head_ * cfg_.dk,
                    cfg_.dk * sizeof(uint16_t));
        probe_pos_[dst] = probe_pos_[probe_head_];
      }
    }
    float row[kMaxHeadDim];  // f16 range: queries of f16 models fit
    for (size_t i = 0; i < cfg_.dk; ++i)
      row[i] = std::min(StorageMaxAbs(Storage::kF16),
                        std::max(-StorageMaxAbs(Storage::kF16), q[i]));
    ConvertRow(row, Storage::kF16, probe_q_ + probe_head_ * cfg_.dk, cfg_.dk);
    probe_pos_[probe_head_] = pos;
    probe_head_ = (probe_head_ + 1) % R;
    if (probe_count_ < R) ++probe_count_;
  }

  // The old item with the least score (ties: the oldest); the oldest item
  // when everything is protected.
  size_t Victim() const {
    size_t best = SIZE_MAX, oldest = 0;
    for (size_t i = 0; i < count_; ++i) {
      if (seq_[i] < seq_[oldest]) oldest = i;
      if (Protected(i) || score_ == nullptr) continue;
      if (best == SIZE_MAX || score_[i] < score_[best] ||
          (score_[i] == score_[best] && seq_[i] < seq_[best]))
        best = i;
    }
    return best == SIZE_MAX ? oldest : best;
  }

  // Risk-guided compaction of the old items; false when nothing is old.
  bool Compact(float* ws) {
    const size_t vs = vs_, n = count_;
    // Each stored probe is used at kHorizons future offsets (with RoPE).
    const size_t H = cfg_.rope_theta > 0.0f ? kHorizonCount : 1;
    const size_t P = probe_count_ * H;
    // Candidates: the oldest old items (at most MaxCandidates; the pool is
    // in insertion order).
    uint32_t* cand = reinterpret_cast<uint32_t*>(ws);
    ws += RoundUp(rows_.cap, 16);
    const float* lw = LogW(ws);
    ws += RoundUp(rows_.cap, 16);
    size_t C = 0;
    const size_t cmax = MaxCandidates(cfg_);
    for (size_t i = 0; i < n && C < cmax; ++i)
      if (!Protected(i)) cand[C++] = uint32_t(i);
    if (C == 0) return false;
    const size_t drop_target = std::max<size_t>(1, C / kDropDiv);
    const size_t keep = C - drop_target;

    // Probe queries, rotated to a future position when RoPE is known.
    float* q = ws;
    ws += P * ks_;
    const uint32_t now32 = uint32_t(cfg_.rope_first_position + tokens_);
    for (size_t p = 0; p < P; ++p) {
      const size_t src = p / H;
      ConvertRowToF32(Storage::kF16, probe_q_ + src * cfg_.dk, q + p * ks_,
                      cfg_.dk);
      for (size_t x = cfg_.dk; x < ks_; ++x) q[p * ks_ + x] = 0.0f;
      if (cfg_.rope_theta > 0.0f) {
        const double horizon = kHorizons[p % H] * double(protect_ + 1);
        // Positions are kept modulo 2^32: the age is their difference.
        const uint32_t age = uint32_t(now32 - probe_pos_[src]);
        RotateForward(q + p * ks_, cfg_, double(age) + horizon);
      }
    }
    // Probe partials over everything retained: sinks, then the pool.
    float* pm = ws;
    float* pz = pm + P;
    float* pN = pz + P;      // [P][vs]
    float* a = pN + P * vs;  // [P][C] attention of probe p to candidate c
    float* tm = a + P * C;
    float* tz = tm + kMaxGroup;
    float* tN = tz + kMaxGroup;       // [kMaxGroup][vs]
    float* kc = tN + kMaxGroup * vs;  // [C][ks] candidate keys
    float* Vc = kc + C * ks_;         // [C][vs] candidate values
    ws = Vc + C * vs;
    for (size_t ci = 0; ci < C; ++ci)
      rows_.Get(cand[ci], kc + ci * ks_, Vc + ci * vs);
    for (size_t p0 = 0; p0 < P; p0 += kMaxGroup) {
      const size_t g = std::min(kMaxGroup, P - p0);
      AttendSinks(q + p0 * ks_, g, pm + p0, pz + p0, pN + p0 * vs, tm, tz, tN);
      AttendGroup(rows_.KView(0, n), rows_.VView(0, n), lw, q + p0 * ks_, g,
                  cfg_.scale, tm, tz, tN);
      for (size_t j = 0; j < g; ++j) {
        const size_t p = p0 + j;
        MergePartials(pm + p, pz + p, pN + p * vs, tm[j], tz[j], tN + j * vs,
                      vs);
        const float inv = pz[p] > 0.0f ? 1.0f / pz[p] : 0.0f;
        for (size_t c = 0; c < vs; ++c) pN[p * vs + c] *= inv;  // o_p
      }
    }
    // a_pc = exp(s_pc - m_p) / Z_p with s = scale <q_p, k_c> + logw_c.
    MatMulRows(q, P, kc, C, a);
    for (size_t p = 0; p < P; ++p) {
      const float inv = pz[p] > 0.0f ? 1.0f / pz[p] : 0.0f;
      for (size_t ci = 0; ci < C; ++ci) {
        const float sc = cfg_.scale * a[p * C + ci] + lw[cand[ci]];
        a[p * C + ci] = std::exp(sc - pm[p]) * inv;
      }
    }
    // Response Gram of the candidates without materialising the features
    // f_i = [a_pi (v_i - o_p), lambda a_pi]_p (P * (dv + 1) floats each):
    //   G_ij = <v_i, v_j> S_ij - (X_ij + X_ji) + sum_p a_pi a_pj (|o_p|^2 +
    //   lambda^2),  S = A A', X_ij = sum_p a_pi <v_i, o_p> a_pj,
    // each term a Gram of C x P rows (X + X' = (Y+A)(Y+A)' - Y Y' - A A'
    // with Y_ip = a_pi <v_i, o_p>).
    const size_t Pp = RoundUp(P, 16);
    float* A = ws;  // [C][Pp] a_pi
    float* Y = A + C * Pp;
    float* YA = Y + C * Pp;
    float* Dm = YA + C * Pp;
    ws = Dm + C * Pp;
    double vnorm = 0;
    for (size_t ci = 0; ci < C; ++ci) {
      const float* vi = Vc + ci * vs;
      double vn = 0;
      for (size_t c = 0; c < cfg_.dv; ++c) vn += double(vi[c]) * vi[c];
      vnorm += std::sqrt(vn);
    }
    const double lambda = vnorm / double(C) + 1e-6;
    // <v_i, o_p> for every candidate and probe (one MatVec per probe), and
    // the per-probe factor sqrt(|o_p|^2 + lambda^2).
    float* vo = ws;             // [P][C]
    float* onorm = vo + P * C;  // [P]
    ws = onorm + RoundUp(P, 16);
    for (size_t p = 0; p < P; ++p) {
      const float* o = pN + p * vs;
      MatVec(Vc, C, cfg_.dv, vs, o, vo + p * C);
      double oo = 0;
      for (size_t c = 0; c < cfg_.dv; ++c) oo += double(o[c]) * o[c];
      onorm[p] = float(std::sqrt(oo + lambda * lambda));
    }
    for (size_t ci = 0; ci < C; ++ci) {
      for (size_t p = 0; p < Pp; ++p) {
        float ap = 0, y = 0, dm = 0;
        if (p < P) {
          ap = a[p * C + ci];
          y = ap * vo[p * C + ci];
          dm = ap * onorm[p];
        }
        A[ci * Pp + p] = ap;
        Y[ci * Pp + p] = y;
        YA[ci * Pp + p] = y + ap;
        Dm[ci * Pp + p] = dm;
      }
    }
    const size_t gs = GramStride(C);
    float* gram = ws;
    ws += GramRows(C) * gs;
    float* tmp = ws;  // a second Gram, then the factor L, then H
    ws += GramRows(C) * gs;
    float* gscratch = ws;
    ws += GramScratchFloats(C, std::max(Pp, vs));
    auto add = [&](float sign) {
      for (size_t i = 0; i < C; ++i)
        for (size_t j = 0; j <= i; ++j)
          gram[i * gs + j] += sign * tmp[i * gs + j];
    };
    GramLower(A, C, P, Pp, gram, gscratch);        // S
    GramLower(Vc, C, cfg_.dv, vs, tmp, gscratch);  // <v_i, v_j>
    for (size_t i = 0; i < C; ++i)
      for (size_t j = 0; j <= i; ++j) {
        const float sij = gram[i * gs + j];
        gram[i * gs + j] = tmp[i * gs + j] * sij + sij;  // + S for X + X'
      }
    GramLower(YA, C, P, Pp, tmp, gscratch);
    add(-1.0f);
    GramLower(Y, C, P, Pp, tmp, gscratch);
    add(1.0f);
    GramLower(Dm, C, P, Pp, tmp, gscratch);
    add(1.0f);
    float* L = tmp;  // keep * RoundUp(C, 16) <= GramRows(C) * gs
    float* diag = ws;
    ws += RoundUp(C, 16);
    uint32_t* piv = reinterpret_cast<uint32_t*>(ws);
    ws += RoundUp(C, 16);
    size_t rank = PivotedCholesky(gram, C, gs, keep, 1e-7f, L, RoundUp(C, 16),
                                  diag, piv, nullptr);
    if (rank > 0 && rank < keep) {
      // The probes are explained by fewer items: keep the newest of the
      // others too (free only what is needed; future queries differ).
      for (size_t ci = C; ci-- > 0 && rank < keep;) {
        bool chosen = false;
        for (size_t a = 0; a < rank && !chosen; ++a) chosen = piv[a] == ci;
        if (!chosen) piv[rank++] = uint32_t(ci);
      }
    }
    uint8_t* drop = reinterpret_cast<uint8_t*>(ws);
    ws += RoundUp(rows_.cap, 64) / 4;
    std::memset(drop, 0, n);
    for (size_t ci = 0; ci < C; ++ci) drop[cand[ci]] = 1;
    if (rank == 0) {
      // The probes see none of the old items: drop the oldest.
      for (size_t ci = drop_target; ci < C; ++ci) drop[cand[ci]] = 0;
    } else {
      // Weights: min |sum_{a in S} w_a f_a - sum_j f_j|^2, w >= 0, with a
      // small ridge towards w = 1 (each kept item stands at least for itself).
      auto G = [&](size_t i, size_t j) {
        return i >= j ? gram[i * gs + j] : gram[j * gs + i];
      };
      const size_t ss = RoundUp(rank, 16);
      float* H = tmp;  // the factor L is no longer needed
      float* b = ws;
      float* w = b + ss;
      float* w0 = w + ss;
      float* grad = w0 + ss;
      double mean_diag = 0;
      for (size_t a = 0; a < rank; ++a) {
        for (size_t c = 0; c < rank; ++c) H[a * ss + c] = G(piv[a], piv[c]);
        double s = 0;
        for (size_t j = 0; j < C; ++j) s += G(piv[a], j);
        b[a] = float(s);
        w[a] = w0[a] = 1.0f;
        mean_diag += H[a * ss + a];
      }
      const float ridge = cfg_.risk_ridge * float(mean_diag / double(rank));
      NonNegativeLeastSquares(H, rank, ss, b, ridge, w0, cfg_.risk_iterations,
                              1e-4f, w, grad);
      for (size_t a = 0; a < rank; ++a) {
        const size_t i = cand[piv[a]];
        if (w[a] > 0.0f) {
          drop[i] = 0;
          // Within [-80, 80]: what a saved state may hold (CheckState).
          logw_[i] = F32ToF16Bits(
              std::min(80.0f, std::max(-80.0f, lw[i] + std::log(w[a]))));
        }
      }
    }
    // Remove the dropped items, keeping the insertion order.
    size_t out = 0;
    for (size_t i = 0; i < count_; ++i) {
      if (drop[i]) continue;
      if (out != i) {
        rows_.Move(out, i);
        logw_[out] = logw_[i];
      }
      ++out;
    }
    const size_t freed = count_ - out;
    count_ = out;
    ++compactions_;
    return freed > 0;
  }

  static size_t RoundUp(size_t x, size_t a) { return (x + a - 1) / a * a; }
  // out [P][C] = <q_p, k_c> over padded rows of ks_ floats.
  void MatMulRows(const float* q, size_t P, const float* k, size_t C,
                  float* out) const {
    for (size_t p = 0; p < P; ++p)
      MatVec(k, C, cfg_.dk, ks_, q + p * ks_, out + p * C);
  }

  Method mode_;
  RowStore rows_;
  uint32_t* seq_ = nullptr;
  float* score_ = nullptr;
  uint16_t* logw_ = nullptr;     // risk: log-weights in f16
  uint16_t* probe_q_ = nullptr;  // [probes_cap_][dk] f16
  uint32_t* probe_pos_ = nullptr;
  size_t count_ = 0, protect_ = 0, attended_ = 0;
  size_t probes_cap_ = 0, probe_count_ = 0, probe_head_ = 0;
  uint64_t offered_ = 0;   // queries offered to the probe reservoir
  uint64_t next_seq_ = 1;  // h2o / tova: < 2^32 (renumbered before)
  uint64_t compactions_ = 0;
};

}  // namespace

size_t SelectiveWorkspaceFloats(const SketchConfig& c) {
  auto up = [](size_t x) { return (x + 15) / 16 * 16; };
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  const size_t rows = c.budget_bytes / StateRowBytes(c);
  const size_t P0 = ProbeCount(c, rows);
  const size_t cap = PoolCapacity(c, c.budget_bytes, P0);
  const size_t P = P0 * (c.rope_theta > 0.0f ? kHorizonCount : 1);
  const size_t attend = c.max_group * cap + cap;
  if (c.method != Method::kRisk) return attend + 64;
  const size_t C = std::min(cap, MaxCandidates(c));
  const size_t Pp = up(P);
  const size_t compact =
      2 * up(cap) + P * ks + 2 * P + P * vs + 2 * P * C + up(P) +
      C * (ks + vs) + 2 * kMaxGroup + kMaxGroup * vs + 4 * C * Pp +
      2 * GramRows(C) * GramStride(C) + GramScratchFloats(C, std::max(Pp, vs)) +
      2 * up(C) + up(cap) / 4 + 16 + 4 * up(C) + 64;
  return std::max(attend, compact) + 64;
}

std::unique_ptr<Sketch> MakeSelective(const SketchConfig& c, Arena& a,
                                      size_t rows) {
  return std::unique_ptr<Sketch>(new SelectiveSketch(c, a, rows));
}

}  // namespace kvsketch
