// The C ABI: wraps Session, turns exceptions into status codes.
#include "kvsketch/kvsketch_c.h"

#include <cstddef>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <string>

#include "kvsketch/kvsketch.h"

struct kvs_session {
  std::unique_ptr<kvsketch::Session> session;
  std::string error;
};

struct kvs_context {
  std::unique_ptr<kvsketch::Context> context;
};

namespace {

thread_local std::string g_create_error;

// The log callback (kvs_set_log): read under the mutex, called outside it.
std::mutex g_log_mu;
kvs_log_fn g_log_fn = nullptr;
void* g_log_user = nullptr;

kvs_status Report(std::string* error, kvs_status st, const char* what) {
  try {
    *error = what;
  } catch (...) {  // out of memory for the message itself
  }
  kvs_log_fn fn;
  void* user;
  {
    std::lock_guard<std::mutex> lock(g_log_mu);
    fn = g_log_fn;
    user = g_log_user;
  }
  if (fn) fn(st, error->c_str(), user);
  return st;
}

template <typename F>
kvs_status Guard(std::string* error, F&& f) {
  try {
    f();
    return KVS_OK;
  } catch (const kvsketch::BudgetError& e) {
    return Report(error, KVS_BUDGET, e.what());
  } catch (const kvsketch::IoError& e) {
    return Report(error, KVS_IO, e.what());
  } catch (const kvsketch::Error& e) {
    return Report(error, KVS_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return Report(error, KVS_BUDGET, "out of memory");
  } catch (const std::exception& e) {
    return Report(error, KVS_INTERNAL, e.what());
  } catch (...) {
    return Report(error, KVS_INTERNAL, "unknown error");
  }
}

const char* const kMethodNames[] = {"risk",    "exact",  "window", "uniform",
                                    "balance", "taylor", "hashed", "h2o",
                                    "tova",    "risk",   "blurry"};
const char* const kStorageNames[] = {"f16", "f32", "f16", "bf16",
                                     "q8",  "q4",  "q4a"};
constexpr int kMethodCount = int(sizeof(kMethodNames) / sizeof(char*));
constexpr int kStorageCount = int(sizeof(kStorageNames) / sizeof(char*));

// The first published layout with struct_size (0.2) ends at rope_interleaved;
// later fields are appended after it.
constexpr size_t kConfigMinSize =
    offsetof(kvs_config, rope_interleaved) + sizeof(int);

}  // namespace

// A C configuration as the C++ one (throws Error naming the problem).
static kvsketch::SessionConfig FromC(const kvs_config* c) {
  if (c->struct_size < kConfigMinSize || c->struct_size > sizeof(kvs_config)) {
    throw kvsketch::Error(
        "kvs_config.struct_size is " + std::to_string(c->struct_size) +
        "; this library takes " + std::to_string(kConfigMinSize) + " to " +
        std::to_string(sizeof(kvs_config)) +
        " (call kvs_config_init; a larger size means a header newer than "
        "the library)");
  }
  // Fields past the caller's layout keep their defaults.
  kvs_config full;
  kvs_config_init(&full);
  std::memcpy(&full, c, c->struct_size);
  c = &full;
  auto method = [](kvs_method m) {
    const char* n = kvs_method_name(m);
    if (!n)
      throw kvsketch::Error("method: enum value " + std::to_string(int(m)) +
                            " is not a kvs_method");
    return std::string(n);
  };
  auto storage = [](kvs_storage s, const char* what) {
    const char* n = kvs_storage_name(s);
    if (!n)
      throw kvsketch::Error(std::string(what) + ": enum value " +
                            std::to_string(int(s)) + " is not a kvs_storage");
    return std::string(n);
  };
  kvsketch::SessionConfig cfg;
  cfg.layers = c->layers;
  cfg.n_heads = c->n_heads;
  cfg.n_kv_heads = c->n_kv_heads;
  cfg.dk = c->dk;
  cfg.dv = c->dv;
  cfg.scale = c->scale;
  if (c->method != KVS_METHOD_DEFAULT) cfg.method = method(c->method);
  cfg.budget_bytes = c->budget_bytes;
  cfg.budget_bytes_per_head = c->budget_bytes_per_head;
  cfg.budget_tokens_per_head = c->budget_tokens_per_head;
  if (c->head_weights) {
    if (c->n_kv_heads == 0 || c->n_kv_heads > 65536 ||
        c->layers > 65536 / c->n_kv_heads) {
      throw kvsketch::Error(
          "head_weights: layers * n_kv_heads must be in [1, 65536]");
    }
    cfg.head_weights.assign(c->head_weights,
                            c->head_weights + c->layers * c->n_kv_heads);
  }
  if (c->storage != KVS_STORAGE_DEFAULT)
    cfg.storage = storage(c->storage, "storage");
  if (c->storage_k != KVS_STORAGE_DEFAULT)
    cfg.storage_k = storage(c->storage_k, "storage_k");
  if (c->storage_v != KVS_STORAGE_DEFAULT)
    cfg.storage_v = storage(c->storage_v, "storage_v");
  cfg.rotate = c->rotate != 0;
  cfg.threads = c->threads;
  cfg.seed = c->seed;
  cfg.sinks = c->sinks;
  cfg.window = c->window;
  cfg.rope_theta = c->rope_theta;
  cfg.rope_dims = c->rope_dims;
  cfg.rope_interleaved = c->rope_interleaved != 0;
  cfg.block = c->block;
  cfg.degree = c->degree;
  cfg.window_share = c->window_share;
  cfg.probes = c->probes;
  if (c->parallel_for) {
    // The C pool runs a C task that calls the C++ one.
    auto fn = c->parallel_for;
    void* user = c->parallel_user;
    cfg.parallel_for =
        [fn, user](size_t n, const std::function<void(size_t, size_t)>& t) {
          fn(
              user, n,
              [](void* ctx, size_t i, size_t w) {
                (*static_cast<const std::function<void(size_t, size_t)>*>(ctx))(
                    i, w);
              },
              const_cast<void*>(static_cast<const void*>(&t)));
        };
  }
  return cfg;
}

extern "C" {

void kvs_config_init(kvs_config* c) {
  if (!c) return;
  *c = kvs_config{};
  c->struct_size = sizeof(kvs_config);
  c->sinks = 4;
  c->window = -1;
  c->rope_interleaved = 1;
  c->rotate = 1;
  c->block = 64;
  c->degree = 1;
  c->window_share = -1.0f;
}

const char* kvs_method_name(kvs_method m) {
  return int(m) >= 0 && int(m) < kMethodCount ? kMethodNames[m] : nullptr;
}

const char* kvs_storage_name(kvs_storage s) {
  return int(s) >= 0 && int(s) < kStorageCount ? kStorageNames[s] : nullptr;
}

kvs_status kvs_method_from_name(const char* name, kvs_method* out) {
  if (name && out) {
    for (int i = 1; i < kMethodCount; ++i) {
      if (std::strcmp(name, kMethodNames[i]) == 0) {
        *out = kvs_method(i);
        return KVS_OK;
      }
    }
  }
  return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                "unknown method (known: exact, window, uniform, balance, "
                "taylor, hashed, h2o, tova, risk, blurry)");
}

kvs_status kvs_storage_from_name(const char* name, kvs_storage* out) {
  if (name && out) {
    for (int i = 1; i < kStorageCount; ++i) {
      if (std::strcmp(name, kStorageNames[i]) == 0) {
        *out = kvs_storage(i);
        return KVS_OK;
      }
    }
  }
  return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                "unknown storage (known: f32, f16, bf16, q8, q4, q4a)");
}

void kvs_set_log(kvs_log_fn fn, void* user) {
  std::lock_guard<std::mutex> lock(g_log_mu);
  g_log_fn = fn;
  g_log_user = user;
}

kvs_status kvs_create(const kvs_config* c, kvs_session** out) {
  if (!c || !out) {
    return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                  "kvs_create: null argument");
  }
  *out = nullptr;
  kvs_session* s = nullptr;
  const kvs_status st = Guard(&g_create_error, [&] {
    const kvsketch::SessionConfig cfg = FromC(c);
    s = new kvs_session;
    try {
      s->session.reset(new kvsketch::Session(cfg));
    } catch (...) {
      delete s;
      s = nullptr;
      throw;
    }
  });
  *out = s;
  return st;
}

void kvs_destroy(kvs_session* s) { delete s; }

kvs_status kvs_append(kvs_session* s, size_t layer, const float* k,
                      const float* v, size_t n) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Append(layer, k, v, n); });
}

kvs_status kvs_attend(kvs_session* s, size_t layer, const float* q,
                      float* out) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Attend(layer, q, out); });
}

kvs_status kvs_prefill(kvs_session* s, size_t layer, const float* q,
                       const float* k, const float* v, size_t n, float* out) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Prefill(layer, q, k, v, n, out); });
}

kvs_status kvs_position(const kvs_session* s, size_t layer, size_t* position) {
  if (!s || !position) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  return Guard(&m->error, [&] { *position = s->session->Position(layer); });
}

kvs_status kvs_append_at(kvs_session* s, size_t layer, size_t position,
                         const float* k, const float* v, size_t n) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error,
               [&] { s->session->AppendAt(layer, position, k, v, n); });
}

kvs_status kvs_prefill_at(kvs_session* s, size_t layer, size_t position,
                          const float* q, const float* k, const float* v,
                          size_t n, float* out) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] {
    s->session->PrefillAt(layer, position, q, k, v, n, out);
  });
}

kvs_status kvs_stats_get(const kvs_session* s, kvs_stats* out) {
  if (!s || !out) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  return Guard(&m->error, [&] {
    const size_t size = out->struct_size;
    if (size < offsetof(kvs_stats, tokens) + sizeof(size_t) ||
        size > sizeof(kvs_stats)) {
      throw kvsketch::Error("kvs_stats.struct_size is " + std::to_string(size) +
                            "; set it to " + std::to_string(sizeof(kvs_stats)) +
                            " (sizeof(kvs_stats))");
    }
    const kvsketch::SessionStats st = s->session->Stats();
    kvs_stats full;
    full.struct_size = size;
    full.arena_bytes = st.arena_bytes;
    full.accounted_bytes = st.accounted_bytes;
    full.state_bytes = st.state_bytes;
    full.scratch_bytes = st.scratch_bytes;
    full.retained = st.retained;
    full.tokens = st.tokens;
    std::memcpy(out, &full, size);  // only the fields the caller knows
  });
}

kvs_status kvs_save(const kvs_session* s, const char* path) {
  if (!s || !path) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  return Guard(&m->error, [&] { s->session->Save(path); });
}

kvs_status kvs_load(kvs_session* s, const char* path) {
  if (!s || !path) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Load(path); });
}

kvs_status kvs_state_size(const kvs_session* s, size_t* size) {
  if (!s || !size) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  return Guard(&m->error, [&] { *size = s->session->StateSize(); });
}

kvs_status kvs_state_get(const kvs_session* s, void* dst, size_t capacity,
                         size_t* written) {
  if (!s || !written) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  *written = 0;
  return Guard(&m->error,
               [&] { *written = s->session->SaveState(dst, capacity); });
}

kvs_status kvs_state_set(kvs_session* s, const void* src, size_t size) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->LoadState(src, size); });
}

kvs_status kvs_attend_readonly(kvs_session* s, size_t layer, const float* q,
                               float* out) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->AttendReadOnly(layer, q, out); });
}

kvs_status kvs_truncate(kvs_session* s, size_t p) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Truncate(p); });
}

kvs_status kvs_min_truncate_position(const kvs_session* s, size_t* p) {
  if (!s || !p) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  return Guard(&m->error, [&] { *p = s->session->MinTruncatePosition(); });
}

kvs_status kvs_fork(const kvs_session* s, kvs_session** out) {
  if (!s || !out) return KVS_INVALID_ARGUMENT;
  *out = nullptr;
  auto* m = const_cast<kvs_session*>(s);
  kvs_session* copy = nullptr;
  const kvs_status st = Guard(&m->error, [&] {
    std::unique_ptr<kvs_session> c(new kvs_session);
    c->session = s->session->Fork();
    copy = c.release();
  });
  *out = copy;
  return st;
}

kvs_status kvs_reset(kvs_session* s) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Reset(); });
}

kvs_status kvs_context_create(const kvs_config* base, size_t max_sequences,
                              kvs_context** out) {
  if (!base || !out) {
    return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                  "kvs_context_create: null argument");
  }
  *out = nullptr;
  kvs_context* ctx = nullptr;
  const kvs_status st = Guard(&g_create_error, [&] {
    kvsketch::ContextConfig cc;
    cc.base = FromC(base);
    cc.max_sequences = max_sequences;
    std::unique_ptr<kvs_context> c(new kvs_context);
    c->context.reset(new kvsketch::Context(cc));
    ctx = c.release();
  });
  *out = ctx;
  return st;
}

void kvs_context_destroy(kvs_context* c) { delete c; }

kvs_status kvs_sequence_create(kvs_context* c, const kvs_config* cfg,
                               kvs_session** out) {
  if (!c || !out) {
    return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                  "kvs_sequence_create: null argument");
  }
  *out = nullptr;
  kvs_session* s = nullptr;
  const kvs_status st = Guard(&g_create_error, [&] {
    std::unique_ptr<kvs_session> q(new kvs_session);
    q->session =
        cfg ? c->context->NewSequence(FromC(cfg)) : c->context->NewSequence();
    s = q.release();
  });
  *out = s;
  return st;
}

kvs_status kvs_context_sequences(const kvs_context* c, size_t* in_use,
                                 size_t* max_sequences) {
  if (!c) return KVS_INVALID_ARGUMENT;
  if (in_use) *in_use = c->context->sequences();
  if (max_sequences) *max_sequences = c->context->max_sequences();
  return KVS_OK;
}

kvs_status kvs_context_state_size(const kvs_context* c, size_t* size) {
  if (!c || !size) {
    return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                  "kvs_context_state_size: null argument");
  }
  return Guard(&g_create_error, [&] { *size = c->context->StateSize(); });
}

kvs_status kvs_context_state_get(const kvs_context* c, void* dst,
                                 size_t capacity, size_t* written) {
  if (!c || !written) {
    return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                  "kvs_context_state_get: null argument");
  }
  *written = 0;
  return Guard(&g_create_error,
               [&] { *written = c->context->SaveState(dst, capacity); });
}

kvs_status kvs_context_state_set(kvs_context* c, const void* src, size_t size) {
  if (!c) {
    return Report(&g_create_error, KVS_INVALID_ARGUMENT,
                  "kvs_context_state_set: null argument");
  }
  return Guard(&g_create_error, [&] { c->context->LoadState(src, size); });
}

const char* kvs_last_error(const kvs_session* s) {
  return s ? s->error.c_str() : g_create_error.c_str();
}

const char* kvs_version(void) { return kvsketch::Version(); }

}  // extern "C"
