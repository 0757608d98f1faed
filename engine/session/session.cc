// The multi-head session: all sketches of a model in one arena, oneTBB
// across heads, input validation that leaves the state untouched.
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "arch/attend.h"   // kMaxGroup, kMaxHeadDim
#include "arch/targets.h"  // PaddedCols
#include "engine/budget/arena.h"
#include "engine/io/trace.h"  // ValidateRope
#include "engine/session/cores.h"
#include "engine/session/state_io.h"
#include "engine/sketch/sketch.h"
#include "kvsketch/kvsketch.h"

namespace kvsketch {

namespace {

void CheckFinite(const float* x, size_t n, const char* what, size_t layer,
                 Storage storage = Storage::kF32) {
  const float limit = InputMaxAbs(storage);
  // A branch-free pass first (every append checks its rows): the largest
  // magnitude's bits (a non-negative float's bits order as its value; Inf and
  // NaN order above every finite limit), an unsigned max the compiler
  // vectorises. The loop below only runs to name a bad value.
  uint32_t top = 0, limit_bits;
  std::memcpy(&limit_bits, &limit, 4);
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    top = std::max(top, b & 0x7FFFFFFFu);
  }
  if (top <= limit_bits) return;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      throw Error(std::string(what) + " of layer " + std::to_string(layer) +
                  " has a non-finite value at index " + std::to_string(i) +
                  "; nothing was changed");
    }
    if (std::fabs(x[i]) > limit) {
      const bool storage_bound = StorageMaxAbs(storage) < kInputMaxAbs;
      throw Error(
          std::string(what) + " of layer " + std::to_string(layer) + " has " +
          std::to_string(x[i]) + " at index " + std::to_string(i) +
          (storage_bound ? ", beyond the " + std::string(StorageName(storage)) +
                               " storage range (|x| <= " +
                               std::to_string(limit) + "; use storage f32)"
                         : ", beyond the input range |x| <= 1e8 (scores and "
                           "moments would overflow f32)") +
          "; nothing was changed");
    }
  }
}

// a * b, or an Error naming `what` when the product does not fit a size_t.
size_t CheckedMul(size_t a, size_t b, const char* what) {
  if (a != 0 && b > SIZE_MAX / a) {
    throw Error(std::string(what) + " overflows the address space (" +
                std::to_string(a) + " x " + std::to_string(b) + ")");
  }
  return a * b;
}

size_t CheckedAdd(size_t a, size_t b, const char* what) {
  if (b > SIZE_MAX - a) {
    throw Error(std::string(what) + " overflows the address space");
  }
  return a + b;
}

}  // namespace

// What the sequences of one Context share: the thread pool, the per-thread
// scratch and fixed-size slots of state memory, all from one allocation.
struct Context::Impl {
  SessionConfig base;
  size_t threads = 1, ws_floats = 0, ws_stride = 0, slot_bytes = 0;
  std::unique_ptr<Arena> memory;
  float* scratch = nullptr;    // [threads][ws_stride]
  std::vector<uint8_t*> slot;  // [max_sequences] slot_bytes each
  std::vector<bool> in_use;
  std::vector<Session*> owner;  // [max_sequences] the live sequence of a slot
  size_t used = 0;
  mutable std::mutex mu;  // the slot table (held by whole-context state calls)
  std::unique_ptr<tbb::task_arena> pool;

  // A free slot for `need` bytes of state, or BudgetError naming why not.
  size_t Acquire(size_t need) {
    if (need > slot_bytes) {
      throw BudgetError("context: the sequence's state needs " +
                        std::to_string(need) + " bytes, a slot holds " +
                        std::to_string(slot_bytes) +
                        " (the context was sized for its base budget)");
    }
    std::lock_guard<std::mutex> lock(mu);
    for (size_t i = 0; i < slot.size(); ++i) {
      if (!in_use[i]) {
        in_use[i] = true;
        ++used;
        return i;
      }
    }
    throw BudgetError("context: all " + std::to_string(slot.size()) +
                      " sequence slots are in use; destroy a sequence first");
  }
  void Release(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    in_use[i] = false;
    --used;
  }
  // A sequence is registered once built and unregistered first thing when
  // it goes, so a whole-context save or load (which holds mu) never sees
  // half a sequence.
  void Register(size_t i, Session* s) {
    std::lock_guard<std::mutex> lock(mu);
    owner[i] = s;
  }
  void Unregister(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    owner[i] = nullptr;
  }
};

// A sequence's slot, given back when the session goes (after its arena).
struct SlotLease {
  std::shared_ptr<Context::Impl> ctx;
  size_t index = SIZE_MAX;
  SlotLease() = default;
  SlotLease(const SlotLease&) = delete;
  SlotLease& operator=(const SlotLease&) = delete;
  ~SlotLease() {
    if (ctx && index != SIZE_MAX) ctx->Release(index);
  }
};

struct Session::Impl {
  SessionConfig cfg;
  SketchConfig base;
  size_t G = 1, threads = 1, ws_floats = 0;
  size_t ws_stride = 0;    // floats between two threads' scratch
  size_t state_begin = 0;  // arena offset of the state (scratch before it)
  std::vector<size_t> head_budget;  // [layers * n_kv]
  SlotLease lease;                  // in a Context: the slot the arena lives in
  std::unique_ptr<Arena> arena;
  std::vector<std::unique_ptr<Sketch>> sketches;  // [layer][kv head]
  float* workspaces = nullptr;                    // [threads][ws_stride]
  std::unique_ptr<tbb::task_arena> own_pool;
  tbb::task_arena* pool = nullptr;
  // With the caller's parallel_for: which tasks of a ForHeads have run.
  std::unique_ptr<std::atomic<uint8_t>[]> task_done;
  size_t state_bytes = 0;
  // One call at a time: calls from several threads are serialized (each
  // call already uses all of the session's threads).
  mutable std::mutex mu;

  // The configuration a state file must match: the thread count resolved
  // (0 means "all cores", which differs between machines).
  SessionConfig StateConfig() const {
    SessionConfig c = cfg;
    c.threads = int(threads);
    return c;
  }

  Impl(const SessionConfig& c, std::shared_ptr<Context::Impl> ctx) : cfg(c) {
    if (c.layers == 0 || c.n_heads == 0 || c.n_kv_heads == 0) {
      throw Error("layers, n_heads and n_kv_heads must be positive");
    }
    if (c.n_heads % c.n_kv_heads != 0) {
      throw Error("n_heads (" + std::to_string(c.n_heads) +
                  ") must be a multiple of n_kv_heads (" +
                  std::to_string(c.n_kv_heads) + ")");
    }
    G = c.n_heads / c.n_kv_heads;
    if (G > kMaxGroup) {
      throw Error("at most " + std::to_string(kMaxGroup) +
                  " query heads per KV head are supported");
    }
    if (c.dk == 0 || c.dv == 0 || c.dk > kMaxHeadDim || c.dv > kMaxHeadDim) {
      throw Error("head dimensions must be in [1, " +
                  std::to_string(kMaxHeadDim) + "]");
    }
    // Divisions, not products: layers = 2^63 must not wrap to a small count.
    if (c.n_kv_heads > 65536 || c.layers > 65536 / c.n_kv_heads) {
      throw Error("layers * n_kv_heads must be at most 65536 (layers " +
                  std::to_string(c.layers) + ", n_kv_heads " +
                  std::to_string(c.n_kv_heads) + ")");
    }
    if (!(c.scale >= 0.0f) || !std::isfinite(c.scale)) {
      throw Error("scale must be 0 (1/sqrt(dk)) or positive and finite, got " +
                  std::to_string(c.scale));
    }
    const int budgets = (c.budget_bytes > 0) + (c.budget_bytes_per_head > 0) +
                        (c.budget_tokens_per_head > 0);
    if (budgets != 1) {
      throw Error(
          "set exactly one of budget_bytes, budget_bytes_per_head, "
          "budget_tokens_per_head");
    }
    base.method = ParseMethod(c.method);
    base.dk = c.dk;
    base.dv = c.dv;
    base.scale = c.scale > 0 ? c.scale : 1.0f / std::sqrt(float(c.dk));
    if (!std::isfinite(base.scale)) throw Error("scale must be finite");
    base.storage_k =
        ParseStorage(c.storage_k.empty() ? c.storage : c.storage_k);
    base.storage_v =
        ParseStorage(c.storage_v.empty() ? c.storage : c.storage_v);
    CheckStoragePair(base.storage_k, base.storage_v);
    base.rotate = c.rotate;
    base.seed = c.seed;
    base.sinks = c.sinks;
    base.window = c.window;
    if (c.block < 2 || c.block > 4096) {
      throw Error("block must be in [2, 4096], got " + std::to_string(c.block));
    }
    base.block = c.block;
    base.degree = c.degree;
    if (!(c.window_share <= 1.0f) || !std::isfinite(c.window_share)) {
      throw Error(
          "window_share must be below 0 (method default) or in [0, 1], got " +
          std::to_string(c.window_share));
    }
    if (c.degree < 0 || c.degree > 2) {
      throw Error("degree must be 0, 1 or 2, got " + std::to_string(c.degree));
    }
    if (c.probes > 4096) {
      throw Error("probes must be at most 4096, got " +
                  std::to_string(c.probes));
    }
    base.window_share = c.window_share;
    base.probes = c.probes;
    base.max_group = G;
    ValidateRope(c.rope_theta, c.rope_dims, c.dk, "rope");
    base.rope_theta = c.rope_theta;
    base.rope_dims = c.rope_dims;
    base.rope_interleaved = c.rope_interleaved;
    if (c.parallel_for && c.threads <= 0) {
      throw Error(
          "parallel_for needs threads = the worker count of your pool (> 0)");
    }
    if (c.parallel_for && ctx) {
      throw Error(
          "a sequence of a Context runs on the context's pool: leave "
          "parallel_for empty");
    }
    threads = c.threads > 0 ? size_t(c.threads) : DefaultThreads();
    if (threads > 1024) throw Error("threads must be at most 1024");
    const size_t heads = c.layers * c.n_kv_heads;
    // Per-head budgets.
    head_budget.assign(heads, 0);
    // 16 TiB on 64-bit hosts, 2 GiB on 32-bit ones.
    const size_t kAbsurd = size_t(1) << (sizeof(size_t) >= 8 ? 44 : 31);
    if (c.budget_tokens_per_head) {
      if (c.budget_tokens_per_head > kAbsurd / ((c.dk + c.dv) * 4)) {
        throw Error("budget_tokens_per_head is absurdly large");
      }
      head_budget.assign(
          heads, BudgetBytesForTokens(c.budget_tokens_per_head, c.dk, c.dv));
    } else if (c.budget_bytes_per_head) {
      if (c.budget_bytes_per_head > kAbsurd)
        throw Error("budget is absurdly large");
      head_budget.assign(heads, c.budget_bytes_per_head);
    }
    if (c.budget_bytes > kAbsurd) throw Error("budget_bytes is absurdly large");
    // Split weights of a total budget (validated before anything else).
    std::vector<double> w(heads, 1.0);
    if (!c.head_weights.empty()) {
      if (!c.budget_bytes) {
        throw Error(
            "head_weights split a total budget (budget_bytes); with a "
            "per-head budget every head gets the same bytes, so they would "
            "be ignored");
      }
      if (c.head_weights.size() != heads) {
        throw Error("head_weights needs layers * n_kv_heads = " +
                    std::to_string(heads) + " entries");
      }
      for (size_t i = 0; i < heads; ++i) {
        if (!(c.head_weights[i] > 0) || !std::isfinite(c.head_weights[i])) {
          throw Error("head_weights must be positive and finite");
        }
        w[i] = c.head_weights[i];
      }
    }
    // Scratch for the largest head (workspace grows with a head's budget).
    SketchConfig probe = base;
    if (c.budget_tokens_per_head || c.budget_bytes_per_head) {
      probe.budget_bytes = head_budget[0];
    } else {
      double sum = 0, wmax = 0;
      for (double x : w) {
        sum += x;
        wmax = std::max(wmax, x);
      }
      probe.budget_bytes = size_t(double(c.budget_bytes) * wmax / sum);
    }
    ws_floats = WorkspaceFloats(probe);
    // In a context the scratch is the context's (not in this budget).
    const size_t scratch =
        ctx ? 0
            : CheckedMul(
                  threads,
                  Arena::Aligned(CheckedMul(ws_floats, 4, "scratch size")),
                  "per-thread scratch");
    if (ctx) {
      if (threads != ctx->threads) {
        throw Error("context: a sequence runs on the context's " +
                    std::to_string(ctx->threads) + " threads, not " +
                    std::to_string(threads));
      }
      if (ws_floats > ctx->ws_floats) {
        throw Error("context: the sequence needs " +
                    std::to_string(ws_floats * 4) +
                    " bytes of per-thread scratch, the context has " +
                    std::to_string(ctx->ws_floats * 4) +
                    " (a larger budget or another method than its base)");
      }
    }
    if (c.budget_bytes) {
      if (c.budget_bytes <= scratch) {
        throw BudgetError("budget of " + std::to_string(c.budget_bytes) +
                          " bytes does not even hold the per-thread scratch (" +
                          std::to_string(scratch) + " bytes for " +
                          std::to_string(threads) + " threads)");
      }
      const size_t left = c.budget_bytes - scratch;
      double sum = 0;
      for (double x : w) sum += x;
      for (size_t i = 0; i < heads; ++i) {
        head_budget[i] = size_t(double(left) * w[i] / sum) / 16 * 16;
      }
    }
    // One arena: every head's budget (its sketch never exceeds it) and the
    // per-thread scratch. Pages that are never written are never touched.
    size_t total = CheckedAdd(scratch, Arena::kAlign, "arena size");
    for (size_t b : head_budget)
      total = CheckedAdd(total, Arena::Aligned(b), "arena size");
    if (ctx) {
      // The state in one of the context's slots; its scratch and pool.
      lease.index = ctx->Acquire(total);
      lease.ctx = ctx;
      arena.reset(new Arena(ctx->slot_bytes, ctx->slot[lease.index]));
      workspaces = ctx->scratch;
      ws_stride = ctx->ws_stride;
      pool = ctx->pool.get();
    } else {
      arena.reset(new Arena(total));
      ws_stride = Arena::Aligned(ws_floats * 4) / 4;
      workspaces =
          arena->CarveArray<float>("per-thread scratch", threads * ws_stride);
      if (c.parallel_for) {
        task_done.reset(new std::atomic<uint8_t>[heads]);
      } else {
        own_pool.reset(new tbb::task_arena(int(threads)));
        pool = own_pool.get();
      }
    }
    state_begin = arena->used();
    shared = std::move(ctx);
    state_mark = arena->GetMark();
    CreateSketches();
    // Layers whose whole state is small run their heads on the calling
    // thread: a parallel region costs more than the work (results are the
    // same either way).
    layer_serial.assign(c.layers, threads == 1);
    for (size_t l = 0; l < c.layers; ++l) {
      size_t bytes = 0;
      for (size_t h = 0; h < c.n_kv_heads; ++h)
        bytes += head_budget[l * c.n_kv_heads + h];
      if (bytes < kSerialBytes) layer_serial[l] = true;
    }
    all_serial = threads == 1 || state_bytes < kSerialBytes;
  }

  // Every head's sketch, carved from the arena after the scratch.
  void CreateSketches() {
    const size_t heads = cfg.layers * cfg.n_kv_heads;
    sketches.reserve(heads);
    state_bytes = 0;
    for (size_t i = 0; i < heads; ++i) {
      SketchConfig sc = base;
      sc.budget_bytes = head_budget[i];
      sc.stream = (uint64_t(i / cfg.n_kv_heads) << 32) | (i % cfg.n_kv_heads);
      const size_t before = arena->used();
      sketches.push_back(Sketch::Create(sc, *arena));
      // Keep every head's region at its full budget so the layout does not
      // depend on what the methods happened to use.
      const size_t used = arena->used() - before;
      if (Arena::Aligned(sc.budget_bytes) > used) {
        arena->Carve("unused head budget",
                     Arena::Aligned(sc.budget_bytes) - used);
      }
      state_bytes += sketches.back()->bytes();
    }
  }

  // Forgets every token: the state region is zeroed and every sketch built
  // again in the same bytes (the layout is deterministic), as at creation.
  void Reset() {
    CheckUsable();
    try {
      sketches.clear();
      arena->Rewind(state_mark);
      CreateSketches();
    } catch (const std::exception& e) {
      // Only an allocation of the sketch objects can fail here (the same
      // configuration fit a moment ago); the tokens are gone either way.
      sketches.clear();
      broken = std::string("reset failed (") + e.what() +
               "); the session holds no state and must be destroyed";
      throw Error(broken);
    }
  }

  void CheckUsable() const {
    if (!broken.empty()) throw Error(broken);
  }

  Arena::Mark state_mark;
  std::string broken;  // set when a Reset could not rebuild the sketches

  // Below this much state per call, heads run serially (a oneTBB region
  // costs a few microseconds).
  static constexpr size_t kSerialBytes = 128 * 1024;
  std::vector<bool> layer_serial;
  bool all_serial = false;

  std::shared_ptr<Context::Impl> shared;  // the context, if any

  template <class F>
  void ForHeads(bool serial, size_t n, const F& f) {
    if (serial && !shared) {
      for (size_t i = 0; i < n; ++i) f(i, workspaces);
      return;
    }
    if (cfg.parallel_for) {
      RunOnCallerPool(n, f);
      return;
    }
    if (serial) {
      // Sequences of a context may run at once: the calling thread takes a
      // slot of the context's pool, and with it its own scratch.
      pool->execute([&] {
        float* ws = Workspace();
        for (size_t i = 0; i < n; ++i) f(i, ws);
      });
      return;
    }
    pool->execute([&] {
      tbb::parallel_for(size_t(0), n, [&](size_t i) { f(i, Workspace()); });
    });
  }

  // Tasks [0, n) on the caller's pool, each exactly once; those it did not
  // run, run here. No allocation: the task captures one pointer.
  template <typename F>
  void RunOnCallerPool(size_t n, const F& f) {
    struct Run {
      const Impl* m;
      const F* f;
      size_t n;
    } run{this, &f, n};
    for (size_t i = 0; i < n; ++i) task_done[i].store(0);
    const std::function<void(size_t, size_t)> task = [r = &run](size_t i,
                                                                size_t w) {
      if (i >= r->n || w >= r->m->threads) return;
      if (r->m->task_done[i].exchange(1)) return;
      (*r->f)(i, r->m->workspaces + w * r->m->ws_stride);
    };
    try {
      cfg.parallel_for(n, task);
    } catch (...) {
      // The rest runs below; the session stays whole.
    }
    for (size_t i = 0; i < n; ++i)
      if (!task_done[i].exchange(1)) f(i, workspaces);
  }

  // The per-thread scratch is carved first; the state follows it.
  size_t StateBegin() const { return state_begin; }

  float* Workspace() const {
    int idx = tbb::this_task_arena::current_thread_index();
    if (idx < 0 || size_t(idx) >= threads) idx = 0;
    return workspaces + size_t(idx) * ws_stride;
  }

  Sketch& At(size_t layer, size_t h) {
    return *sketches[layer * cfg.n_kv_heads + h];
  }
  const Sketch& At(size_t layer, size_t h) const {
    return *sketches[layer * cfg.n_kv_heads + h];
  }

  void CheckLayer(size_t layer) const {
    CheckUsable();
    if (layer >= cfg.layers) {
      throw Error("layer " + std::to_string(layer) + " out of range [0, " +
                  std::to_string(cfg.layers) + ")");
    }
  }

  void ValidateAppend(size_t layer, const float* k, const float* v, size_t n) {
    CheckLayer(layer);
    if (!k || !v) throw Error("append: null key or value pointer");
    if (n == 0) throw Error("append: zero tokens");
    const size_t row = cfg.n_kv_heads * std::max(cfg.dk, cfg.dv);
    if (n > SIZE_MAX / sizeof(float) / row) {
      throw Error("append: " + std::to_string(n) +
                  " tokens overflow the address space");
    }
    CheckFinite(k, n * cfg.n_kv_heads * cfg.dk, "keys", layer, base.storage_k);
    CheckFinite(v, n * cfg.n_kv_heads * cfg.dv, "values", layer,
                base.storage_v);
    for (size_t h = 0; h < cfg.n_kv_heads; ++h) {
      if (At(layer, h).tokens_left() < n) {
        throw BudgetError("append: head " + std::to_string(h) + " of layer " +
                          std::to_string(layer) + " (method " + cfg.method +
                          ") has room for " +
                          std::to_string(At(layer, h).tokens_left()) +
                          " more tokens; nothing was changed");
      }
    }
  }

  void DoAppend(size_t layer, const float* k, const float* v, size_t n) {
    const size_t nkv = cfg.n_kv_heads, dk = cfg.dk, dv = cfg.dv;
    ForHeads(layer_serial[layer], nkv, [&](size_t h, float* ws) {
      Sketch& s = At(layer, h);
      for (size_t t = 0; t < n; ++t) {
        s.Append(k + (t * nkv + h) * dk, v + (t * nkv + h) * dv, ws);
      }
    });
  }

  void ValidateAttend(size_t layer, const float* q, const float* out) {
    CheckLayer(layer);
    if (!q || !out) throw Error("attend: null query or output pointer");
    CheckFinite(q, cfg.n_heads * cfg.dk, "queries", layer);
  }

  void DoAttend(size_t layer, const float* q, float* out) {
    ForHeads(layer_serial[layer], cfg.n_kv_heads, [&](size_t h, float* ws) {
      At(layer, h).Attend(q + h * G * cfg.dk, G, out + h * G * cfg.dv, ws);
    });
  }
};

Session::Session(const SessionConfig& config)
    : impl_(new Impl(config, nullptr)) {}
Session::Session(const SessionConfig& config,
                 std::shared_ptr<Context::Impl> context)
    : impl_(new Impl(config, std::move(context))) {
  if (impl_->lease.ctx) impl_->lease.ctx->Register(impl_->lease.index, this);
}
Session::~Session() {
  if (impl_ && impl_->lease.ctx)
    impl_->lease.ctx->Unregister(impl_->lease.index);
}

const SessionConfig& Session::config() const { return impl_->cfg; }

namespace {
void CheckPosition(const char* what, size_t layer, size_t position,
                   size_t next) {
  if (position == next) return;
  throw Error(std::string(what) + " at position " + std::to_string(position) +
              " of layer " + std::to_string(layer) + ": its next position is " +
              std::to_string(next) +
              (position > next ? " (positions are consecutive: no gaps)"
                               : " (Truncate(" + std::to_string(position) +
                                     ") first to rewrite from there)") +
              "; nothing was changed");
}
}  // namespace

void Session::Append(size_t layer, const float* k, const float* v, size_t n) {
  AppendChecked(layer, nullptr, k, v, n);
}

void Session::AppendChecked(size_t layer, const size_t* position,
                            const float* k, const float* v, size_t n) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->ValidateAppend(layer, k, v, n);
  if (position)
    CheckPosition("append", layer, *position, impl_->At(layer, 0).tokens());
  impl_->DoAppend(layer, k, v, n);
}

size_t Session::Position(size_t layer) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.CheckUsable();
  m.CheckLayer(layer);
  return m.At(layer, 0).tokens();
}

void Session::AppendAt(size_t layer, size_t position, const float* k,
                       const float* v, size_t n) {
  AppendChecked(layer, &position, k, v, n);
}

void Session::PrefillAt(size_t layer, size_t position, const float* q,
                        const float* k, const float* v, size_t n, float* out) {
  PrefillChecked(layer, &position, q, k, v, n, out);
}

void Session::Attend(size_t layer, const float* q, float* out) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->ValidateAttend(layer, q, out);
  impl_->DoAttend(layer, q, out);
}

void Session::AttendReadOnly(size_t layer, const float* q, float* out) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.ValidateAttend(layer, q, out);
  m.ForHeads(m.layer_serial[layer], m.cfg.n_kv_heads, [&](size_t h, float* ws) {
    m.At(layer, h).Attend(q + h * m.G * m.cfg.dk, m.G, out + h * m.G * m.cfg.dv,
                          ws, /*learn=*/false);
  });
}

size_t Session::MinTruncatePosition() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.CheckUsable();
  size_t p = 0;
  for (const auto& sk : m.sketches)
    p = std::max(p, size_t(sk->tokens() - sk->Truncatable()));
  return p;
}

void Session::Truncate(size_t position) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.CheckUsable();
  // Every head is checked before any changes: all or nothing.
  for (size_t i = 0; i < m.sketches.size(); ++i) {
    const Sketch& sk = *m.sketches[i];
    const size_t layer = i / m.cfg.n_kv_heads, h = i % m.cfg.n_kv_heads;
    if (position > sk.tokens()) {
      throw Error("truncate: position " + std::to_string(position) +
                  " is beyond the " + std::to_string(sk.tokens()) +
                  " tokens of layer " + std::to_string(layer));
    }
    if (sk.tokens() - position > sk.Truncatable()) {
      throw Error("truncate: head " + std::to_string(h) + " of layer " +
                  std::to_string(layer) + " (method " + m.cfg.method +
                  ") holds only positions >= " +
                  std::to_string(sk.tokens() - sk.Truncatable()) +
                  " verbatim; " + std::to_string(position) +
                  " was already compressed or dropped; nothing was changed");
    }
  }
  m.ForHeads(true, m.sketches.size(), [&](size_t i, float* ws) {
    m.sketches[i]->Truncate(position, ws);
  });
}

std::unique_ptr<Session> Session::Fork() const {
  // In a context, the copy is another sequence of it.
  std::unique_ptr<Session> copy(new Session(impl_->cfg, impl_->shared));
  copy->LoadBytes(SaveBytes());
  return copy;
}

void Session::Prefill(size_t layer, const float* q, const float* k,
                      const float* v, size_t n, float* out) {
  PrefillChecked(layer, nullptr, q, k, v, n, out);
}

void Session::PrefillChecked(size_t layer, const size_t* position,
                             const float* q, const float* k, const float* v,
                             size_t n, float* out) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.ValidateAppend(layer, k, v, n);
  if (position)
    CheckPosition("prefill", layer, *position, m.At(layer, 0).tokens());
  if (!q || !out) throw Error("prefill: null query or output pointer");
  if (n > SIZE_MAX / sizeof(float) / (m.cfg.n_heads * m.cfg.dk) ||
      n > SIZE_MAX / sizeof(float) / (m.cfg.n_heads * m.cfg.dv)) {
    throw Error("prefill: " + std::to_string(n) +
                " tokens overflow the address space");
  }
  CheckFinite(q, n * m.cfg.n_heads * m.cfg.dk, "queries", layer);
  const size_t nkv = m.cfg.n_kv_heads, dk = m.cfg.dk, dv = m.cfg.dv;
  const size_t G = m.G, nh = m.cfg.n_heads;
  // A block multiplies the work of a call by its tokens: a layer too small
  // to split for one token is worth splitting for many.
  const bool serial = m.layer_serial[layer] && (m.threads == 1 || n < 16);
  m.ForHeads(serial, nkv, [&](size_t h, float* ws) {
    m.At(layer, h).Prefill(q + h * G * dk, nh * dk, k + h * dk, nkv * dk,
                           v + h * dv, nkv * dv, n, G, out + h * G * dv,
                           nh * dv, ws);
  });
}

void Session::AppendAll(const float* k, const float* v) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  const size_t ks = m.cfg.n_kv_heads * m.cfg.dk,
               vs = m.cfg.n_kv_heads * m.cfg.dv;
  for (size_t l = 0; l < m.cfg.layers; ++l)
    m.ValidateAppend(l, k + l * ks, v + l * vs, 1);
  // Layers and heads in one parallel region.
  m.ForHeads(m.all_serial, m.sketches.size(), [&](size_t i, float* ws) {
    m.sketches[i]->Append(k + i * m.cfg.dk, v + i * m.cfg.dv, ws);
  });
}

void Session::AttendAll(const float* q, float* out) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  const size_t qs = m.cfg.n_heads * m.cfg.dk, os = m.cfg.n_heads * m.cfg.dv;
  for (size_t l = 0; l < m.cfg.layers; ++l)
    m.ValidateAttend(l, q + l * qs, out + l * os);
  m.ForHeads(m.all_serial, m.sketches.size(), [&](size_t i, float* ws) {
    m.sketches[i]->Attend(q + i * m.G * m.cfg.dk, m.G, out + i * m.G * m.cfg.dv,
                          ws);
  });
}

void Session::Reset() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->Reset();
}

SessionStats Session::Stats() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.CheckUsable();
  SessionStats s;
  s.arena_bytes = m.arena->capacity();
  s.accounted_bytes = m.arena->used();
  s.state_bytes = m.state_bytes;
  s.scratch_bytes = m.threads * m.ws_stride * 4;  // a context's: shared
  for (const auto& sk : m.sketches) s.retained += sk->retained();
  s.tokens = m.sketches.empty() ? 0 : m.sketches[0]->tokens();
  for (const auto& c : m.arena->components())
    s.components.push_back({c.name, c.bytes});
  return s;
}

void Session::Save(const std::string& path) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  kvsketch::SaveState(path, impl_->StateConfig(), *impl_->arena,
                      impl_->StateBegin(), impl_->sketches);
}

std::string Session::SaveBytes() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  return SaveStateBytes(impl_->StateConfig(), *impl_->arena,
                        impl_->StateBegin(), impl_->sketches);
}

void Session::LoadBytes(const std::string& bytes) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  LoadStateBytes(bytes, "state", impl_->StateConfig(), *impl_->arena,
                 impl_->StateBegin(), impl_->sketches);
}

size_t Session::StateSize() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  return StateBytesSize(impl_->StateConfig(), *impl_->arena,
                        impl_->StateBegin(), impl_->sketches);
}

size_t Session::SaveState(void* dst, size_t capacity) const {
  if (!dst && capacity) throw Error("save state: null buffer");
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  return SaveStateInto(dst, capacity, impl_->StateConfig(), *impl_->arena,
                       impl_->StateBegin(), impl_->sketches);
}

void Session::LoadState(const void* src, size_t size) {
  if (!src && size) throw Error("load state: null buffer");
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  LoadStateBytes(static_cast<const char*>(src), size, "state",
                 impl_->StateConfig(), *impl_->arena, impl_->StateBegin(),
                 impl_->sketches, /*commit=*/true);
}

void Session::ValidateState(const void* src, size_t size) {
  if (!src && size) throw Error("validate state: null buffer");
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  LoadStateBytes(static_cast<const char*>(src), size, "state",
                 impl_->StateConfig(), *impl_->arena, impl_->StateBegin(),
                 impl_->sketches, /*commit=*/false);
}

void Session::Load(const std::string& path) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->CheckUsable();
  kvsketch::LoadState(path, impl_->StateConfig(), *impl_->arena,
                      impl_->StateBegin(), impl_->sketches);
}

// ---------------------------------------------------------------- Context

Context::Context(const ContextConfig& config)
    : impl_(std::make_shared<Impl>()) {
  if (config.max_sequences == 0 || config.max_sequences > 65536) {
    throw Error("context: max_sequences must be in [1, 65536], got " +
                std::to_string(config.max_sequences));
  }
  if (config.base.parallel_for) {
    throw Error(
        "context: it owns its thread pool; leave base.parallel_for empty");
  }
  Impl& c = *impl_;
  // The base sequence, built once standalone, sizes everything: threads,
  // per-thread scratch and the state of one sequence at the base budget.
  size_t state = 0;
  {
    Session probe(config.base);
    const Session::Impl& p = *probe.impl_;
    c.threads = p.threads;
    c.ws_floats = p.ws_floats;
    c.ws_stride = p.ws_stride;
    state = Arena::kAlign;
    for (size_t b : p.head_budget) state += Arena::Aligned(b);
  }
  c.base = config.base;
  c.slot_bytes = (state + Arena::kAlign) / Arena::kAlign * Arena::kAlign;
  const size_t scratch_bytes =
      (c.threads * c.ws_stride * 4 + Arena::kAlign - 1) / Arena::kAlign *
      Arena::kAlign;
  if (c.slot_bytes >
      (SIZE_MAX - scratch_bytes - Arena::kAlign) / config.max_sequences) {
    throw Error(
        "context: max_sequences x the base state overflows the "
        "address space");
  }
  c.memory.reset(new Arena(scratch_bytes + c.slot_bytes * config.max_sequences +
                           Arena::kAlign));
  c.scratch = c.memory->CarveArray<float>("per-thread scratch",
                                          scratch_bytes / sizeof(float));
  for (size_t i = 0; i < config.max_sequences; ++i)
    c.slot.push_back(
        c.memory->CarveArray<uint8_t>("sequence slots", c.slot_bytes));
  c.in_use.assign(config.max_sequences, false);
  c.owner.assign(config.max_sequences, nullptr);
  c.pool.reset(new tbb::task_arena(int(c.threads)));
}

Context::~Context() = default;

std::unique_ptr<Session> Context::NewSequence(const SessionConfig& config) {
  const SessionConfig& b = impl_->base;
  if (config.layers != b.layers || config.n_heads != b.n_heads ||
      config.n_kv_heads != b.n_kv_heads || config.dk != b.dk ||
      config.dv != b.dv) {
    throw Error(
        "context: a sequence must have the context's shape (layers, "
        "n_heads, n_kv_heads, dk, dv)");
  }
  return std::unique_ptr<Session>(new Session(config, impl_));
}

std::unique_ptr<Session> Context::NewSequence() {
  return NewSequence(impl_->base);
}

size_t Context::max_sequences() const { return impl_->slot.size(); }

size_t Context::sequences() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->used;
}

size_t Context::bytes() const { return impl_->memory->capacity(); }

size_t Context::slot_bytes() const { return impl_->slot_bytes; }

// Whole-context state: "KVSCTX01", u32 version, u32 sequences, then per
// sequence u32 slot, u32 0, u64 size and its state (the session format,
// with its own checksums).
namespace {
constexpr char kContextMagic[8] = {'K', 'V', 'S', 'C', 'T', 'X', '0', '1'};
constexpr uint32_t kContextVersion = 1;
template <typename T>
void PutRaw(uint8_t*& p, T x) {
  std::memcpy(p, &x, sizeof(T));
  p += sizeof(T);
}
}  // namespace

size_t Context::StateSize() const {
  const Impl& c = *impl_;
  std::lock_guard<std::mutex> lock(c.mu);
  size_t total = 16;
  for (Session* s : c.owner)
    if (s) total += 16 + s->StateSize();
  return total;
}

size_t Context::SaveState(void* dst, size_t capacity) const {
  if (!dst && capacity) throw Error("context save state: null buffer");
  const Impl& c = *impl_;
  std::lock_guard<std::mutex> lock(c.mu);
  size_t total = 16;
  uint32_t live = 0;
  for (Session* s : c.owner) {
    if (!s) continue;
    total += 16 + s->StateSize();
    ++live;
  }
  if (capacity < total) {
    throw Error("context save state: the buffer holds " +
                std::to_string(capacity) + " bytes, the state needs " +
                std::to_string(total) + "; nothing was written");
  }
  uint8_t* p = static_cast<uint8_t*>(dst);
  std::memcpy(p, kContextMagic, 8);
  p += 8;
  PutRaw(p, kContextVersion);
  PutRaw(p, live);
  for (size_t i = 0; i < c.owner.size(); ++i) {
    if (!c.owner[i]) continue;
    const size_t size = c.owner[i]->StateSize();
    PutRaw(p, uint32_t(i));
    PutRaw(p, uint32_t(0));
    PutRaw(p, uint64_t(size));
    p += c.owner[i]->SaveState(p, size);
  }
  return total;
}

void Context::LoadState(const void* src, size_t size) {
  if (!src && size) throw Error("context load state: null buffer");
  Impl& c = *impl_;
  std::lock_guard<std::mutex> lock(c.mu);
  const uint8_t* b = static_cast<const uint8_t*>(src);
  const auto fail = [](const std::string& why) {
    throw IoError("context state: " + why + "; nothing was changed");
  };
  if (size < 16 || std::memcmp(b, kContextMagic, 8) != 0)
    fail("not a kvsketch context state (bad magic)");
  uint32_t version, count;
  std::memcpy(&version, b + 8, 4);
  std::memcpy(&count, b + 12, 4);
  if (version != kContextVersion) {
    fail("format version " + std::to_string(version) +
         " (this build reads version " + std::to_string(kContextVersion) + ")");
  }
  size_t live = 0;
  for (Session* s : c.owner) live += s != nullptr;
  if (count != live) {
    fail("it holds " + std::to_string(count) + " sequences, the context has " +
         std::to_string(live) +
         " (create the same sequences, in the same order, first)");
  }
  // Every entry located and every sequence's bytes validated before any
  // sequence changes.
  struct Entry {
    Session* s;
    uint32_t slot;
    const uint8_t* data;
    size_t size;
  };
  std::vector<Entry> entries;
  std::vector<bool> seen(c.owner.size(), false);
  size_t pos = 16;
  for (uint32_t e = 0; e < count; ++e) {
    if (size - pos < 16) fail("truncated (sequence " + std::to_string(e) + ")");
    uint32_t slot, zero;
    uint64_t n;
    std::memcpy(&slot, b + pos, 4);
    std::memcpy(&zero, b + pos + 4, 4);
    std::memcpy(&n, b + pos + 8, 8);
    pos += 16;
    if (slot >= c.owner.size() || !c.owner[slot] || seen[slot] || zero != 0) {
      fail("sequence " + std::to_string(e) + " is for slot " +
           std::to_string(slot) + ", which holds no sequence of this context" +
           (slot < seen.size() && seen[slot] ? " (twice)" : ""));
    }
    seen[slot] = true;
    if (n > size - pos) fail("truncated (slot " + std::to_string(slot) + ")");
    entries.push_back({c.owner[slot], slot, b + pos, size_t(n)});
    pos += size_t(n);
  }
  if (pos != size) fail("trailing bytes after the last sequence");
  for (const Entry& e : entries) {
    try {
      e.s->ValidateState(e.data, e.size);
    } catch (const Error& x) {  // its message says nothing was changed
      throw IoError("context state, the sequence in slot " +
                    std::to_string(e.slot) + ": " + x.what());
    }
  }
  for (const Entry& e : entries) e.s->LoadState(e.data, e.size);
}

}  // namespace kvsketch
