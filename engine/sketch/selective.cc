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
#include <cstdlib>
#include <cstring>
#include <limits>

#include "arch/attend.h"
#include "arch/balance.h"  // GramLowerTransposed, GramRows, GramStride
#include "arch/convert.h"  // probes in f16
#include "arch/dot.h"      // MatMulTransposed
#include "arch/random.h"   // CounterHash
#include "arch/risk.h"
#include "arch/targets.h"  // PaddedCols
#include "engine/sketch/methods.h"
#include "engine/sketch/pool.h"
#include "engine/sketch/rope_angles.h"
#include "engine/sketch/scratch.h"

namespace kvsketch {
namespace {

// risk frees 1/kDropDiv of the old items per compaction round, and runs
// rounds (one pass of the probes over the pool) until 1/kEpochDiv of the
// pool is free.
constexpr size_t kDropDiv = 16;
constexpr size_t kEpochDiv = 32;
// Epochs of at least this many items (pools of kGridMin * kEpochDiv items
// and more) run on a grid of tokens (see Evict).
constexpr size_t kGridMin = 16;
// Half of the probes sample all older queries (a reservoir), half are the
// most recent: the selection serves queries that recur, not only the last.
constexpr bool kOldProbes = true;
// Compactions with fewer candidates than kFewCandidates in a pool of at
// least kFewProbesPool items use max(kFewProbesMin, candidates) of the stored
// probes (evenly spaced over the ring and the reservoir). There the summary
// holds most of the pool, a compaction frees one item and its probes' pass
// over the whole pool (n x P row-queries, P up to 96 with RoPE) is paid about
// once per token; the selection among C candidates is a C x C Gram.
constexpr size_t kFewCandidates = 32;
constexpr size_t kFewProbesPool = 256;
constexpr size_t kFewProbesMin = 8;
// Future offsets (in units of the protected window) at which probes are
// evaluated when the RoPE is known: now, one window ahead, four windows ahead.
constexpr double kHorizons[] = {0.0, 1.0, 4.0};
constexpr size_t kHorizonCount = sizeof(kHorizons) / sizeof(kHorizons[0]);

// sum_i x_i^2 in double (each square exact), four chains (one chain's
// add latency made the norms of a compaction's candidates and probes a
// quarter of Compact's own time).
double SumSquares(const float* x, size_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += double(x[i]) * x[i];
    a1 += double(x[i + 1]) * x[i + 1];
    a2 += double(x[i + 2]) * x[i + 2];
    a3 += double(x[i + 3]) * x[i + 3];
  }
  for (; i < n; ++i) a0 += double(x[i]) * x[i];
  return (a0 + a1) + (a2 + a3);
}

// Copies rows [from, n) of the lower triangle of an n x n matrix (rows
// `stride` apart) into the upper triangle, in 16 x 16 tiles (each tile's
// stores stay in a few lines).
void MirrorLower(float* g, size_t from, size_t n, size_t stride) {
  constexpr size_t kB = 16;
  for (size_t i0 = from; i0 < n; i0 += kB)
    for (size_t j0 = 0; j0 <= i0; j0 += kB)
      for (size_t i = i0; i < std::min(i0 + kB, n); ++i)
        for (size_t j = j0; j < std::min(j0 + kB, i); ++j)
          g[j * stride + i] = g[i * stride + j];
}

size_t ProbeCount(const SketchConfig& c, size_t rows) {
  if (c.method != Method::kRisk) return 0;
  if (c.probes) return c.probes;
  return std::min<size_t>(32, std::max<size_t>(4, rows / 5));
}

size_t MaxCandidates(const SketchConfig& c) {
  return std::max<size_t>(8, 2 * c.block);
}

// The pool: rows, then per item h2o / tova's insertion number (u32) and
// accumulated attention (f32), or risk's log-weight (f16; risk keeps its
// pool in insertion order, stable removal; a summary slot's log-mass is
// rounded stochastically, see RoundLogMass). Probes are stored in f16 (they
// only steer the selection) with their position (u32). At head_dim 8 a row
// is 64 bytes, so every metadata byte counts.
constexpr size_t kColLogW = 0;                // risk
constexpr size_t kColSeq = 0, kColScore = 1;  // h2o, tova
constexpr size_t kExtraProbeQ = 0, kExtraProbePos = 1;
PoolLayout SelectiveLayout(const SketchConfig& c, size_t probes) {
  PoolLayout l("pool", c);
  if (c.method == Method::kRisk) {
    l.AddColumn("log-weights (f16)", 2);
  } else {
    l.AddColumn("positions", 4);
    l.AddColumn("scores", 4);
  }
  if (probes) {
    l.AddExtra("probe queries (f16)", probes * c.dk * 2);
    l.AddExtra("probe positions", probes * 4);
  }
  return l;
}

// RoPE frequencies theta^(-2i/dims) of the rotated pairs (freq [dims/2]).
size_t RopeFrequencies(const SketchConfig& c, double* freq) {
  const size_t dims = c.rope_dims ? std::min(c.rope_dims, c.dk) : c.dk;
  for (size_t i = 0; i < dims / 2; ++i)
    freq[i] = std::pow(double(c.rope_theta), -2.0 * double(i) / double(dims));
  return dims / 2;
}

// Rotates a post-RoPE query (same layout as the keys) by the angles a + b
// of each pair, given their cosines and sines.
void RotateForward(float* q, const SketchConfig& c, const double* ac,
                   const double* as, const double* bc, const double* bs,
                   size_t pairs) {
  for (size_t i = 0; i < pairs; ++i) {
    const float cs = float(ac[i] * bc[i] - as[i] * bs[i]);
    const float sn = float(as[i] * bc[i] + ac[i] * bs[i]);
    const size_t i0 = c.rope_interleaved ? 2 * i : i;
    const size_t i1 = c.rope_interleaved ? 2 * i + 1 : i + pairs;
    const float x = q[i0], y = q[i1];
    q[i0] = x * cs - y * sn;
    q[i1] = x * sn + y * cs;
  }
}

size_t RoundUp16(size_t x) { return (x + 15) / 16 * 16; }
// Rows of the Cholesky factor: 16 floats past whole vectors, so the rows
// (read as columns at every step) do not share a few cache sets as rows a
// power of two of bytes apart do (measured 8 % faster at 128 candidates).
size_t CholeskyStride(size_t C) { return RoundUp16(C) + 16; }

// risk: the summary's share of the pool follows the attention share the
// queries pay it (a running mean over about kShareWindow queries), within
// [kSummaryMin, kSummaryMax] (the summary never reaches the protected
// window: see SummaryTarget).
constexpr double kSummaryMin = 1.0 / 32;
constexpr double kSummaryMax = 0.75;
constexpr double kShareWindow = 1024;
// Most summary slots: a merge searches them all (O(slots * d) per token).
constexpr size_t kSummaryMaxSlots = 256;
// risk: most slots of the summary of dropped tokens.
size_t SummaryCapacity(const SketchConfig& c, size_t cap) {
  if (c.method != Method::kRisk || !c.risk_summary || cap < 8) return 0;
  return std::min(kSummaryMaxSlots, size_t(kSummaryMax * double(cap)));
}

// Scratch of one compaction, declared once (scratch.h): sizing (at the
// largest P and C) and carving (at the actual ones) run the same code, so
// the size always covers the pointers. Every array starts 16 floats apart.
struct CompactScratch {
  uint32_t* cand;  // [cap] candidate indices
  float* lw;       // [cap] log-weights of the pool (f32)
  float* lwc;      // [Cs] log-weights of the candidates
  float* q;        // [P][ks] probe queries (rotated)
  float* pm;       // [P] probe partials over everything retained
  float* pz;       // [P]
  float* pN;       // [P][vs] -> o_p
  // The probes' pass (the same bytes as Kt .. tmp below):
  float* tm;       // [P] the probes' partials over the pool (first the
  float* tz;       // [P]  sinks' scratch, 16 probes at a time)
  float* tN;       // [P][vs]
  float* many;     // AttendMany's scratch
  double* powers;  // [32][2][dk / 2] AnglePowers (before the pass: the same
                   // bytes as tm .. many)
  float* row;      // [ks + vs] one candidate's rows
  float* Kt;       // [dk][Cs] candidate keys, transposed
  float* Vt;       // [dv][Cs] candidate values, transposed
  float* a;        // [P][Cs] attention of probe p to candidate c
  float* vo;       // [P][Cs] <v_c, o_p>
  float* onorm;    // [P] sqrt(|o_p|^2 + lambda^2)
  float* cp;       // [P] c_p of B1, B2 (fixed for an epoch)
  float* B1;       // [P][Cs] (U + c A) / sqrt(2 c), U = a (<v, o> - w / 2)
  float* B2;       // [P][Cs] (U - c A) / sqrt(2 c)
  float* gram;     // [GramRows(C)][GramStride(C)]
  float* tmp;      // a second Gram, then the factor L, then H
  float* rowsum;   // [Cs] row sums of the response Gram
  float* diag;     // [2 Cs] (PivotedCholesky scratch)
  uint32_t* piv;   // [Cs]
  float* nnls;     // [4][RoundUp(C, 16)] b, w, w0, grad (no summary); with
                   // a summary, the factorization's items by position
                   // (PivotedCholesky's piv) for the next round to resume,
                   // then each candidate's column in the next round
  uint8_t* drop;   // [cap]
  float* sk;       // [S][ks] keys of the summary slots (f32), [S] masses,
                   // [S] squared key norms, [S] dot products (SummaryKeys)
  float* mrow;     // [ks + vs] a slot being merged
  // Later rounds of an epoch: the new candidates (at most N = the most one
  // round drops, padded to 16).
  float* xk;           // [dk][N] keys, transposed
  float* xv;           // [dv][N] values, transposed
  float* xa;           // [P][N]
  float* xvo;          // [P][N]
  float* xr;           // [N][xr_stride] one term's new columns as rows
  float* o1;           // [N][Cs] new Gram rows of one term
  float* o2;           // [N][Cs]
  uint32_t* kept_pos;  // [Cs] pool indices of the survivors
  float* keepc;        // [Cs] 1 for a surviving candidate column, else 0
  size_t xr_stride;

  CompactScratch(ScratchCarver& sc, size_t cap, size_t P, size_t C, size_t dk,
                 size_t dv, size_t ks, size_t vs, size_t S) {
    auto take = [&](size_t n) { return sc.Take(n); };
    const size_t Cs = GramStride(C);
    cand = reinterpret_cast<uint32_t*>(take(cap));
    lw = take(cap);
    lwc = take(Cs);
    q = take(P * ks);
    pm = take(P);
    pz = take(P);
    pN = take(P * vs);
    row = take(ks + vs);
    // The probe rotations' powers are done with before the probes' pass
    // (tm .. many), which is over before the rounds' arrays (Kt .. tmp) are
    // first written: one region holds each in turn.
    float* region = sc.Rest();
    ScratchCarver pass(region);
    tm = pass.Take(P);
    tz = pass.Take(P);
    tN = pass.Take(P * vs);
    many = pass.Take(AttendManyScratchFloats(P, dk, dv, ks, vs));
    ScratchCarver rotation(region);
    powers = rotation.Take<double>(32 * dk);
    ScratchCarver rounds(region);
    Kt = rounds.Take(dk * Cs);
    Vt = rounds.Take(dv * Cs);
    a = rounds.Take(P * Cs);
    vo = rounds.Take(P * Cs);
    onorm = rounds.Take(P);
    cp = rounds.Take(P);
    B1 = rounds.Take(P * Cs);
    B2 = rounds.Take(P * Cs);
    gram = rounds.Take(GramRows(C) * Cs);
    tmp = rounds.Take(std::max(GramRows(C) * Cs, C * CholeskyStride(C)));
    take(std::max({pass.floats(), rounds.floats(), rotation.floats()}));
    rowsum = take(Cs);
    diag = take(2 * Cs);
    piv = reinterpret_cast<uint32_t*>(take(Cs));
    nnls = take(4 * RoundUp16(C));
    drop = reinterpret_cast<uint8_t*>(take((cap + 3) / 4));
    sk = take(S * ks + 3 * S);
    mrow = take(ks + vs);
    const size_t N = RoundUp16(std::max<size_t>(1, C / kDropDiv));
    xk = take(dk * N);
    xv = take(dv * N);
    xa = take(P * N);
    xvo = take(P * N);
    xr_stride = RoundUp16(std::max(P, dv));
    xr = take(N * xr_stride);
    o1 = take(N * Cs);
    o2 = take(N * Cs);
    kept_pos = reinterpret_cast<uint32_t*>(take(Cs));
    keepc = take(Cs);
  }
};

// Attend: h2o / tova keep every query's raw scores [G][cap] for Observe;
// risk the pool's log-weights and the summary's partials (Observe reads
// them for the summary's share).
struct AttendScratch {
  float* scores = nullptr;                            // h2o / tova [G][cap]
  float* lw = nullptr;                                // risk [cap]
  float *sm = nullptr, *sz = nullptr, *sN = nullptr;  // [kMaxGroup](x vs)
  AttendScratch(ScratchCarver& s, bool risk, size_t cap, size_t G, size_t vs) {
    if (!risk) {
      scores = s.Take(G * cap);
      return;
    }
    lw = s.Take(cap);
    sm = s.Take(kMaxGroup);
    sz = s.Take(kMaxGroup);
    sN = s.Take(kMaxGroup * vs);
  }
};
// risk without a compaction (DropOldest): the summary's keys, masses,
// norms and dots (LoadSummaryKeys), a row being merged and its neighbour.
struct DropScratch {
  float *sk, *row, *tmp;
  DropScratch(ScratchCarver& s, size_t S, size_t ks, size_t vs)
      : sk(s.Take(S * (ks + 3))), row(s.Take(ks + vs)), tmp(s.Take(ks + vs)) {}
};
// One item's rows (DropNewest); the items' order (Renumber).
struct RowScratch {
  float *k, *v;
  RowScratch(ScratchCarver& s, size_t ks, size_t vs)
      : k(s.Take(ks)), v(s.Take(vs)) {}
};
struct RenumberScratch {
  uint32_t* idx;
  RenumberScratch(ScratchCarver& s, size_t cap) : idx(s.Take<uint32_t>(cap)) {}
};

class SelectiveSketch final : public Sketch {
 public:
  SelectiveSketch(const SketchConfig& c, Arena& a, size_t rows)
      : Sketch(c, a, 0), mode_(c.method) {
    next_seq_ =
        std::max<uint64_t>(1, std::min<uint64_t>(c.first_seq, UINT32_MAX));
    probes_cap_ = ProbeCount(c, rows);
    const PoolLayout layout = SelectiveLayout(c, probes_cap_);
    const size_t cap = layout.Capacity(RemainingBytes());
    pool_ = ItemPool(layout, a, cap);
    if (cap) {
      if (mode_ == Method::kRisk) {
        logw_ = pool_.Column<uint16_t>(kColLogW);
      } else {
        seq_ = pool_.Column<uint32_t>(kColSeq);
        score_ = pool_.Column<float>(kColScore);
      }
    }
    if (probes_cap_ && cap) {
      probe_q_ = pool_.Extra<uint16_t>(kExtraProbeQ);
      probe_pos_ = pool_.Extra<uint32_t>(kExtraProbePos);
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
    summary_cap_ = SummaryCapacity(c, cap);
  }

  std::string Describe() const override {
    return Sketch::Describe() + " pool=" + std::to_string(pool_.rows().cap) +
           " window=" + std::to_string(protect_) +
           (probes_cap_ ? " probes=" + std::to_string(probes_cap_) : "") +
           (summary_cap_ ? " summary=" + std::to_string(summary_) + "/" +
                               std::to_string(summary_cap_)
                         : "");
  }

 protected:
  void Evict(const float* k, const float* v, float* ws) override {
    const size_t cap = pool_.rows().cap;
    if (cap == 0) return;
    if (mode_ == Method::kRisk) {
      // Compactions free K = cap / kEpochDiv items per epoch and run on a
      // grid of K tokens (when fewer than K slots are free), so every head
      // of a layer compacts on the same tokens and a layer's heads split
      // evenly across threads. (Triggered only by a full pool, each head's
      // epochs drift to tokens of their own after the first: one head in
      // eight compacted per token and a second thread sped appends up
      // 1.05x.) A pool that fills between grid points compacts at once.
      const size_t K = std::max<size_t>(1, cap / kEpochDiv);
      const size_t free = cap - pool_.count();
      if (free == 0) {
        if (probe_count_ == 0 || !Compact(ws, K)) DropOldest(ws);
      } else if (K >= kGridMin && free < K && probe_count_ &&
                 tokens_ % K == 0) {
        Compact(ws, K - free);
      }
      Put(pool_.Push(), k, v, ws);
      return;
    }
    if (pool_.count() < cap) {
      Put(pool_.Push(), k, v, ws);
      return;
    }
    Put(Victim(), k, v, ws);
  }

  void AttendCompressed(const float* qp, size_t G, float* m, float* z, float* N,
                        float* ws) override {
    attended_ = pool_.count();
    if (pool_.count() == 0) {
      EmptyPartial(G, m, z);
      return;
    }
    // risk needs no per-item scores (its log-weights go to the scratch);
    // h2o / tova keep the raw scores [G][n] there for Observe.
    ScratchCarver carver(ws);
    const AttendScratch s(carver, mode_ == Method::kRisk, pool_.rows().cap, G,
                          vs_);
    if (mode_ == Method::kRisk) {
      const float* lw = LogW(s.lw);
      const size_t S = summary_;
      float *sm = s.sm, *sz = s.sz, *sN = s.sN;  // the summary's partials
      if (S == 0) {
        for (size_t g = 0; g < G; ++g) sz[g] = 0.0f, sm[g] = 0.0f;
        AttendGroup(pool_.rows().KView(0, pool_.count()),
                    pool_.rows().VView(0, pool_.count()), lw, qp, G, cfg_.scale,
                    m, z, N);
      } else {
        AttendGroup(pool_.rows().KView(0, S), pool_.rows().VView(0, S), lw, qp,
                    G, cfg_.scale, sm, sz, sN);
        if (pool_.count() > S) {
          AttendGroup(pool_.rows().KView(S, pool_.count() - S),
                      pool_.rows().VView(S, pool_.count() - S), lw + S, qp, G,
                      cfg_.scale, m, z, N);
        } else {
          EmptyPartial(G, m, z);
        }
        // The summary's own partial (sm, sz) stays for the share estimate:
        // MergePartials reads its source and writes only the first partial.
        for (size_t g = 0; g < G; ++g) {
          MergePartials(m + g, z + g, N + g * vs_, sm[g], sz[g], sN + g * vs_,
                        vs_);
        }
      }
    } else {
      AttendGroup(pool_.rows().KView(0, pool_.count()),
                  pool_.rows().VView(0, pool_.count()), nullptr, qp, G,
                  cfg_.scale, m, z, N, s.scores);
    }
    if (probes_cap_ && learning_) {
      const uint32_t pos = uint32_t(cfg_.rope_first_position + tokens_ - 1);
      for (size_t g = 0; g < G; ++g) AddProbe(qp + g * ks_, pos);
    }
  }

  // Attention weight of every pool item, from the raw scores in ws [G][n]
  // and the final partials.
  void Observe(const float* m, const float* z, size_t G, float* ws) override {
    const size_t n = attended_;
    if (mode_ == Method::kRisk && n) {
      ScratchCarver carver(ws);
      const AttendScratch s(carver, true, pool_.rows().cap, G, vs_);
      const float* sm = s.sm;
      const float* sz = s.sz;
      for (size_t g = 0; g < G; ++g) {
        const double share =
            z[g] > 0.0f && sz[g] > 0.0f
                ? double(sz[g]) * std::exp(double(sm[g]) - m[g]) / z[g]
                : 0.0;
        ++share_n_;
        const double rate =
            std::max(1.0 / double(share_n_), 1.0 / kShareWindow);
        share_ += rate * (share - share_);
      }
    }
    if (n == 0 || score_ == nullptr) return;
    ScratchCarver carver(ws);
    float* scores =
        AttendScratch(carver, false, pool_.rows().cap, G, vs_).scores;
    const float decay = mode_ == Method::kTova ? 0.0f : cfg_.decay;
    const float norm = mode_ == Method::kTova ? 1.0f / float(G) : 1.0f;
    for (size_t i = 0; i < n; ++i) score_[i] *= decay;
    for (size_t g = 0; g < G; ++g) {
      if (!(z[g] > 0.0f)) continue;
      const float inv = norm / z[g];
      float* s = scores + g * n;  // raw -> weights, in place (SIMD exp)
      for (size_t i = 0; i < n; ++i) s[i] = std::max(s[i] - m[g], -87.0f);
      ExpArray(s, s, n);
      for (size_t i = 0; i < n; ++i) score_[i] += s[i] * inv;
    }
  }

  size_t CompressedRetained() const override { return pool_.count(); }
  // The newest pool items, untouched: risk's pool is in insertion order and
  // its protected tail is never compacted; h2o / tova put new items in
  // victims' slots once full, so only a tail in insertion order counts.
  size_t NewestVerbatim() const override {
    const size_t limit = std::min(protect_, pool_.count() - summary_);
    if (mode_ == Method::kRisk) return limit;
    size_t k = 0;
    while (k < limit &&
           uint64_t(seq_[pool_.count() - 1 - k]) + 1 + k == next_seq_)
      ++k;
    return k;
  }
  void DropNewest(size_t k, float* ws) override {
    ScratchCarver carver(ws);
    const RowScratch s(carver, ks_, vs_);
    float* kr = s.k;
    float* vr = s.v;
    for (size_t i = pool_.count() - k; i < pool_.count(); ++i) {
      // Their keys' norms leave the running sum (approximately: the rows as
      // stored; only the kernel temperature reads it, and no method of this
      // file does).
      pool_.rows().Get(i, kr, vr);
      key_norm_sum_ =
          std::max(0.0, key_norm_sum_ - std::sqrt(SumSquares(kr, cfg_.dk)));
    }
    pool_.set_count(pool_.count() - k);
    if (seq_) next_seq_ -= k;
    if (probes_cap_ == 0) return;
    if (tokens_ == 0) {
      probe_count_ = probe_head_ = 0;
      offered_ = 0;
      return;
    }
    // Probes asked after the new end keep their query, dated to the last
    // kept position.
    const uint32_t now = uint32_t(cfg_.rope_first_position + tokens_);
    for (size_t p = 0; p < probe_count_; ++p) {
      const uint32_t age = uint32_t(now - probe_pos_[p]);
      if (age == 0 || age > tokens_) probe_pos_[p] = now - 1;
    }
  }

  // h2o / tova: the scratch holds scores for one group's queries.
  size_t MaxQueriesPerPass() const override {
    return mode_ == Method::kRisk ? kMaxGroup : cfg_.max_group;
  }

  void SaveScalars(StateWriter& w) const override {
    Sketch::SaveScalars(w);
    pool_.Save(w);
    w.Put<uint64_t>(next_seq_);
    w.Put<uint64_t>(probe_count_);
    w.Put<uint64_t>(probe_head_);
    w.Put<uint64_t>(offered_);
    if (mode_ == Method::kRisk) {
      w.Put<uint64_t>(summary_);
      w.Put<double>(share_);
      w.Put<uint64_t>(share_n_);
      w.Put<uint64_t>(merges_);
    }
  }
  void LoadScalars(StateReader& r) override {
    Sketch::LoadScalars(r);
    pool_.Load(r, "pool");
    next_seq_ = r.Get<uint64_t>();
    probe_count_ = r.GetAtMost<uint64_t>(probes_cap_, "probe count");
    probe_head_ =
        r.GetAtMost<uint64_t>(probes_cap_ ? probes_cap_ - 1 : 0, "probe head");
    offered_ = r.Get<uint64_t>();
    if (mode_ == Method::kRisk) {
      summary_ = r.GetAtMost<uint64_t>(summary_cap_, "summary slots");
      share_ = r.Get<double>();
      share_n_ = r.Get<uint64_t>();
      merges_ = r.Get<uint64_t>();
    }
  }
  void CheckState(const StagedState& st) const override {
    Sketch::CheckState(st);
    if (pool_.count() > tokens_)
      InvalidState("pool count (more items than tokens)");
    if (summary_ > pool_.count())
      InvalidState("summary slots (more than the pool)");
    if (!(share_ >= 0.0 && share_ <= 1.0)) InvalidState("summary share");
    if (share_n_ > queries_) InvalidState("summary share count");
    pool_.CheckRows(st, RowLimit(), "pool");
    if (seq_) {
      // h2o / tova: per-item numbers are 32-bit copies below next_seq_.
      if (next_seq_ == 0 || next_seq_ > UINT32_MAX ||
          next_seq_ <= pool_.count())
        InvalidState("pool sequence counter");
      for (size_t i = 0; i < pool_.count(); ++i) {
        const uint32_t s = st.At(seq_, i);
        if (s == 0 || s >= next_seq_)
          InvalidState("pool sequence number [" + std::to_string(i) + "]");
        const float sc = st.At(score_, i);
        if (!(sc >= 0.0f) || !std::isfinite(sc))
          InvalidState("pool attention score [" + std::to_string(i) + "]");
      }
    }
    if (logw_) {
      for (size_t i = 0; i < pool_.count(); ++i) {
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
    pool_.rows().Put(i, k, v);
    if (seq_) seq_[i] = uint32_t(next_seq_);
    ++next_seq_;
    if (score_) score_[i] = 0.0f;
    if (logw_) logw_[i] = 0;  // f16 +0
  }
  // risk's log-weights of the pool in f32 (into dst [pool_.count()]).
  const float* LogW(float* dst) const {
    ConvertRowToF32(Storage::kF16, logw_, dst, pool_.count());
    return dst;
  }
  // h2o / tova: before the 32-bit per-item numbers would wrap, the items
  // get 1..n in their order (slot `skip`, about to be overwritten, drops
  // out). O(n log n) in the scratch (no allocation), once per ~4e9 tokens.
  void Renumber(size_t skip, float* ws) {
    ScratchCarver carver(ws);
    uint32_t* idx = RenumberScratch(carver, pool_.count()).idx;
    size_t n = 0;
    for (size_t i = 0; i < pool_.count(); ++i)
      if (i != skip) idx[n++] = uint32_t(i);
    std::sort(idx, idx + n,
              [&](uint32_t a, uint32_t b) { return seq_[a] < seq_[b]; });
    for (size_t r = 0; r < n; ++r) seq_[idx[r]] = uint32_t(r + 1);
    next_seq_ = uint64_t(n) + 1;
  }
  // The newest protect_ items (risk's pool is in insertion order).
  bool Protected(size_t i) const {
    return seq_ ? uint64_t(seq_[i]) + protect_ >= next_seq_
                : i + protect_ >= pool_.count();
  }
  // risk without a usable compaction (no probes yet, e.g. a prefill without
  // queries, or nothing old): the oldest items leave, 1/32 of the pool at a
  // time so the stable shift costs O(32 rows) per token.
  void DropOldest(float* ws) {
    // With a summary, the oldest become its slots while there is room and
    // below the protected window; then d of them merge into it.
    if (summary_cap_) {
      const size_t unprotected =
          pool_.count() > protect_ ? pool_.count() - protect_ : 0;
      const size_t target = SummaryTarget();
      while (summary_ < target && summary_ < unprotected) ++summary_;
    }
    const size_t old = pool_.count() - summary_;
    const size_t d = std::min(old, std::max<size_t>(1, pool_.rows().cap / 32));
    if (summary_ && d) {
      ScratchCarver carver(ws);
      const DropScratch s(carver, summary_cap_, ks_, vs_);
      float *sk = s.sk, *row = s.row, *tmp = s.tmp;
      LoadSummaryKeys(sk, row);
      for (size_t i = summary_; i < summary_ + d; ++i) {
        pool_.rows().Get(i, row, row + ks_);
        MergeIntoSummary(row, F16BitsToF32(logw_[i]), sk, tmp);
      }
    }
    // d >= 1: the pool is full here and the summary holds at most 3/4 of
    // it (summary_cap_, checked at load).
    pool_.Erase(summary_, summary_ + d, pool_.count());
    pool_.set_count(pool_.count() - d);
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
    for (size_t i = 0; i < pool_.count(); ++i) {
      if (seq_[i] < seq_[oldest]) oldest = i;
      if (Protected(i) || score_ == nullptr) continue;
      if (best == SIZE_MAX || score_[i] < score_[best] ||
          (score_[i] == score_[best] && seq_[i] < seq_[best]))
        best = i;
    }
    return best == SIZE_MAX ? oldest : best;
  }

  // Risk-guided compaction of the old items, an epoch of rounds that frees
  // about `goal` items; false when nothing is old.
  bool Compact(float* ws, size_t goal_items) {
    const size_t vs = vs_, n = pool_.count(), dk = cfg_.dk, dv = cfg_.dv;
    // Each stored probe is used at kHorizons future offsets (with RoPE).
    const size_t H = cfg_.rope_theta > 0.0f ? kHorizonCount : 1;
    // Candidates: the oldest old items (at most MaxCandidates; the pool is
    // in insertion order).
    const size_t cmax = std::min(pool_.rows().cap, MaxCandidates(cfg_));
    size_t C = 0;
    for (size_t i = summary_; i < n && C < cmax; ++i) C += !Protected(i);
    if (C == 0) return false;
    // The stored probes used (see kFewCandidates), P probe queries.
    const size_t used = C < kFewCandidates && n >= kFewProbesPool
                            ? std::min(probe_count_, std::max(kFewProbesMin, C))
                            : probe_count_;
    const size_t P = used * H;
    // Later rounds have at most as many candidates as the first.
    ScratchCarver carver(ws);
    const CompactScratch s(carver, pool_.rows().cap, P, C, dk, dv, ks_, vs,
                           summary_cap_);
    uint32_t* cand = s.cand;
    uint8_t* drop = s.drop;  // items leaving the pool (all rounds)
    std::memset(drop, 0, n);
    C = NextCandidates(cand, drop, cmax);
    const float* lw = LogW(s.lw);
    // An epoch of rounds shares the probes' pass over the pool: rounds free
    // candidates into the summary (its mass stays, so the probes' partials
    // stay valid to first order) until 1/kEpochDiv of the pool is free; the
    // pool is then compacted once. Without a summary (tiny pools), or when a
    // round makes new summary slots, that round is the last. Pools with
    // fewer old items than a round's candidates run one round (there, the
    // pass costs about what a round does, and several small rounds with the
    // same probes select worse: measured 14 % more error on the synthetic
    // workload at 64 tokens).
    const size_t goal = C == cmax ? std::max<size_t>(1, goal_items) : 1;
    size_t merged_total = 0;

    // Probe queries, rotated to a future position when RoPE is known.
    float* q = s.q;
    double freq[kMaxHeadDim / 2];
    const size_t pairs =
        cfg_.rope_theta > 0.0f ? RopeFrequencies(cfg_, freq) : 0;
    const uint32_t now32 = uint32_t(cfg_.rope_first_position + tokens_);
    // cos/sin of each horizon's offset (the same for every probe); a
    // probe's angle at horizon h is its age's angle plus that offset.
    double hc[kHorizonCount][kMaxHeadDim / 2],
        hs[kHorizonCount][kMaxHeadDim / 2];
    double ac[kMaxHeadDim / 2], as[kMaxHeadDim / 2];
    for (size_t h = 0; h < H && pairs; ++h) {
      const double horizon = kHorizons[h] * double(protect_ + 1);
      for (size_t i = 0; i < pairs; ++i) {
        hc[h][i] = std::cos(horizon * freq[i]);
        hs[h][i] = std::sin(horizon * freq[i]);
      }
    }
    // The stored probe of probe query p: p / H of the `used`, evenly spaced.
    auto source = [&](size_t p) { return p / H * probe_count_ / used; };
    // Positions are kept modulo 2^32: a probe's age is their difference,
    // and its angles come from the powers of two of the frequencies.
    if (pairs) {
      uint32_t oldest = 0;
      for (size_t p = 0; p < P; p += H)
        oldest = std::max(oldest, uint32_t(now32 - probe_pos_[source(p)]));
      AnglePowers(freq, pairs, AngleLevels(oldest), s.powers);
    }
    for (size_t p = 0; p < P; ++p) {
      const size_t src = source(p), h = p % H;
      ConvertRowToF32(Storage::kF16, probe_q_ + src * dk, q + p * ks_, dk);
      for (size_t x = dk; x < ks_; ++x) q[p * ks_ + x] = 0.0f;
      if (pairs == 0) continue;
      if (h == 0) {
        AgeAngles(uint32_t(now32 - probe_pos_[src]), s.powers, pairs, ac, as);
      }
      RotateForward(q + p * ks_, cfg_, ac, as, hc[h], hs[h], pairs);
    }
    // Probe partials over everything retained: sinks, then the pool.
    float* pm = s.pm;
    float* pz = s.pz;
    float* pN = s.pN;
    for (size_t p0 = 0; p0 < P; p0 += kMaxGroup) {
      const size_t g = std::min(kMaxGroup, P - p0);
      AttendSinks(q + p0 * ks_, g, pm + p0, pz + p0, pN + p0 * vs, s.tm, s.tz,
                  s.tN);
    }
    // All probes in one pass over the pool, each tile read once for all
    // (AttendMany: ~2x faster than passes of 16 probes at P = 96, d = 64).
    AttendMany(pool_.rows().KView(0, n), pool_.rows().VView(0, n), lw, q, P,
               cfg_.scale, s.tm, s.tz, s.tN, s.many);
    for (size_t p = 0; p < P; ++p) {
      MergePartials(pm + p, pz + p, pN + p * vs, s.tm[p], s.tz[p],
                    s.tN + p * vs, vs);
      const float inv = pz[p] > 0.0f ? 1.0f / pz[p] : 0.0f;
      for (size_t c = 0; c < vs; ++c) pN[p * vs + c] *= inv;  // o_p
    }
    // Fixed for the epoch: the stride of the candidate arrays (later rounds
    // have at most as many candidates as the first) and lambda and c_p (from
    // the first round's candidates). A later round's candidates are the
    // previous round's survivors (columns [0, carried), whose features and
    // Gram entries are unchanged: same probes, partials, lambda, c_p) and
    // the next oldest items, whose columns and Gram rows are computed new.
    const size_t Cs = GramStride(C);
    const size_t gs = Cs;
    float* Kt = s.Kt;
    float* Vt = s.Vt;
    float* a = s.a;
    float* vo = s.vo;
    float* gram = s.gram;
    float* tmp = s.tmp;
    size_t carried = 0;
    // The factorization (in tmp, rows ls apart for the epoch) and how many
    // of its pivots the next round may resume (see below).
    const size_t ls = CholeskyStride(C);
    size_t resume = 0;
    // (In the NNLS scratch: with a summary, rounds never reach the NNLS.)
    uint32_t* prev_piv = reinterpret_cast<uint32_t*>(s.nnls);
    uint32_t* remap = prev_piv + RoundUp16(C);
    // The summary's keys in f32, loaded once per compaction: merges keep
    // them current (in f32, before the stored rows round them), only new
    // slots make them stale. (Re-reading the rounded key after every merge
    // instead measured +3.5 % error on the synthetic workload at 128 tokens.)
    bool sk_loaded = false;
    auto load_sk = [&] {
      if (!sk_loaded) LoadSummaryKeys(s.sk, s.row);
      sk_loaded = true;
    };
    // Decoded candidate rows (stack: a compaction runs inside append).
    constexpr size_t kRowBlock = 8;
    alignas(64) float rows_buf[kRowBlock * 2 * kMaxHeadDim];
    for (;;) {  // rounds of the epoch
      const size_t drop_target = std::max<size_t>(1, C / kDropDiv);
      const size_t keep = C - drop_target;
      // Candidate rows, transposed (zero columns past C): the products below
      // are broadcast-FMA outer products. kRowBlock rows are decoded first,
      // so each transposed store covers kRowBlock consecutive floats (one
      // row's scattered stores, a cache line each, took a quarter of
      // Compact's own time at 235 items, d = 64). The first round also sums
      // the value norms here, in candidate order.
      double vnorm = 0;
      for (size_t b0 = carried; b0 < C; b0 += kRowBlock) {
        const size_t nb = std::min(kRowBlock, C - b0);
        for (size_t i = 0; i < nb; ++i) {
          float* r = rows_buf + i * 2 * kMaxHeadDim;
          pool_.rows().Get(cand[b0 + i], r, r + ks_);
          s.lwc[b0 + i] = lw[cand[b0 + i]];
          if (carried == 0) vnorm += std::sqrt(SumSquares(r + ks_, dv));
        }
        for (size_t x = 0; x < dk; ++x) {
          float* dst = Kt + x * Cs + b0;
          for (size_t i = 0; i < nb; ++i)
            dst[i] = rows_buf[i * 2 * kMaxHeadDim + x];
        }
        for (size_t x = 0; x < dv; ++x) {
          float* dst = Vt + x * Cs + b0;
          for (size_t i = 0; i < nb; ++i)
            dst[i] = rows_buf[i * 2 * kMaxHeadDim + ks_ + x];
        }
      }
      for (size_t x = 0; x < dk; ++x)
        std::fill(Kt + x * Cs + C, Kt + (x + 1) * Cs, 0.0f);
      for (size_t x = 0; x < dv; ++x)
        std::fill(Vt + x * Cs + C, Vt + (x + 1) * Cs, 0.0f);
      if (carried == 0) {
        const double lambda = vnorm / double(C) + 1e-6;
        for (size_t p = 0; p < P; ++p) {
          const float* o = pN + p * vs;
          s.onorm[p] = float(std::sqrt(SumSquares(o, dv) + lambda * lambda));
        }
      }
      // The new columns [carried, C) (all of them in the first round).
      const size_t c0 = carried, cn = C - carried;
      const size_t ns = carried ? RoundUp16(cn) : Cs;
      float* na = carried ? s.xa : a;  // [P][ns]
      float* nvo = carried ? s.xvo : vo;
      const float* nk = Kt;
      const float* nv = Vt;
      if (carried) {
        // The new candidates' rows, transposed and packed (zero padded).
        for (size_t x = 0; x < dk; ++x)
          for (size_t i = 0; i < ns; ++i)
            s.xk[x * ns + i] = i < cn ? Kt[x * Cs + c0 + i] : 0.0f;
        for (size_t x = 0; x < dv; ++x)
          for (size_t i = 0; i < ns; ++i)
            s.xv[x * ns + i] = i < cn ? Vt[x * Cs + c0 + i] : 0.0f;
        nk = s.xk;
        nv = s.xv;
      }
      // a_pc = exp(s_pc - m_p) / Z_p with s = scale <q_p, k_c> + logw_c.
      MatMulTransposed(q, P, dk, ks_, nk, cn, ns, na, ns);
      // <v_c, o_p> for every new candidate and probe.
      MatMulTransposed(pN, P, dv, vs, nv, cn, ns, nvo, ns);
      for (size_t p = 0; p < P; ++p) {
        float* ap = na + p * ns;
        if (!(pz[p] > 0.0f)) {
          std::fill(ap, ap + cn, 0.0f);
        } else {
          for (size_t i = 0; i < cn; ++i)
            ap[i] =
                std::max(cfg_.scale * ap[i] + s.lwc[c0 + i] - pm[p], -87.0f);
          ExpArray(ap, ap, cn);
          const float inv = 1.0f / pz[p];
          for (size_t i = 0; i < cn; ++i) ap[i] *= inv;
        }
        // Into the candidates' columns; zero past C.
        float* ar = a + p * Cs;
        float* vr = vo + p * Cs;
        if (carried) {
          std::copy(ap, ap + cn, ar + c0);
          std::copy(nvo + p * ns, nvo + p * ns + cn, vr + c0);
        }
        std::fill(ar + C, ar + Cs, 0.0f);
        std::fill(vr + C, vr + Cs, 0.0f);
        // U = a (<v, o> - w / 2) with w = |o|^2 + lambda^2; B1, B2 (see
        // below). c_p balances U and A (the norms' ratio over the first
        // round's candidates), so B1 B1' - B2 B2' cancels least.
        const float hw = 0.5f * s.onorm[p] * s.onorm[p];
        float* b1 = s.B1 + p * Cs;
        float* b2 = s.B2 + p * Cs;
        for (size_t ci = c0; ci < Cs; ++ci) b1[ci] = ar[ci] * (vr[ci] - hw);
        if (carried == 0) {
          const double uu = Dot(b1, b1, C), aa = Dot(ar, ar, C);
          const double c = aa > 0 && uu > 0 ? std::sqrt(uu / aa) : 1.0;
          s.cp[p] = float(std::min(1e30, std::max(1e-30, c)));
        }
        const float c = s.cp[p], sc = 1.0f / std::sqrt(2.0f * c);
        for (size_t ci = c0; ci < Cs; ++ci) {
          const float u = b1[ci], ca = c * ar[ci];
          b1[ci] = (u + ca) * sc;
          b2[ci] = (u - ca) * sc;
        }
      }
      // Response Gram of the candidates without materialising the features
      // f_i = [a_pi (v_i - o_p), lambda a_pi]_p (P * (dv + 1) floats each):
      //   G_ij = <v_i, v_j> S_ij - (X_ij + X_ji) + sum_p a_pi a_pj (|o_p|^2 +
      //   lambda^2),  S = A A', X_ij = sum_p a_pi <v_i, o_p> a_pj;
      // with w_p = |o_p|^2 + lambda^2 and U_pi = a_pi (<v_i, o_p> - w_p / 2)
      // the last two terms are -(U A' + A U') = B2 B2' - B1 B1', where
      // B1, B2 = (U +- c_p A) / sqrt(2 c_p): three Grams of C x P rows (S,
      // B1, B2) and one of C x dv, built transposed ([P][Cs]).
      if (carried == 0) {
        auto add = [&](float sign) {
          for (size_t i = 0; i < C; ++i)
            for (size_t j = 0; j <= i; ++j)
              gram[i * gs + j] += sign * tmp[i * gs + j];
        };
        GramLowerTransposed(a, C, P, gram);   // S
        GramLowerTransposed(Vt, C, dv, tmp);  // <v_i, v_j>
        for (size_t i = 0; i < C; ++i)
          for (size_t j = 0; j <= i; ++j) {
            const float sij = gram[i * gs + j];
            gram[i * gs + j] = tmp[i * gs + j] * sij;
          }
        GramLowerTransposed(s.B2, C, P, tmp);
        add(1.0f);
        GramLowerTransposed(s.B1, C, P, tmp);
        add(-1.0f);
      } else {
        // Only the new rows [c0, C) of each term: (new columns)' x (all).
        const size_t rs = s.xr_stride;
        auto new_rows = [&](const float* T, size_t R, float* out) {
          for (size_t i = 0; i < cn; ++i)
            for (size_t r = 0; r < R; ++r)
              s.xr[i * rs + r] = T[r * Cs + c0 + i];
          MatMulTransposed(s.xr, cn, R, rs, T, C, Cs, out, Cs);
        };
        new_rows(a, P, s.o1);    // S
        new_rows(Vt, dv, s.o2);  // <v_i, v_j>
        for (size_t i = 0; i < cn; ++i)
          for (size_t j = 0; j <= c0 + i; ++j) {
            const float sij = s.o1[i * Cs + j];
            gram[(c0 + i) * gs + j] = s.o2[i * Cs + j] * sij;
          }
        const float* terms[2] = {s.B2, s.B1};
        const float signs[2] = {1.0f, -1.0f};
        for (size_t t = 0; t < 2; ++t) {
          new_rows(terms[t], P, s.o1);
          for (size_t i = 0; i < cn; ++i)
            for (size_t j = 0; j <= c0 + i; ++j)
              gram[(c0 + i) * gs + j] += signs[t] * s.o1[i * Cs + j];
        }
      }
      // Both triangles, so that the factorization reads each pivot's column
      // as a row (striding down the lower triangle was 15 % of it): the
      // whole Gram in the first round, the new rows' entries later.
      MirrorLower(gram, c0, C, gs);
      // A later round resumes the previous round's factorization: the
      // survivors' Gram entries are unchanged, so its pivots stay the greedy
      // ones until a new candidate's residual is larger (same pivots as a
      // fresh factorization, up to rounding; on the synthetic workload
      // about half of a round's pivots are replayed, at a fraction of
      // their cost).
      uint32_t* piv = s.piv;
      float* L = tmp;
      if (carried) std::copy(prev_piv, prev_piv + carried, piv);
      size_t rank =
          PivotedCholesky(gram, C, gs, keep, 1e-7f, L, ls, s.diag, piv, nullptr,
                          /*factor=*/false, carried ? resume : 0, carried,
                          /*full=*/true);
      const size_t greedy = rank;
      std::copy(piv, piv + C, prev_piv);
      if (rank > 0 && rank < keep) {
        // The probes are explained by fewer items: keep the newest of the
        // others too (free only what is needed; future queries differ).
        for (size_t ci = C; ci-- > 0 && rank < keep;) {
          bool chosen = false;
          for (size_t r = 0; r < rank && !chosen; ++r) chosen = piv[r] == ci;
          if (!chosen) piv[rank++] = uint32_t(ci);
        }
      }
      for (size_t ci = 0; ci < C; ++ci) drop[cand[ci]] = 1;
      if (rank == 0) {
        // The probes see none of the old items: drop the oldest.
        for (size_t ci = drop_target; ci < C; ++ci) drop[cand[ci]] = 0;
      } else if (summary_cap_) {
        // The chosen items stay as they are: the others keep their mass in
        // the summary, so nothing needs to stand in for them.
        for (size_t r = 0; r < rank; ++r) drop[cand[piv[r]]] = 0;
      } else {
        // No summary (a tiny pool). Weights: min |sum_{a in S} w_a f_a - sum_j
        // f_j|^2, w >= 0, with a small ridge towards w = 1 (each kept item
        // stands at least for itself).
        auto G = [&](size_t i, size_t j) {
          return i >= j ? gram[i * gs + j] : gram[j * gs + i];
        };
        for (size_t i = 0; i < C; ++i) {
          double sum = 0;
          for (size_t j = 0; j < C; ++j) sum += G(i, j);
          s.rowsum[i] = float(sum);
        }
        const size_t ss = RoundUp(rank, 16);
        float* Hm = tmp;  // the factor L is no longer needed
        float* b = s.nnls;
        float* w = b + RoundUp16(C);
        float* w0 = w + RoundUp16(C);
        float* grad = w0 + RoundUp16(C);
        double mean_diag = 0;
        for (size_t r = 0; r < rank; ++r) {
          for (size_t c = 0; c < rank; ++c) Hm[r * ss + c] = G(piv[r], piv[c]);
          b[r] = s.rowsum[piv[r]];
          w[r] = w0[r] = 1.0f;
          mean_diag += Hm[r * ss + r];
        }
        const float ridge = cfg_.risk_ridge * float(mean_diag / double(rank));
        NonNegativeLeastSquares(Hm, rank, ss, b, ridge, w0,
                                cfg_.risk_iterations, 1e-4f, w, grad);
        for (size_t r = 0; r < rank; ++r) {
          const size_t i = cand[piv[r]];
          if (w[r] > 0.0f) {
            drop[i] = 0;
            // Within [-80, 80]: what a saved state may hold (CheckState).
            logw_[i] = F32ToF16Bits(
                std::min(80.0f, std::max(-80.0f, lw[i] + std::log(w[r]))));
          }
        }
      }
      // The dropped candidates: new summary slots while there is room, else
      // merged into the summary slot nearest in key (least Ward cost).
      size_t fresh = 0, merged = 0;  // candidate indices in cand_new
      uint32_t* cand_new = s.piv;    // the pivots are no longer needed
      if (summary_cap_) {
        for (size_t ci = 0; ci < C; ++ci) {
          if (!drop[cand[ci]]) continue;
          cand_new[fresh + merged] = uint32_t(ci);
          if (summary_ + fresh < SummaryTarget()) {
            ++fresh;
          } else {
            ++merged;
          }
        }
      }
      auto candidate_row = [&](size_t ci) {
        for (size_t x = 0; x < dk; ++x) s.row[x] = Kt[x * Cs + ci];
        for (size_t x = dk; x < ks_; ++x) s.row[x] = 0.0f;
        for (size_t x = 0; x < dv; ++x) s.row[ks_ + x] = Vt[x * Cs + ci];
        for (size_t x = dv; x < vs; ++x) s.row[ks_ + x] = 0.0f;
      };
      merged_total += merged;
      bool last = fresh > 0 || summary_cap_ == 0 || summary_ == 0 ||
                  merged_total >= goal;
      if (!last) {
        // Not the last round: its dropped candidates merge into the summary
        // now (slots are at the front, untouched by the marks) and stay
        // marked; the pool is compacted after the last round.
        load_sk();
        for (size_t t = 0; t < merged; ++t) {
          const size_t ci = cand_new[t];
          candidate_row(ci);
          MergeIntoSummary(s.row, s.lwc[ci], s.sk, s.mrow);
        }
        // The survivors' columns and Gram entries move to the front.
        uint32_t* kept = s.piv;  // the merge list is no longer needed
        carried = 0;
        for (size_t ci = 0; ci < C; ++ci)
          if (!drop[cand[ci]]) kept[carried++] = uint32_t(ci);
        // (<v, o> of the survivors is not needed again: only the new
        // columns' B1, B2 come from it.)
        float* keepc = s.keepc;
        for (size_t ci = 0; ci < Cs; ++ci)
          keepc[ci] = ci < C && !drop[cand[ci]] ? 1.0f : 0.0f;
        // The factorization restricted to the survivors, for the next round:
        // positions of dropped candidates leave L's rows and the item list,
        // the others are renumbered (every greedy pivot survives, so the
        // pivots keep the first positions).
        for (size_t t = 0; t < carried; ++t) remap[kept[t]] = uint32_t(t);
        float* keep_pos = s.rowsum;  // [Cs], unused with a summary
        size_t known = 0;
        for (size_t j = 0; j < Cs; ++j) {
          const bool k = j < C && !drop[cand[prev_piv[j]]];
          keep_pos[j] = k ? 1.0f : 0.0f;
          if (k) prev_piv[known++] = remap[prev_piv[j]];
        }
        CompressColumns(L, greedy, ls, keep_pos, C);
        resume = known == carried ? greedy : 0;
        CompressColumns(Kt, dk, Cs, keepc, C);
        CompressColumns(Vt, dv, Cs, keepc, C);
        CompressColumns(a, P, Cs, keepc, C);
        CompressColumns(s.B1, P, Cs, keepc, C);
        CompressColumns(s.B2, P, Cs, keepc, C);
        CompressColumns(s.lwc, 1, Cs, keepc, C);
        // The Gram (both triangles): each row's kept columns, then the kept
        // rows up (row kept[t] holds row t's entries).
        CompressColumns(gram, C, gs, keepc, C);
        for (size_t t = 0; t < carried; ++t)
          if (kept[t] != t)
            std::memcpy(gram + t * gs, gram + kept[t] * gs,
                        carried * sizeof(float));
        // The next candidates start with the survivors (the oldest items
        // not dropped; checked: otherwise the epoch ends here).
        for (size_t t = 0; t < carried; ++t) s.kept_pos[t] = cand[kept[t]];
        C = NextCandidates(cand, drop, cmax);
        bool same = carried <= C;
        for (size_t t = 0; same && t < carried; ++t)
          same = cand[t] == s.kept_pos[t];
        if (C > 0 && same) continue;
        merged = 0;  // merged above; the sweep below ends the epoch
      }
      // Remove the dropped items after the summary, keeping the insertion
      // order; the new slots then enter right after the summary.
      size_t out = pool_.Sweep(summary_, pool_.count(),
                               [&](size_t i) { return drop[i]; });
      size_t freed = pool_.count() - out;
      if (fresh) {
        pool_.Open(summary_, fresh, out);
        for (size_t t = 0; t < fresh; ++t) {
          const size_t ci = cand_new[t];
          candidate_row(ci);
          pool_.rows().Put(summary_ + t, s.row, s.row + ks_);
          logw_[summary_ + t] = F32ToF16Bits(s.lwc[ci]);
        }
        summary_ += fresh;
        out += fresh;
        sk_loaded = false;
      }
      // The rest merge into the (now full) summary.
      if (merged && summary_) {
        load_sk();
        for (size_t t = fresh; t < fresh + merged; ++t) {
          const size_t ci = cand_new[t];
          candidate_row(ci);
          MergeIntoSummary(s.row, s.lwc[ci], s.sk, s.mrow);
        }
      }
      pool_.set_count(out);
      if (summary_ > SummaryTarget() && summary_ >= 2) {
        load_sk();
        ShrinkSummary(s.sk, s.row, s.mrow);
        ++freed;
      }
      ++compactions_;
      return freed > fresh;
    }
  }
  // The oldest unprotected pool items after the summary not yet dropped in
  // this epoch (at most cmax; the pool is in insertion order).
  size_t NextCandidates(uint32_t* cand, const uint8_t* drop,
                        size_t cmax) const {
    size_t C = 0;
    for (size_t i = summary_; i < pool_.count() && C < cmax; ++i)
      if (!Protected(i) && !drop[i]) cand[C++] = uint32_t(i);
    return C;
  }

  size_t SummaryTarget() const {
    const double share = std::min(kSummaryMax, std::max(kSummaryMin, share_));
    // At least one slot (it measures the share) when there is one.
    return std::min(
        summary_cap_,
        std::max<size_t>(1, size_t(share * double(pool_.rows().cap))));
  }
  // Merges the adjacent pair of summary slots of least Ward cost (one slot
  // fewer; the items after it shift down). sk: the slots' keys.
  void ShrinkSummary(float* sk, float* row, float* tmp) {
    size_t best = 0;
    double best_cost = std::numeric_limits<double>::infinity();
    const float* mass = sk + summary_cap_ * ks_;
    for (size_t j = 0; j + 1 < summary_; ++j) {
      const double m0 = mass[j], m1 = mass[j + 1];
      double d2 = 0;
      for (size_t x = 0; x < cfg_.dk; ++x) {
        const double d = double(sk[j * ks_ + x]) - sk[(j + 1) * ks_ + x];
        d2 += d * d;
      }
      const double cost = m0 * m1 / (m0 + m1) * d2;
      if (cost < best_cost) best_cost = cost, best = j;
    }
    const double m0 = mass[best], m1 = mass[best + 1];
    const float a = float(m0 / (m0 + m1)), b = float(m1 / (m0 + m1));
    pool_.rows().Get(best, row, row + ks_);
    pool_.rows().Get(best + 1, tmp, tmp + ks_);
    for (size_t x = 0; x < ks_ + vs_; ++x) row[x] = a * row[x] + b * tmp[x];
    pool_.rows().Put(best, row, row + ks_);
    logw_[best] = RoundLogMass(m0 + m1);
    pool_.Erase(best + 1, best + 2, pool_.count());
    --summary_;
    pool_.set_count(pool_.count() - 1);
  }
  // A summary slot's log-mass in f16, rounded up or down at random so that
  // the mass is right in expectation: a token merged into a slot of mass m
  // adds log(1 + 1/m) to its log-mass, below f16's spacing once m exceeds a
  // few hundred, so rounding to nearest would stop the mass from growing.
  // Deterministic: the draws are keyed by the sketch's seed and a counter.
  uint16_t RoundLogMass(double mass) {
    const float L = std::min(80.0f, float(std::log(mass)));
    const uint16_t h = F32ToF16Bits(L);
    const float f = F16BitsToF32(h);
    if (f == L || !(mass > 0.0)) return h;
    // f16 bit patterns order by magnitude within a sign.
    const bool up = (f < L) == (L >= 0.0f);
    const uint16_t other = up ? uint16_t(h + 1) : uint16_t(h - 1);
    const float g = F16BitsToF32(other);
    const double lo = std::exp(double(std::min(f, g)));
    const double hi = std::exp(double(std::max(f, g)));
    const double p_hi = (mass - lo) / (hi - lo);
    const double u =
        CounterUniform(cfg_.seed, cfg_.stream ^ 0x5a3f1eull, merges_++);
    const bool take_hi = u < p_hi;
    return (take_hi == (g > f)) ? other : h;
  }
  // Keys of the summary slots in f32 (sk [summary_][ks_]), their masses
  // (sk + summary_cap_ * ks_ [summary_]) and squared norms (after the
  // masses); MergeIntoSummary's dot products follow.
  void LoadSummaryKeys(float* sk, float* row) const {
    float* mass = sk + summary_cap_ * ks_;
    float* norm2 = mass + summary_cap_;
    for (size_t j = 0; j < summary_; ++j) {
      pool_.rows().Get(j, row, row + ks_);
      std::memcpy(sk + j * ks_, row, ks_ * sizeof(float));
      mass[j] = std::exp(F16BitsToF32(logw_[j]));
      norm2[j] = Dot(row, row, ks_);
    }
  }
  // Merges a token (row: key [ks_] then value [vs_], log-weight lw) into the
  // summary slot of least Ward cost m_j m / (m_j + m) |k_j - k|^2: keys and
  // values become mass-weighted means, the log-weight the log of the mass.
  // sk holds the slots' keys (updated); tmp [ks_ + vs_].
  void MergeIntoSummary(const float* row, float lw, float* sk, float* tmp) {
    const double m = std::exp(double(lw));
    size_t best = 0;
    double best_cost = std::numeric_limits<double>::infinity();
    float* mass = sk + summary_cap_ * ks_;
    float* norm2 = mass + summary_cap_;
    float* dots = norm2 + summary_cap_;
    // |k_j - k|^2 = |k_j|^2 - 2 <k_j, k> + |k|^2: one SIMD pass over the
    // slots' keys.
    MatVec(sk, summary_, ks_, ks_, row, dots);
    const float kk = Dot(row, row, ks_);
    for (size_t j = 0; j < summary_; ++j) {
      const double mj = mass[j];
      const float d2 = std::max(0.0f, norm2[j] - 2.0f * dots[j] + kk);
      const double cost = mj * m / (mj + m) * double(d2);
      if (cost < best_cost) best_cost = cost, best = j;
    }
    const double mj = mass[best];
    const float a = float(mj / (mj + m)), b = float(m / (mj + m));
    pool_.rows().Get(best, tmp, tmp + ks_);
    for (size_t x = 0; x < ks_ + vs_; ++x) tmp[x] = a * tmp[x] + b * row[x];
    pool_.rows().Put(best, tmp, tmp + ks_);
    std::memcpy(sk + best * ks_, tmp, ks_ * sizeof(float));
    norm2[best] = Dot(tmp, tmp, ks_);
    logw_[best] = RoundLogMass(mj + m);
    mass[best] = std::exp(F16BitsToF32(logw_[best]));
  }

  static size_t RoundUp(size_t x, size_t a) { return (x + a - 1) / a * a; }
  Method mode_;
  ItemPool pool_;
  uint32_t* seq_ = nullptr;
  float* score_ = nullptr;
  uint16_t* logw_ = nullptr;     // risk: log-weights in f16
  uint16_t* probe_q_ = nullptr;  // [probes_cap_][dk] f16
  uint32_t* probe_pos_ = nullptr;
  size_t protect_ = 0, attended_ = 0;
  size_t summary_ = 0, summary_cap_ = 0;  // risk: slots at the pool's front
  double share_ = 0;  // running attention share of the summary
  uint64_t share_n_ = 0;
  uint64_t merges_ = 0;  // draws of RoundLogMass
  size_t probes_cap_ = 0, probe_count_ = 0, probe_head_ = 0;
  uint64_t offered_ = 0;   // queries offered to the probe reservoir
  uint64_t next_seq_ = 1;  // h2o / tova: < 2^32 (renumbered before)
  uint64_t compactions_ = 0;
};

}  // namespace

size_t SelectiveWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  const size_t rows = c.budget_bytes / StateRowBytes(c);
  const size_t P0 = ProbeCount(c, rows);
  const size_t cap = SelectiveLayout(c, P0).Capacity(c.budget_bytes);
  const size_t P = P0 * (c.rope_theta > 0.0f ? kHorizonCount : 1);
  const bool risk = c.method == Method::kRisk;
  size_t w = std::max({ScratchFloats<AttendScratch>(risk, cap, c.max_group, vs),
                       ScratchFloats<RowScratch>(ks, vs),
                       ScratchFloats<RenumberScratch>(cap)});
  if (!risk || cap == 0) return w;
  const size_t S = SummaryCapacity(c, cap);
  const size_t C = std::min(cap, MaxCandidates(c));
  return std::max(
      {w, ScratchFloats<DropScratch>(S, ks, vs),
       ScratchFloats<CompactScratch>(cap, P, C, c.dk, c.dv, ks, vs, S)});
}

std::unique_ptr<Sketch> MakeSelective(const SketchConfig& c, Arena& a,
                                      size_t rows) {
  return std::unique_ptr<Sketch>(new SelectiveSketch(c, a, rows));
}

}  // namespace kvsketch
