// Append and Attend never allocate: operator new (and, outside sanitizer
// builds, malloc itself) is counted process-wide, on every thread, while
// every method in every storage appends and attends with 1 and 2 threads.
#include <atomic>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "doctest/doctest.h"
#include "kvsketch/kvsketch.h"
#include "tests/emulated.h"

namespace {
std::atomic<bool> g_armed{false};
std::atomic<size_t> g_allocs{0};
inline void Count() {
  if (g_armed.load(std::memory_order_relaxed))
    g_allocs.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

#if !defined(__SANITIZE_ADDRESS__) && !defined(KVSKETCH_TEST_SANITIZED) && \
    defined(__GLIBC__)
// glibc's own entry points: every malloc of the process (TBB's, the C++
// library's) is counted, not only operator new.
extern "C" void* __libc_malloc(size_t);
extern "C" void* __libc_calloc(size_t, size_t);
extern "C" void* __libc_realloc(void*, size_t);
extern "C" void* __libc_memalign(size_t, size_t);
extern "C" void* malloc(size_t n) {
  Count();
  return __libc_malloc(n);
}
extern "C" void* calloc(size_t n, size_t m) {
  Count();
  return __libc_calloc(n, m);
}
extern "C" void* realloc(void* p, size_t n) {
  Count();
  return __libc_realloc(p, n);
}
extern "C" int posix_memalign(void** p, size_t a, size_t n) {
  Count();
  *p = __libc_memalign(a, n);
  return *p ? 0 : 12;  // ENOMEM
}
extern "C" void* aligned_alloc(size_t a, size_t n) {
  Count();
  return __libc_memalign(a, n);
}
constexpr bool kMallocCounted = true;
#else
constexpr bool kMallocCounted = false;
#endif

void* operator new(size_t n) {
  Count();
  void* p = std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  Count();
  return std::malloc(n ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t& t) noexcept {
  return operator new(n, t);
}
// GCC sees these frees paired with the replaced operator new (malloc
// underneath) and warns about a mismatch that is not one.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace kvsketch {
namespace {

const char* kMethods[] = {"exact",  "window", "uniform", "balance", "taylor",
                          "hashed", "h2o",    "tova",    "risk",    "blurry"};

TEST_CASE(
    "append, attend and prefill never allocate (every method, storage, "
    "threads)") {
  const std::string counted = kMallocCounted ? "yes" : "no (sanitizer build)";
  MESSAGE("malloc itself counted: " << counted);
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  for (const char* m : kMethods) {
    for (const char* st : {"f32", "f16", "bf16"}) {
      // Under QEMU: f16 (the default) with 2 threads only.
      if (test::kEmulated && std::string(st) != "f16") continue;
      for (int threads : {1, 2}) {
        if (test::kEmulated && threads == 1) continue;
        SessionConfig c;
        c.layers = 2;
        c.n_heads = 8;
        c.n_kv_heads = 4;
        c.dk = 32;
        c.dv = 32;
        c.method = m;
        c.storage = st;
        // Large enough that layers run their heads in parallel (2 threads).
        c.budget_tokens_per_head = std::string(m) == "exact" ? 640 : 140;
        c.threads = threads;
        c.rope_theta = 10000.0f;
        Session s(c);
        const size_t L = c.layers, KV = c.n_kv_heads, H = c.n_heads;
        std::vector<float> k(L * KV * 32), v(L * KV * 32), q(L * H * 32),
            out(L * H * 32);
        auto fill = [&] {
          for (auto& x : k) x = g(rng);
          for (auto& x : v) x = g(rng);
          for (auto& x : q) x = g(rng);
        };
        auto step = [&](size_t t) {
          if (t % 2) {
            s.AppendAll(k.data(), v.data());
            s.AttendAll(q.data(), out.data());
          } else {
            for (size_t l = 0; l < L; ++l) {
              s.Append(l, k.data() + l * KV * 32, v.data() + l * KV * 32);
              s.Attend(l, q.data() + l * H * 32, out.data() + l * H * 32);
            }
          }
        };
        fill();
        for (size_t t = 0; t < 8; ++t) step(t);  // warm-up (thread pool)
        const size_t tokens = std::string(m) == "exact" ? 560 : 500;
        size_t allocs = 0;
        for (size_t t = 8; t < tokens; ++t) {
          fill();
          g_allocs = 0;
          g_armed = true;
          step(t);
          g_armed = false;
          allocs += g_allocs.load();
        }
        // Batched prefill: two blocks of 20 tokens per layer (query tiles of
        // 16 and 4 queries' tokens, so both a full and a partial tile).
        const size_t P = 20;
        std::vector<float> pk(P * KV * 32), pv(P * KV * 32), pq(P * H * 32),
            pout(P * H * 32);
        for (int rep = 0; rep < 2; ++rep) {
          for (auto& x : pk) x = g(rng);
          for (auto& x : pv) x = g(rng);
          for (auto& x : pq) x = g(rng);
          g_allocs = 0;
          g_armed = true;
          for (size_t l = 0; l < L; ++l)
            s.Prefill(l, pq.data(), pk.data(), pv.data(), P, pout.data());
          g_armed = false;
          allocs += g_allocs.load();
        }
        const std::string label =
            std::string(m) + " " + st + " threads=" + std::to_string(threads);
        INFO(label);
        CHECK(allocs == 0);
      }
    }
  }
}

// 2 layers, 8 query and 4 KV heads of 32, 140 tokens per head (large enough
// that layers run their heads in parallel), 2 threads; and one token's
// random keys, values and queries for it.
SessionConfig TwoLayers(const char* method) {
  SessionConfig c;
  c.layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.dk = c.dv = 32;
  c.method = method;
  c.budget_tokens_per_head = 140;
  c.threads = 2;
  return c;
}
struct TwoLayerToken {
  std::vector<float> k = std::vector<float>(2 * 4 * 32),
                     v = std::vector<float>(2 * 4 * 32),
                     q = std::vector<float>(2 * 8 * 32),
                     out = std::vector<float>(2 * 8 * 32);
  void Fill(std::mt19937& rng) {
    std::normal_distribution<float> g;
    for (auto& x : k) x = g(rng);
    for (auto& x : v) x = g(rng);
    for (auto& x : q) x = g(rng);
  }
};

TEST_CASE("sequences of a context never allocate on append / attend") {
  std::mt19937 rng(5);
  for (const char* m : {"risk", "window", "h2o"}) {
    const SessionConfig c = TwoLayers(m);
    ContextConfig cc;
    cc.base = c;
    cc.max_sequences = 2;
    Context ctx(cc);
    std::unique_ptr<Session> a = ctx.NewSequence(), b = ctx.NewSequence();
    TwoLayerToken tok;
    size_t allocs = 0;
    for (size_t t = 0; t < 400; ++t) {
      tok.Fill(rng);
      const bool count = t >= 8;  // after a warm-up (thread pool)
      if (count) {
        g_allocs = 0;
        g_armed = true;
      }
      for (Session* s : {a.get(), b.get()}) {
        for (size_t l = 0; l < 2; ++l) {
          s->Append(l, tok.k.data() + l * 4 * 32, tok.v.data() + l * 4 * 32);
          s->Attend(l, tok.q.data() + l * 8 * 32, tok.out.data() + l * 8 * 32);
        }
      }
      if (count) {
        g_armed = false;
        allocs += g_allocs.load();
      }
    }
    INFO(std::string(m));
    CHECK(allocs == 0);
  }
}

TEST_CASE("the caller's parallel_for: append / attend never allocate") {
  std::mt19937 rng(7);
  SessionConfig c = TwoLayers("risk");
  // A pool that runs the tasks in reverse on the calling thread.
  c.parallel_for = [](size_t n,
                      const std::function<void(size_t, size_t)>& task) {
    for (size_t i = n; i-- > 0;) task(i, i % 2);
  };
  Session s(c);
  TwoLayerToken tok;
  size_t allocs = 0;
  for (size_t t = 0; t < 300; ++t) {
    tok.Fill(rng);
    g_allocs = 0;
    g_armed = true;
    s.AppendAll(tok.k.data(), tok.v.data());
    s.AttendAll(tok.q.data(), tok.out.data());
    g_armed = false;
    allocs += g_allocs.load();
  }
  CHECK(allocs == 0);
}

}  // namespace
}  // namespace kvsketch
