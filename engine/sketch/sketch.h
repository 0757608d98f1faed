// Per-KV-head sketches: a stream of (k, v) tokens in, attention answers out,
// from a state that never exceeds a fixed byte budget.
//
// Every sketch keeps the first `sinks` tokens and the last `window` tokens
// verbatim; a token leaving the window goes to the method's compressed
// region (Evict). Attend merges the partials (m, Z, N) of all regions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "arch/attend.h"  // kMaxGroup
#include "arch/types.h"   // Storage, RowsView
#include "engine/budget/arena.h"
#include "engine/io/serial.h"
#include "engine/sketch/method_list.h"
#include "engine/sketch/rows.h"

namespace kvsketch {

#define KVSKETCH_METHOD_ENUM(e, name, make, ws) e,
enum class Method : uint8_t { KVSKETCH_METHODS(KVSKETCH_METHOD_ENUM) };
#undef KVSKETCH_METHOD_ENUM
#define KVSKETCH_METHOD_COUNT(e, name, make, ws) +1
constexpr size_t kMethodCount = 0 KVSKETCH_METHODS(KVSKETCH_METHOD_COUNT);
#undef KVSKETCH_METHOD_COUNT
const char* MethodName(Method m);
// Every method's name, in the list's order.
inline std::vector<std::string> AllMethodNames() {
  std::vector<std::string> v;
  for (size_t i = 0; i < kMethodCount; ++i) v.push_back(MethodName(Method(i)));
  return v;
}
Method ParseMethod(const std::string& name);  // throws Error on unknown names
// f32, f16, bf16, q8, q4, q4a; throws Error naming the known ones.
Storage ParseStorage(const std::string& name);
// Throws Error unless keys and values may use these storages together.
void CheckStoragePair(Storage k, Storage v);

struct SketchConfig {
  Method method = Method::kBalance;
  size_t dk = 0, dv = 0;
  float scale = 0.0f;       // score scale (usually 1/sqrt(dk))
  size_t budget_bytes = 0;  // all state of this head
  size_t sinks = 4;
  // Recent window in tokens; -1 = method default (all of the budget for
  // `window`, a share of it for the compressed methods).
  long window = -1;
  // Default window as a share of the token budget (< 0: the method's
  // default, 0.5 for most, 0.25 for risk).
  float window_share = -1.0f;
  // Storage of keys and of values (any pair arch's SupportedViewPair
  // takes), and whether quantized sides of a power-of-two width are stored
  // Hadamard-rotated (docs/quantization.md).
  Storage storage_k = Storage::kF32;
  Storage storage_v = Storage::kF32;
  bool rotate = true;
  uint64_t seed = 0;
  uint64_t stream = 0;   // (layer, head) key for the counter-based generator
  size_t max_group = 1;  // query heads answered per Attend call

  // balance / coreset halving
  size_t block = 64;             // max items per halving (the Gram is block^2)
  float tau = 1.0f;              // kernel temperature on top of the q/k scale
  bool tau_from_queries = true;  // tau *= mean|q| / mean|k| seen so far
  float gamma = 4.0f;            // walk step
  float value_offset = 1.0f;     // c = value_offset * mean |v|^2 (denominator)
  bool centre_keys = true;

  // taylor / hashed
  int degree = 1;              // Taylor degree t (<= 2)
  size_t hash_bits = 3;        // SimHash bits for hashed cells
  size_t recentre_every = 64;  // taylor: evictions between centre updates

  // h2o / tova / risk
  float decay = 1.0f;  // h2o: accumulated scores decay by this per query
  size_t probes = 0;   // risk: probe queries kept (0 = from the budget)
  // risk: ridge towards w = 1 of the weight fit (relative to the mean
  // diagonal of the response Gram) and projected-gradient iterations.
  float risk_ridge = 1e-3f;
  int risk_iterations = 40;
  // risk: tokens it frees merge into summary slots (false: they are dropped
  // and the kept ones reweighted, the method before 0.3; for ablations).
  bool risk_summary = true;
  // RoPE of the stream (theta 0 = unknown): risk rotates its probe queries
  // forward to future positions.
  float rope_theta = 0.0f;
  size_t rope_dims = 0;  // rotated dims (0 = all)
  bool rope_interleaved = true;
  size_t rope_first_position = 0;
  // First sequence number of the pools (tests start it near 2^32 to check
  // that the numbering survives the wrap of its 32-bit per-item copies).
  uint64_t first_seq = 1;
};

// A loaded state's arena bytes, staged: not yet live. CheckState reads a
// live arena pointer's field at the same offset of the staged copy, so every
// field is validated before anything changes (unaligned reads are memcpy).
class StagedState {
 public:
  StagedState(const uint8_t* live, const uint8_t* staged, size_t size)
      : live_(live), staged_(staged), size_(size) {}
  template <typename T>
  T At(const T* live_array, size_t i) const {
    T x;
    std::memcpy(&x, Where(live_array + i, sizeof(T)), sizeof(T));
    return x;
  }
  // Rows [0, n): every element finite with |x| <= limit, padding zero.
  void CheckRows(const RowStore& rows, size_t n, float limit,
                 const std::string& what) const;
  // n floats: finite, |x| <= limit.
  void CheckFloats(const float* live, size_t n, float limit,
                   const std::string& what) const;
  void CheckDoubles(const double* live, size_t n,
                    const std::string& what) const;

 private:
  const uint8_t* Where(const void* live, size_t bytes) const;
  template <typename T>
  void CheckBounded(const T* live, size_t n, double limit,
                    const std::string& what) const;
  const uint8_t* live_;
  const uint8_t* staged_;
  size_t size_;
};

// Throws IoError "state file: invalid <what>".
[[noreturn]] void InvalidState(const std::string& what);

// Bytes of one stored token (key row + value row in their storages).
inline size_t StateRowBytes(const SketchConfig& c) {
  return StorageRowBytes(c.storage_k, c.dk) +
         StorageRowBytes(c.storage_v, c.dv);
}

// Floats of per-thread scratch a sketch of this configuration needs.
size_t WorkspaceFloats(const SketchConfig& c);

class Sketch {
 public:
  // Carves all state from `arena`; throws BudgetError when it cannot fit.
  static std::unique_ptr<Sketch> Create(const SketchConfig& c, Arena& arena);
  virtual ~Sketch() = default;
  Sketch(const Sketch&) = delete;
  Sketch& operator=(const Sketch&) = delete;

  // One token (k [dk], v [dv]); `ws` has WorkspaceFloats() floats.
  void Append(const float* k, const float* v, float* ws);
  // n tokens, rows of dk / dv floats; identical to n Append calls.
  void AppendBlock(const float* K, const float* V, size_t n, float* ws);
  // G queries of this KV head's group: q [G][dk] -> out [G][dv]. learn =
  // false leaves every query statistic untouched (probes, attention scores,
  // adaptive shares, query norms): the answer is the same, the state too.
  void Attend(const float* q, size_t G, float* out, float* ws,
              bool learn = true);
  // The unnormalised partials of T tokens' G queries each (token j's at
  // q + j * q_stride, [G][dk]; T * G <= kMaxGroup) over everything held:
  // m, z [T * G], N [T * G][vs]. Query-aware statistics are updated as
  // Attend updates them.
  void AttendPartial(const float* q, size_t T, size_t q_stride, size_t G,
                     float* m, float* z, float* N, float* ws,
                     bool learn = true);
  // Batched causal prefill of n tokens: token t's key and value at
  // k + t * k_stride, v + t * v_stride, its G queries at q + t * q_stride
  // ([G][dk]), its answers to out + t * out_stride ([G][dv]). Every token
  // attends to the state as it was before the block and causally to the
  // block's tokens 0..t, read verbatim in f32 where they are
  // (CausalBlockAttend); then the block is appended as n Append calls
  // would. The state passes see each tile's queries as Attend would
  // (query-aware methods learn from them, dated before the block).
  void Prefill(const float* q, size_t q_stride, const float* k, size_t k_stride,
               const float* v, size_t v_stride, size_t n, size_t G, float* out,
               size_t out_stride, float* ws);
  // Scratch floats Prefill needs in front of what Append and Attend need.
  static size_t PrefillWorkspaceFloats(const SketchConfig& c);

  // Rollback: the newest tokens this sketch still holds verbatim and can
  // drop exactly (sinks, the recent window, or a method's untouched newest
  // pool items); Truncate(p) drops every token appended at position >= p
  // (positions count appended tokens from 0), or throws Error naming how
  // far it can go, changing nothing. Query statistics (probes, scores,
  // query norms) keep what they learned; a probe recorded after p is
  // re-dated to the last kept position.
  size_t Truncatable() const;
  void Truncate(size_t p, float* ws);

  const SketchConfig& config() const { return cfg_; }
  size_t tokens() const { return tokens_; }
  size_t bytes() const { return bytes_; }  // accounted state bytes
  size_t retained() const;                 // tokens/items held verbatim
  size_t window() const { return window_cap_; }
  virtual std::string Describe() const;
  // Tokens this sketch can still take (only `exact` is ever full).
  virtual size_t tokens_left() const { return SIZE_MAX; }
  // Scalar state outside the arena (counters, adaptive parameters), for
  // save / load. Load validates every value it reads.
  virtual void SaveScalars(StateWriter& w) const;
  virtual void LoadScalars(StateReader& r);
  // After LoadScalars: validates the scalars against each other and every
  // field of the staged arena bytes (counters, indices, finiteness, ranges,
  // invariants); throws IoError naming the field.
  virtual void CheckState(const StagedState& st) const;
  // Scratch floats every sketch needs (queries, partials, evicted rows).
  static size_t CommonWorkspaceFloats(const SketchConfig& c);

 protected:
  Sketch(const SketchConfig& c, Arena& arena, size_t window);
  // Bytes left for the compressed region after sinks and window.
  size_t RemainingBytes() const;
  // A token leaves the window (k, v: f32 rows padded to ks/vs with zeros).
  virtual void Evict(const float* k, const float* v, float* ws) = 0;
  // Partial of the compressed region for padded, unscaled queries qp
  // [G][ks]; m/z [G], N [G][vs]. Empty region: z = 0, m = -inf.
  virtual void AttendCompressed(const float* qp, size_t G, float* m, float* z,
                                float* N, float* ws) = 0;
  virtual size_t CompressedRetained() const = 0;
  // How many of the newest tokens the compressed region holds verbatim,
  // never modified, at the end of its storage order (0: none), and dropping
  // them (k <= NewestVerbatim(); tokens_ is already reduced by k).
  virtual size_t NewestVerbatim() const { return 0; }
  virtual void DropNewest(size_t k, float* ws) { (void)k, (void)ws; }
  // Queries one AttendCompressed call may take (its scratch holds per-query
  // scores for this many); Prefill batches tokens up to it.
  virtual size_t MaxQueriesPerPass() const { return kMaxGroup; }
  // Called at the end of Attend with the final partials of every query
  // (m [G], z [G]) and the same scratch AttendCompressed got: query-aware
  // sketches turn the raw scores they kept there into attention weights.
  virtual void Observe(const float* m, const float* z, size_t G, float* ws) {
    (void)m, (void)z, (void)G, (void)ws;
  }
  // Partial (m, z, N) of the sinks for padded queries qp [G][ks]; m2/z2/N2
  // are scratch of the same shapes.
  void AttendSinks(const float* qp, size_t G, float* m, float* z, float* N,
                   float* m2, float* z2, float* N2) const;
  size_t sinks_used() const { return sinks_used_; }
  // The partial of an empty region: m = -inf, z = 0 for G queries.
  static void EmptyPartial(size_t G, float* m, float* z);

  using Rows = RowStore;
  Rows CarveRows(const std::string& what, size_t cap);
  // mean |q| / mean |k| seen so far (1 before any query): the rescaling of
  // docs/algorithms.md 3.2 that matches a key kernel's diagonal to the queries.
  float QueryKeyRatio() const;
  static size_t RowBytes(const SketchConfig& c);
  // Largest |x| a stored key or value may hold (the input bound).
  float RowLimit() const {
    return InputMaxAbs(cfg_.storage_k) < InputMaxAbs(cfg_.storage_v)
               ? InputMaxAbs(cfg_.storage_k)
               : InputMaxAbs(cfg_.storage_v);
  }

  SketchConfig cfg_;
  Arena& arena_;
  size_t ks_, vs_;
  size_t bytes_at_start_;
  size_t bytes_ = 0;
  uint64_t tokens_ = 0;
  // Running sums of key norms (of the tokens evicted to the compressed
  // region: the keys it summarises) and query norms, for the kernel
  // temperature.
  double key_norm_sum_ = 0, query_norm_sum_ = 0;
  // False while an Attend must not learn from its queries (methods that
  // learn inside AttendCompressed check it).
  bool learning_ = true;
  // Tokens handed to the compressed region (every token not in the sinks or
  // the recent window).
  size_t evicted() const { return tokens_ - sinks_used_ - window_used_; }
  uint64_t queries_ = 0;

 private:
  void AttendRange(const Rows& rows, size_t begin, size_t n, const float* qp,
                   size_t G, float* m, float* z, float* N, float* m2, float* z2,
                   float* N2) const;
  Rows sinks_, window_;
  size_t sinks_used_ = 0, window_cap_ = 0, window_used_ = 0, window_head_ = 0;
};

// "q8" for one storage, "q8/q4" for keys/values that differ.
inline std::string StorageLabel(Storage k, Storage v) {
  return k == v ? std::string(StorageName(k))
                : std::string(StorageName(k)) + "/" + StorageName(v);
}

// "q8/q4 (8.50/4.50 bits per element, rotated)" for a configuration whose
// dk / dv are set: what a report prints about the rows.
std::string StorageSummary(const SketchConfig& c);

// Token budget -> bytes: B * (dk + dv) * 4 (the bytes of B fp32 tokens).
inline size_t BudgetBytesForTokens(size_t tokens, size_t dk, size_t dv) {
  return tokens * (dk + dv) * 4;
}

}  // namespace kvsketch
