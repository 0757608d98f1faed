// The Python module kvsketch._kvsketch (pybind11): Session on numpy arrays
// in the Hugging Face per-layer cache layout, trace reading and the
// evaluation behind `kvsketch bench`. The pure-Python package
// (python/kvsketch/__init__.py) wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/cli/bench.h"
#include "engine/io/trace.h"
#include "engine/sketch/sketch.h"
#include "kvsketch/error.h"
#include "kvsketch/kvsketch.h"
#include "kvsketch/version.h"

namespace py = pybind11;

namespace kvsketch {
namespace {

using F32 = py::array_t<float, py::array::c_style>;

std::string ShapeText(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A C-contiguous float32 view of `obj` (float16 is converted; any other
// dtype, or a non-contiguous array, is a ValueError naming what is needed).
F32 Floats(const py::handle& obj, const char* name, const std::string& want) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::value_error(std::string(name) + ": expected a numpy array " +
                          want + ", got " +
                          std::string(py::str(obj.get_type())));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = a.dtype();
  if (dt.is(py::dtype::of<float>())) {
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(std::string(name) +
                            ": the array must be C-contiguous "
                            "(np.ascontiguousarray)");
    }
    return py::reinterpret_borrow<F32>(a);
  }
  if (dt.kind() == 'f' && dt.itemsize() == 2) {  // float16
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(std::string(name) +
                            ": the array must be C-contiguous "
                            "(np.ascontiguousarray)");
    }
    return F32(a);  // converted copy
  }
  throw py::value_error(std::string(name) + ": dtype " +
                        std::string(py::str(py::handle(dt))) +
                        ", expected float32 or float16 " + want);
}

// [heads, n, d] -> [n][heads][d] (the library's token-major rows).
void TokenMajor(const float* src, size_t heads, size_t n, size_t d,
                float* dst) {
  for (size_t h = 0; h < heads; ++h)
    for (size_t t = 0; t < n; ++t)
      std::memcpy(dst + (t * heads + h) * d, src + (h * n + t) * d,
                  d * sizeof(float));
}

void HeadMajor(const float* src, size_t heads, size_t n, size_t d, float* dst) {
  for (size_t h = 0; h < heads; ++h)
    for (size_t t = 0; t < n; ++t)
      std::memcpy(dst + (h * n + t) * d, src + (t * heads + h) * d,
                  d * sizeof(float));
}

class PySession {
 public:
  explicit PySession(const SessionConfig& c) : s_(new Session(c)) {}
  explicit PySession(std::unique_ptr<Session> s) : s_(std::move(s)) {}

  const SessionConfig& cfg() const { return s_->config(); }

  // [kv_heads, n, head_dim] (or [kv_heads, head_dim] for one token).
  size_t Tokens(const F32& a, size_t heads, size_t d, const char* name) const {
    const std::string want = "of shape [" + std::to_string(heads) + ", n, " +
                             std::to_string(d) + "] (or [" +
                             std::to_string(heads) + ", " + std::to_string(d) +
                             "] for one token)";
    if (a.ndim() == 3 && size_t(a.shape(0)) == heads &&
        size_t(a.shape(2)) == d && a.shape(1) >= 1) {
      return size_t(a.shape(1));
    }
    if (a.ndim() == 2 && size_t(a.shape(0)) == heads &&
        size_t(a.shape(1)) == d) {
      return 1;
    }
    throw py::value_error(std::string(name) + ": shape " + ShapeText(a) +
                          ", expected " + want);
  }

  void CheckLayer(size_t layer) const {
    if (layer >= cfg().layers) {
      throw py::index_error("layer " + std::to_string(layer) +
                            " out of range (the session has " +
                            std::to_string(cfg().layers) + ")");
    }
  }

  void Append(size_t layer, const py::object& ko, const py::object& vo) {
    CheckLayer(layer);
    const SessionConfig& c = cfg();
    const F32 k = Floats(ko, "k", "[kv_heads, n, head_dim]");
    const F32 v = Floats(vo, "v", "[kv_heads, n, head_dim]");
    const size_t n = Tokens(k, c.n_kv_heads, c.dk, "k");
    if (Tokens(v, c.n_kv_heads, c.dv, "v") != n) {
      throw py::value_error("k and v hold different numbers of tokens: " +
                            ShapeText(k) + " and " + ShapeText(v));
    }
    std::vector<float> kt(n * c.n_kv_heads * c.dk), vt(n * c.n_kv_heads * c.dv);
    TokenMajor(k.data(), c.n_kv_heads, n, c.dk, kt.data());
    TokenMajor(v.data(), c.n_kv_heads, n, c.dv, vt.data());
    py::gil_scoped_release release;
    s_->Append(layer, kt.data(), vt.data(), n);
  }

  py::array Attend(size_t layer, const py::object& qo, bool learn) {
    CheckLayer(layer);
    const SessionConfig& c = cfg();
    const F32 q = Floats(qo, "q", "[heads, head_dim]");
    const size_t n = Tokens(q, c.n_heads, c.dk, "q");
    if (n != 1) {
      throw py::value_error("q: shape " + ShapeText(q) +
                            ", attend takes one token's queries [" +
                            std::to_string(c.n_heads) + ", " +
                            std::to_string(c.dk) + "] (prefill takes several)");
    }
    // One token: [heads, 1, d] and [heads, d] are the same memory.
    std::vector<py::ssize_t> shape(q.shape(), q.shape() + q.ndim());
    shape.back() = py::ssize_t(c.dv);
    F32 out(shape);
    float* o = out.mutable_data();
    const float* qp = q.data();
    {
      py::gil_scoped_release release;
      if (learn) {
        s_->Attend(layer, qp, o);
      } else {
        s_->AttendReadOnly(layer, qp, o);
      }
    }
    return std::move(out);
  }

  py::array Prefill(size_t layer, const py::object& qo, const py::object& ko,
                    const py::object& vo) {
    CheckLayer(layer);
    const SessionConfig& c = cfg();
    const F32 q = Floats(qo, "q", "[heads, n, head_dim]");
    const F32 k = Floats(ko, "k", "[kv_heads, n, head_dim]");
    const F32 v = Floats(vo, "v", "[kv_heads, n, head_dim]");
    const size_t n = Tokens(q, c.n_heads, c.dk, "q");
    if (Tokens(k, c.n_kv_heads, c.dk, "k") != n ||
        Tokens(v, c.n_kv_heads, c.dv, "v") != n) {
      throw py::value_error(
          "q, k and v hold different numbers of tokens: " + ShapeText(q) +
          ", " + ShapeText(k) + ", " + ShapeText(v));
    }
    std::vector<float> qt(n * c.n_heads * c.dk), kt(n * c.n_kv_heads * c.dk),
        vt(n * c.n_kv_heads * c.dv), ot(n * c.n_heads * c.dv);
    TokenMajor(q.data(), c.n_heads, n, c.dk, qt.data());
    TokenMajor(k.data(), c.n_kv_heads, n, c.dk, kt.data());
    TokenMajor(v.data(), c.n_kv_heads, n, c.dv, vt.data());
    {
      py::gil_scoped_release release;
      s_->Prefill(layer, qt.data(), kt.data(), vt.data(), n, ot.data());
    }
    std::vector<py::ssize_t> shape(q.shape(), q.shape() + q.ndim());
    shape.back() = py::ssize_t(c.dv);
    F32 out(shape);
    HeadMajor(ot.data(), c.n_heads, n, c.dv, out.mutable_data());
    return std::move(out);
  }

  Session& session() { return *s_; }

 private:
  std::unique_ptr<Session> s_;
};

py::dict StatsDict(const SessionStats& s) {
  py::dict d;
  d["tokens"] = s.tokens;
  d["retained"] = s.retained;
  d["state_bytes"] = s.state_bytes;
  d["arena_bytes"] = s.arena_bytes;
  d["accounted_bytes"] = s.accounted_bytes;
  d["scratch_bytes"] = s.scratch_bytes;
  py::dict comp;
  for (const auto& c : s.components) comp[py::str(c.first)] = c.second;
  d["components"] = comp;
  return d;
}

// A trace as a dict of numpy arrays: q/k/v lists per layer ([heads, seq,
// d]), scale, rope (dict or None), name.
py::dict TraceDict(const Trace& t) {
  py::dict d;
  py::list q, k, v;
  for (size_t l = 0; l < t.layers; ++l) {
    F32 ql({t.n_heads, t.seq, t.dk}), kl({t.n_kv_heads, t.seq, t.dk}),
        vl({t.n_kv_heads, t.seq, t.dv});
    std::memcpy(ql.mutable_data(), t.q[l].data(), t.q[l].size() * 4);
    std::memcpy(kl.mutable_data(), t.k[l].data(), t.k[l].size() * 4);
    std::memcpy(vl.mutable_data(), t.v[l].data(), t.v[l].size() * 4);
    q.append(ql), k.append(kl), v.append(vl);
  }
  d["q"] = q, d["k"] = k, d["v"] = v;
  d["scale"] = t.scale;
  d["name"] = t.name;
  if (t.rope.present) {
    py::dict r;
    r["theta"] = t.rope.theta;
    r["layout"] = t.rope.interleaved ? "interleaved" : "half";
    r["dims"] = t.rope.dims;
    r["first_position"] = t.rope.first_position;
    d["rope"] = r;
  } else {
    d["rope"] = py::none();
  }
  return d;
}

// The inverse: numpy arrays per layer -> a validated Trace.
Trace TraceFrom(const py::dict& d, size_t index) {
  const std::string what = "trace " + std::to_string(index);
  Trace t;
  t.name = d.contains("name") ? py::str(d["name"]).cast<std::string>() : what;
  const py::list q = d["q"], k = d["k"], v = d["v"];
  t.layers = q.size();
  if (t.layers == 0 || k.size() != t.layers || v.size() != t.layers) {
    throw py::value_error(what +
                          ": q, k and v need one array per layer (the same "
                          "number of layers, at least one)");
  }
  for (size_t l = 0; l < t.layers; ++l) {
    const std::string at = what + ", layer " + std::to_string(l);
    const F32 ql = Floats(q[l], "q", "[heads, seq, head_dim]");
    const F32 kl = Floats(k[l], "k", "[kv_heads, seq, head_dim]");
    const F32 vl = Floats(v[l], "v", "[kv_heads, seq, head_dim]");
    if (ql.ndim() != 3 || kl.ndim() != 3 || vl.ndim() != 3) {
      throw py::value_error(at + ": q " + ShapeText(ql) + ", k " +
                            ShapeText(kl) + ", v " + ShapeText(vl) +
                            ": expected [heads, seq, head_dim] each");
    }
    if (l == 0) {
      t.n_heads = ql.shape(0), t.seq = ql.shape(1), t.dk = ql.shape(2);
      t.n_kv_heads = kl.shape(0), t.dv = vl.shape(2);
    }
    if (size_t(ql.shape(0)) != t.n_heads || size_t(ql.shape(1)) != t.seq ||
        size_t(ql.shape(2)) != t.dk || size_t(kl.shape(0)) != t.n_kv_heads ||
        size_t(kl.shape(1)) != t.seq || size_t(kl.shape(2)) != t.dk ||
        size_t(vl.shape(0)) != t.n_kv_heads || size_t(vl.shape(1)) != t.seq ||
        size_t(vl.shape(2)) != t.dv) {
      throw py::value_error(
          at + ": q " + ShapeText(ql) + ", k " + ShapeText(kl) + ", v " +
          ShapeText(vl) + ": expected q [heads, seq, dk], k [kv_heads, seq, " +
          "dk], v [kv_heads, seq, dv], the same in every layer");
    }
    if (t.n_kv_heads == 0 || t.n_heads % t.n_kv_heads != 0) {
      throw py::value_error(at + ": " + std::to_string(t.n_heads) +
                            " query heads are not a multiple of " +
                            std::to_string(t.n_kv_heads) + " KV heads");
    }
    t.q.emplace_back(ql.data(), ql.data() + ql.size());
    t.k.emplace_back(kl.data(), kl.data() + kl.size());
    t.v.emplace_back(vl.data(), vl.data() + vl.size());
  }
  t.scale = d.contains("scale") && !d["scale"].is_none()
                ? d["scale"].cast<float>()
                : 1.0f / std::sqrt(float(t.dk));
  if (d.contains("rope") && !d["rope"].is_none()) {
    const py::dict r = d["rope"];
    t.rope.present = true;
    if (r.contains("theta")) t.rope.theta = r["theta"].cast<float>();
    if (r.contains("layout")) {
      const std::string layout = py::str(r["layout"]);
      if (layout != "interleaved" && layout != "half") {
        throw py::value_error(what +
                              ": rope layout must be 'interleaved' or 'half'");
      }
      t.rope.interleaved = layout == "interleaved";
    }
    if (r.contains("dims")) t.rope.dims = r["dims"].cast<size_t>();
    if (r.contains("first_position"))
      t.rope.first_position = r["first_position"].cast<size_t>();
  }
  ValidateTrace(t, what);
  return t;
}

}  // namespace
}  // namespace kvsketch

PYBIND11_MODULE(_kvsketch, m) {
  using namespace kvsketch;
  m.doc() = "kvsketch: attention KV caches in a fixed memory budget";
  m.attr("__version__") = Version();
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  static py::exception<BudgetError> budget_error(m, "BudgetError", error.ptr());
  static py::exception<IoError> io_error(m, "StateError", error.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const BudgetError& e) {
      budget_error(e.what());
    } catch (const IoError& e) {
      io_error(e.what());
    } catch (const Error& e) {
      error(e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "kvsketch: out of memory");
    }
  });

  py::class_<PySession>(m, "_Session")
      .def(py::init([](size_t layers, size_t heads, size_t kv_heads,
                       size_t head_dim, const std::string& method,
                       size_t budget_tokens, size_t budget_bytes,
                       size_t budget_bytes_per_head, const std::string& storage,
                       const std::string& storage_k,
                       const std::string& storage_v, bool rotate, int threads,
                       float rope_theta, bool rope_interleaved, float scale,
                       uint64_t seed, size_t sinks) {
             SessionConfig c;
             c.layers = layers;
             c.n_heads = heads;
             c.n_kv_heads = kv_heads;
             c.dk = c.dv = head_dim;
             c.method = method;
             c.budget_tokens_per_head = budget_tokens;
             c.budget_bytes = budget_bytes;
             c.budget_bytes_per_head = budget_bytes_per_head;
             c.storage = storage;
             c.storage_k = storage_k;
             c.storage_v = storage_v;
             c.rotate = rotate;
             c.threads = threads;
             c.rope_theta = rope_theta;
             c.rope_interleaved = rope_interleaved;
             c.scale = scale;
             c.seed = seed;
             c.sinks = sinks;
             py::gil_scoped_release release;
             return new PySession(c);
           }),
           py::arg("layers"), py::arg("heads"), py::arg("kv_heads"),
           py::arg("head_dim"), py::arg("method"), py::arg("budget_tokens"),
           py::arg("budget_bytes"), py::arg("budget_bytes_per_head"),
           py::arg("storage"), py::arg("storage_k"), py::arg("storage_v"),
           py::arg("rotate"), py::arg("threads"), py::arg("rope_theta"),
           py::arg("rope_interleaved"), py::arg("scale"), py::arg("seed"),
           py::arg("sinks"))
      .def("append", &PySession::Append, py::arg("layer"), py::arg("k"),
           py::arg("v"))
      .def("attend", &PySession::Attend, py::arg("layer"), py::arg("q"),
           py::arg("learn") = true)
      .def("prefill", &PySession::Prefill, py::arg("layer"), py::arg("q"),
           py::arg("k"), py::arg("v"))
      .def("truncate",
           [](PySession& s, size_t p) {
             py::gil_scoped_release release;
             s.session().Truncate(p);
           })
      .def("min_truncate_position",
           [](PySession& s) { return s.session().MinTruncatePosition(); })
      .def("position", [](PySession& s,
                          size_t layer) { return s.session().Position(layer); })
      .def("reset",
           [](PySession& s) {
             py::gil_scoped_release release;
             s.session().Reset();
           })
      .def("fork",
           [](PySession& s) {
             py::gil_scoped_release release;
             return new PySession(s.session().Fork());
           })
      .def("stats",
           [](PySession& s) {
             SessionStats st;
             {
               py::gil_scoped_release release;
               st = s.session().Stats();
             }
             return StatsDict(st);
           })
      .def("save_bytes",
           [](PySession& s) {
             std::string b;
             {
               py::gil_scoped_release release;
               b = s.session().SaveBytes();
             }
             return py::bytes(b);
           })
      .def("load_bytes", [](PySession& s, const py::bytes& b) {
        const std::string_view v = b;
        py::gil_scoped_release release;
        s.session().LoadState(v.data(), v.size());
      });

  // The same Attend as Session.attend, called `reps` times from C++ on the
  // same buffers: seconds per call (the Python call's overhead is the
  // difference; python/benchmarks/overhead.py).
  m.def(
      "_cxx_attend_seconds",
      [](PySession& s, size_t layer, const F32& q, size_t reps) {
        const SessionConfig& c = s.cfg();
        if (layer >= c.layers || size_t(q.size()) != c.n_heads * c.dk) {
          throw py::value_error("_cxx_attend_seconds: layer or q size");
        }
        std::vector<float> out(c.n_heads * c.dv);
        py::gil_scoped_release release;
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t r = 0; r < reps; ++r)
          s.session().Attend(layer, q.data(), out.data());
        const auto t1 = std::chrono::steady_clock::now();
        return std::chrono::duration<double>(t1 - t0).count() /
               double(reps ? reps : 1);
      },
      py::arg("session"), py::arg("layer"), py::arg("q"), py::arg("reps"));
  m.def(
      "read_trace",
      [](const std::string& dir) {
        Trace t;
        {
          py::gil_scoped_release release;
          t = LoadTrace(dir);
        }
        return TraceDict(t);
      },
      py::arg("dir"));
  m.def("trace_dirs", &FindTraceDirs, py::arg("path"));
  m.def(
      "evaluate",
      [](const py::list& traces, const std::vector<std::string>& methods,
         const std::vector<size_t>& budget_tokens, size_t budget_bytes,
         const std::string& storage, const std::string& storage_k,
         const std::string& storage_v, bool rotate, uint64_t seed, size_t sinks,
         size_t eval_max, int threads) {
        std::vector<Trace> ts;
        for (size_t i = 0; i < traces.size(); ++i)
          ts.push_back(TraceFrom(traces[i].cast<py::dict>(), i));
        BenchOptions o;
        o.methods = methods;
        o.budgets = budget_tokens;
        o.budget_bytes = budget_bytes;
        o.eval_max = eval_max;
        o.threads = threads;
        o.quiet = true;
        o.base.seed = seed;
        o.base.sinks = sinks;
        o.base.storage_k =
            ParseStorage(storage_k.empty() ? storage : storage_k);
        o.base.storage_v =
            ParseStorage(storage_v.empty() ? storage : storage_v);
        CheckStoragePair(o.base.storage_k, o.base.storage_v);
        o.base.rotate = rotate;
        std::vector<BenchRow> rows;
        {
          py::gil_scoped_release release;
          EvaluateTraces(ts, o, [&](const BenchRow& r) { rows.push_back(r); });
        }
        py::list out;
        for (const BenchRow& r : rows) {
          py::dict d;
          d["method"] = r.method;
          d["budget_tokens"] = r.budget_tokens;
          d["budget_bytes"] = r.budget_bytes;
          d["bytes_used"] = r.bytes_used;
          d["retained"] = r.retained;
          d["mean_rel_err"] = r.mean;
          d["p50_rel_err"] = r.p50;
          d["p95_rel_err"] = r.p95;
          d["append_ns_per_token"] = r.append_ns;
          d["attend_ns_per_query"] = r.attend_ns;
          d["positions"] = r.positions;
          d["error"] = r.error.empty() ? py::object(py::none())
                                       : py::object(py::str(r.error));
          out.append(d);
        }
        return out;
      },
      py::arg("traces"), py::arg("methods"), py::arg("budget_tokens"),
      py::arg("budget_bytes"), py::arg("storage"), py::arg("storage_k"),
      py::arg("storage_v"), py::arg("rotate"), py::arg("seed"),
      py::arg("sinks"), py::arg("eval_max"), py::arg("threads"));
}
