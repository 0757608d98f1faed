// kvsketch: a fixed-memory attention KV cache for CPUs. Public C++ API.
//
//   kvsketch::SessionConfig cfg;
//   cfg.layers = 5; cfg.n_heads = 8; cfg.n_kv_heads = 4; cfg.dk = cfg.dv = 8;
//   cfg.budget_tokens_per_head = 64;           // or budget_bytes (total)
//   kvsketch::Session s(cfg);                  // throws kvsketch::Error
//   s.Append(layer, k, v);                     // k, v: [n_kv_heads][dk|dv]
//   s.Attend(layer, q, out);                   // q: [n_heads][dk] -> out:
//   [n_heads][dv]
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvsketch/error.h"
#include "kvsketch/version.h"

namespace kvsketch {

// Library version, e.g. "0.1.0".
const char* Version();

// One line describing how the library was built (version, git, build type,
// compiler, system, chosen SIMD target).
std::string BuildDescription();

struct SessionConfig {
  size_t layers = 1;
  size_t n_heads = 1;     // query heads per layer
  size_t n_kv_heads = 1;  // KV heads per layer (n_heads % n_kv_heads == 0)
  size_t dk = 0, dv = 0;
  float scale = 0.0f;  // score scale; 0 = 1/sqrt(dk)
  // exact, window, uniform, balance, taylor, hashed, h2o, tova, risk,
  // blurry. Default: the recommended method (see the README for why).
  std::string method = "risk";
  // Budget: exactly one of these (bytes for the whole session's sketch
  // state, bytes per KV head, or fp32-token equivalents per KV head).
  size_t budget_bytes = 0;
  size_t budget_bytes_per_head = 0;
  size_t budget_tokens_per_head = 0;
  // Optional relative weights [layers][n_kv_heads] for splitting budget_bytes.
  std::vector<float> head_weights;
  // Element type of retained keys/values: f16 (default: half the bytes of
  // f32 per token, so twice the tokens in a budget), f32, bf16, or the
  // quantized q8 (8.5 bits per element at head_dim >= 32), q4 (4.5), q4a
  // (5; with an offset). `storage_k` / `storage_v` override it for keys /
  // values (empty: `storage`); they must be equal or both among f16, q8, q4,
  // q4a. See docs/quantization.md.
  std::string storage = "f16";
  std::string storage_k, storage_v;
  // Quantized keys / values of a power-of-two head dimension are stored
  // multiplied by a normalised Walsh-Hadamard matrix (scores unchanged; the
  // rotation spreads outliers across a group before quantizing).
  bool rotate = true;
  // 0 = the performance cores where Linux reports them (big.LITTLE, hybrid
  // x86), otherwise every core the process may use.
  int threads = 0;
  // Optional: your thread pool instead of kvsketch's own TBB arena (as
  // gemma.cpp passes its pool). parallel_for(n, task) must call task(i,
  // worker) for each i in [0, n), with worker in [0, threads) -- set
  // `threads` (> 0) to your pool's worker count -- never two tasks at once
  // with the same worker, and return when they have run. Tasks it does not
  // run (skipped, an out-of-range worker, a run cut short by an exception)
  // run on the calling thread afterwards, each exactly once, so the session
  // stays whole. Not for a Context's sequences (the context owns the pool).
  std::function<void(size_t n,
                     const std::function<void(size_t i, size_t worker)>& task)>
      parallel_for;
  uint64_t seed = 0;
  size_t sinks = 4;
  long window = -1;   // -1 = method default
  size_t block = 64;  // coreset halving block
  int degree = 1;     // taylor / hashed Taylor degree
  // Default window as a share of the budget (< 0: the method's, 0.5; risk
  // 0.25) and risk's probe queries (0: from the budget).
  float window_share = -1.0f;
  size_t probes = 0;
  // RoPE of the keys and queries (theta 0 = none/unknown). `risk` rotates
  // its probe queries forward to future positions with it.
  float rope_theta = 0.0f;
  size_t rope_dims = 0;          // rotated dims per head (0 = all)
  bool rope_interleaved = true;  // pairs (x[2i], x[2i+1]); false: halves
};

struct SessionStats {
  size_t arena_bytes = 0;      // the one allocation
  size_t accounted_bytes = 0;  // carved: state + per-thread scratch
  size_t state_bytes = 0;      // all sketches
  size_t scratch_bytes = 0;    // per-thread workspaces
  size_t retained = 0;         // items held, all heads
  size_t tokens = 0;           // tokens appended (per head)
  std::vector<std::pair<std::string, size_t>> components;  // bytes by name
};

// Threads: every member function may be called from several threads at
// once; calls are serialized by a mutex (each call already runs the heads
// on all of the session's `threads`), so concurrent calls give the same
// answers as the same calls made one after the other, never faster.
// Different sessions are fully independent.
class Session;

// Several sequences in one context (llama.cpp's sequences in one
// llama_context): the context owns the thread pool, the per-thread scratch
// and max_sequences fixed slots of state memory, all allocated once at
// creation and sized from `base`. NewSequence gives a Session (every call
// above applies) whose state lives in a free slot: creating one allocates
// only the per-head objects, and fails with BudgetError when every slot is
// taken; destroying it frees the slot. A sequence may differ from `base` in
// budget (up to base's), method, storage or seed, as long as its state fits
// a slot and its scratch the context's (checked, with a message).
// Concurrency: calls on different sequences may run at once from different
// threads (each takes its own slot of the pool and its own scratch); calls
// on one sequence are serialized; NewSequence and destroying a sequence may
// run concurrently with both. A sequence keeps the context's memory alive,
// so the two may be destroyed in any order.
struct ContextConfig {
  SessionConfig base;
  size_t max_sequences = 1;
};

class Context {
 public:
  explicit Context(const ContextConfig& config);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  std::unique_ptr<Session> NewSequence();  // with the base configuration
  std::unique_ptr<Session> NewSequence(const SessionConfig& config);
  size_t max_sequences() const;
  size_t sequences() const;   // in use now
  size_t bytes() const;       // everything the context allocated
  size_t slot_bytes() const;  // state memory of one sequence
  // Every live sequence's state in one buffer (llama_state_get_size /
  // get_data / set_data for a whole context): StateSize() bytes (a 16-byte
  // header, then each sequence's Session::SaveState bytes with its slot);
  // SaveState throws Error writing nothing when capacity is smaller.
  // LoadState restores them into the sequences living in the same slots
  // (in a new context: create the same sequences, same configurations, in
  // the same order, then load): the count, every slot and every sequence's
  // bytes are validated before any sequence changes (IoError naming the
  // problem; nothing changes). No sequence may be created, destroyed or
  // called meanwhile: these hold the slot table (creation and destruction
  // wait) but not the sequences' calls.
  size_t StateSize() const;
  size_t SaveState(void* dst, size_t capacity) const;
  void LoadState(const void* src, size_t size);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

class Session {
 public:
  explicit Session(const SessionConfig& config);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // One token of one layer: k [n_kv_heads][dk], v [n_kv_heads][dv].
  // n > 1: a block of tokens, k [n][n_kv_heads][dk] (same result as n calls).
  void Append(size_t layer, const float* k, const float* v, size_t n = 1);
  // q [n_heads][dk] -> out [n_heads][dv] for one layer.
  void Attend(size_t layer, const float* q, float* out);
  // Batched causal prefill of n tokens of one layer: q [n][n_heads][dk],
  // k [n][n_kv_heads][dk], v [n][n_kv_heads][dv] -> out [n][n_heads][dv].
  // Token t's queries attend to everything held before the block and to the
  // block's tokens 0..t, read verbatim in f32 from your arrays (not rounded
  // to the storage, not compressed: a prompt is answered as a plain cache
  // would, as llama.cpp and the compression papers prefill); then the block
  // is appended as n Append calls would. `exact` with f32 storage answers as
  // n Append + Attend calls would, to rounding; every method answers its
  // first prefill as exact attention. The block part is a flash-attention
  // kernel (queries as SIMD lanes, online softmax, the causal mask on the
  // diagonal); the state part shares each pass over the state between up to
  // 16 queries. Query-aware methods learn from the block's queries as Attend
  // would from their attention to the state before the block (h2o/tova:
  // scores; risk: probes, recorded at the position of the last token before
  // the block).
  void Prefill(size_t layer, const float* q, const float* k, const float* v,
               size_t n, float* out);
  // Positions, explicit (llama_batch's pos, gemma.cpp's pos): a layer's
  // tokens take positions 0, 1, ... in the order they are appended;
  // Position(layer) is the one its next token takes (Truncate(p) sets every
  // layer's to p, so a truncated then continued sequence reuses p, p + 1,
  // ...; RoPE-aware methods use these positions). AppendAt / PrefillAt are
  // Append / Prefill that first check `position` == Position(layer) and
  // otherwise throw Error naming both (nothing changes): positions are
  // consecutive, without gaps; to rewrite from an earlier one, Truncate.
  size_t Position(size_t layer) const;
  void AppendAt(size_t layer, size_t position, const float* k, const float* v,
                size_t n = 1);
  void PrefillAt(size_t layer, size_t position, const float* q, const float* k,
                 const float* v, size_t n, float* out);
  // All layers of one token: k [layers][n_kv][dk], q [layers][n_heads][dk].
  void AppendAll(const float* k, const float* v);
  void AttendAll(const float* q, float* out);

  SessionStats Stats() const;
  const SessionConfig& config() const;

  // Versioned binary state (see docs/state-format.md); Load requires the
  // same configuration, validates every field, and leaves the session
  // unchanged on any error (throws IoError).
  void Save(const std::string& path) const;
  void Load(const std::string& path);
  // The same format in memory.
  std::string SaveBytes() const;
  void LoadBytes(const std::string& bytes);
  // The same format in caller memory (llama_state_get_size / get_data /
  // set_data): StateSize() bytes, the same for every state of a
  // configuration; SaveState writes them to dst and returns how many (throws
  // Error, writing nothing, when capacity is smaller); LoadState validates
  // everything before it changes the session (unchanged on any error).
  size_t StateSize() const;
  size_t SaveState(void* dst, size_t capacity) const;
  void LoadState(const void* src, size_t size);
  // LoadState's validation alone: throws what LoadState would, changes
  // nothing either way.
  void ValidateState(const void* src, size_t size);

  // Attend without learning: the same answer as Attend, and no query
  // statistic changes (risk's probes, h2o/tova scores, balance's window
  // share, the query norms) -- for speculative verification or a draft.
  void AttendReadOnly(size_t layer, const float* q, float* out);

  // Rollback. Positions count the tokens appended to a layer (0, 1, ...).
  // Truncate(p) drops every token at position >= p in every layer, as long
  // as each head still holds them verbatim and untouched; otherwise it throws
  // Error naming the head and how far it can go, changing nothing.
  // MinTruncatePosition() is the smallest p that works now. How far each
  // method can go: exact everything; window, uniform, blurry and hashed
  // their recent window (or everything before their first eviction); risk
  // the protected newest quarter of its pool; h2o and tova their newest
  // items until the pool first fills; balance and taylor only while nothing
  // has left the sinks. Re-appending the dropped tokens gives the state
  // (and the answers) of never having dropped them. Query statistics keep
  // what they learned from queries asked meanwhile (risk re-dates probes
  // asked after p to the last kept position).
  void Truncate(size_t position);
  size_t MinTruncatePosition() const;
  // A new session with this one's configuration and state (its own memory):
  // "regenerate" and beam search start from a copy.
  std::unique_ptr<Session> Fork() const;

  // Forgets every token: the session is as newly created, in the same memory
  // (nothing is allocated but the per-head sketch objects). The only
  // possible failure is running out of memory for those; the session then
  // refuses every call with that message and must be destroyed.
  void Reset();

  struct Impl;

 private:
  // Append / Prefill, first checking `*position` (when given) under the
  // same lock.
  void AppendChecked(size_t layer, const size_t* position, const float* k,
                     const float* v, size_t n);
  void PrefillChecked(size_t layer, const size_t* position, const float* q,
                      const float* k, const float* v, size_t n, float* out);
  friend class Context;
  // A sequence of a context (Context::NewSequence).
  Session(const SessionConfig& config, std::shared_ptr<Context::Impl> context);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsketch
