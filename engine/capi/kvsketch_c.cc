// The C ABI: wraps Session, turns exceptions into status codes.
#include "kvsketch/kvsketch_c.h"

#include <new>
#include <string>

#include "kvsketch/kvsketch.h"

struct kvs_session {
  std::unique_ptr<kvsketch::Session> session;
  std::string error;
};

namespace {

thread_local std::string g_create_error;

template <typename F>
kvs_status Guard(std::string* error, F&& f) {
  try {
    f();
    return KVS_OK;
  } catch (const kvsketch::BudgetError& e) {
    *error = e.what();
    return KVS_BUDGET;
  } catch (const kvsketch::IoError& e) {
    *error = e.what();
    return KVS_IO;
  } catch (const kvsketch::Error& e) {
    *error = e.what();
    return KVS_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    *error = "out of memory";
    return KVS_BUDGET;
  } catch (const std::exception& e) {
    *error = e.what();
    return KVS_INTERNAL;
  } catch (...) {
    *error = "unknown error";
    return KVS_INTERNAL;
  }
}

}  // namespace

extern "C" {

void kvs_config_init(kvs_config* c) {
  if (!c) return;
  *c = kvs_config{};
  c->sinks = 4;
  c->window = -1;
  c->rope_interleaved = 1;
  c->rotate = 1;
}

kvs_status kvs_create(const kvs_config* c, kvs_session** out) {
  if (!c || !out) {
    g_create_error = "kvs_create: null argument";
    return KVS_INVALID_ARGUMENT;
  }
  *out = nullptr;
  kvs_session* s = nullptr;
  const kvs_status st = Guard(&g_create_error, [&] {
    kvsketch::SessionConfig cfg;
    cfg.layers = c->layers;
    cfg.n_heads = c->n_heads;
    cfg.n_kv_heads = c->n_kv_heads;
    cfg.dk = c->dk;
    cfg.dv = c->dv;
    cfg.scale = c->scale;
    if (c->method) cfg.method = c->method;
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
    if (c->storage) cfg.storage = c->storage;
    if (c->storage_k) cfg.storage_k = c->storage_k;
    if (c->storage_v) cfg.storage_v = c->storage_v;
    cfg.rotate = c->rotate != 0;
    cfg.threads = c->threads;
    cfg.seed = c->seed;
    cfg.sinks = c->sinks;
    cfg.window = c->window;
    cfg.rope_theta = c->rope_theta;
    cfg.rope_dims = c->rope_dims;
    cfg.rope_interleaved = c->rope_interleaved != 0;
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

kvs_status kvs_stats_get(const kvs_session* s, kvs_stats* out) {
  if (!s || !out) return KVS_INVALID_ARGUMENT;
  auto* m = const_cast<kvs_session*>(s);
  return Guard(&m->error, [&] {
    const kvsketch::SessionStats st = s->session->Stats();
    out->arena_bytes = st.arena_bytes;
    out->accounted_bytes = st.accounted_bytes;
    out->state_bytes = st.state_bytes;
    out->scratch_bytes = st.scratch_bytes;
    out->retained = st.retained;
    out->tokens = st.tokens;
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

kvs_status kvs_reset(kvs_session* s) {
  if (!s) return KVS_INVALID_ARGUMENT;
  return Guard(&s->error, [&] { s->session->Reset(); });
}

const char* kvs_last_error(const kvs_session* s) {
  return s ? s->error.c_str() : g_create_error.c_str();
}

const char* kvs_version(void) { return kvsketch::Version(); }

}  // extern "C"
