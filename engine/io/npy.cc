#include "engine/io/npy.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>

#include "engine/io/file.h"
#include "kvsketch/error.h"

namespace kvsketch {

size_t NpyArray::size() const {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  return n;
}

namespace {

// Value of 'key' in the header dict, e.g. 'descr': '<f4' -> "'<f4'".
std::string HeaderValue(const std::string& h, const std::string& key,
                        const std::string& what) {
  const size_t k = h.find("'" + key + "'");
  if (k == std::string::npos)
    throw Error(what + ": npy header lacks '" + key + "'");
  size_t p = h.find(':', k);
  if (p == std::string::npos) throw Error(what + ": malformed npy header");
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  size_t end = p;
  if (p < h.size() && h[p] == '(') {
    end = h.find(')', p);
    if (end == std::string::npos) throw Error(what + ": malformed npy shape");
    return h.substr(p, end - p + 1);
  }
  while (end < h.size() && h[end] != ',' && h[end] != '}') ++end;
  std::string v = h.substr(p, end - p);
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

}  // namespace

// Header of a .npy file (`b`: at least its first bytes): dtype and shape in
// the result, the data offset in *data_at, the data bytes in *need.
static NpyArray ParseNpyHeader(const std::string& b, const std::string& what,
                               size_t* data_at, size_t* need) {
  if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) {
    throw Error(what + ": not a .npy file (bad magic)");
  }
  const uint8_t major = uint8_t(b[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = uint8_t(b[8]) | (size_t(uint8_t(b[9])) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) throw Error(what + ": truncated npy header");
    header_len = uint8_t(b[8]) | (size_t(uint8_t(b[9])) << 8) |
                 (size_t(uint8_t(b[10])) << 16) |
                 (size_t(uint8_t(b[11])) << 24);
    offset = 12;
  } else {
    throw Error(what + ": unsupported npy version " + std::to_string(major));
  }
  if (header_len > b.size() - offset)
    throw Error(what + ": truncated npy header");
  const std::string h = b.substr(offset, header_len);
  NpyArray a;
  std::string descr = HeaderValue(h, "descr", what);
  if (descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"') &&
      descr.back() == descr.front()) {
    descr = descr.substr(1, descr.size() - 2);
  }
  if (descr != "<f4" && descr != "<i4") {
    throw Error(what + ": dtype " + descr + " not supported (need <f4 or <i4)");
  }
  a.dtype = descr;
  if (HeaderValue(h, "fortran_order", what) != "False") {
    throw Error(what + ": Fortran-order arrays are not supported");
  }
  const std::string shape = HeaderValue(h, "shape", what);
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') {
    throw Error(what + ": malformed npy shape '" + shape + "'");
  }
  size_t total = 1;
  std::string num;
  for (char c : shape.substr(1)) {
    if (c >= '0' && c <= '9') {
      num += c;
      if (num.size() > 12) throw Error(what + ": npy dimension too large");
    } else if (c == ',' || c == ')') {
      if (!num.empty()) {
        const size_t dim = std::stoull(num);
        a.shape.push_back(dim);
        // At most 2^40 elements, and what fits size_t on 32-bit boards.
        const uint64_t limit =
            std::min<uint64_t>(uint64_t(1) << 40, SIZE_MAX / 8);
        if (dim != 0 && uint64_t(total) > limit / dim) {
          throw Error(what + ": npy array too large");
        }
        total *= dim;
        num.clear();
      }
    } else if (c != ' ' && c != 'L') {
      throw Error(what + ": malformed npy shape " + shape);
    }
  }
  *data_at = offset + header_len;
  *need = total * 4;
  return a;
}

NpyArray ParseNpy(const std::string& b, const std::string& what) {
  size_t data_at = 0, need = 0;
  NpyArray a = ParseNpyHeader(b, what, &data_at, &need);
  const size_t total = need / 4;
  if (b.size() - data_at < need) {
    throw Error(what + ": truncated npy data (" +
                std::to_string(b.size() - data_at) + " bytes, need " +
                std::to_string(need) + ")");
  }
  if (a.dtype == "<f4") {
    a.f32.resize(total);
    if (need) std::memcpy(a.f32.data(), b.data() + data_at, need);
  } else {
    a.i32.resize(total);
    if (need) std::memcpy(a.i32.data(), b.data() + data_at, need);
  }
  return a;
}

NpyArray LoadNpy(const std::string& path) {
  // The header first; the data only once the file is known to hold exactly
  // what the header promises (a huge or sparse file is refused unread).
  const uint64_t size = RegularFileSize(path, ".npy file");
  std::string head(size_t(std::min<uint64_t>(size, 1 << 20)), '\0');
  if (!head.empty()) ReadFileRange(path, ".npy file", 0, &head[0], head.size());
  size_t data_at = 0, need = 0;
  NpyArray a = ParseNpyHeader(head, path, &data_at, &need);
  if (size - data_at < need) {
    throw Error(path + ": truncated npy data (" +
                std::to_string(size - data_at) + " bytes, need " +
                std::to_string(need) + ")");
  }
  const uint64_t mem = PhysicalMemoryBytes();
  if (mem && need > mem / 2) {
    throw Error(path + ": " + std::to_string(need) +
                " bytes of data, more than half of this machine's memory");
  }
  try {
    if (a.dtype == "<f4") {
      a.f32.resize(need / 4);
      if (need) ReadFileRange(path, ".npy file", data_at, a.f32.data(), need);
    } else {
      a.i32.resize(need / 4);
      if (need) ReadFileRange(path, ".npy file", data_at, a.i32.data(), need);
    }
  } catch (const std::bad_alloc&) {
    throw Error(path + ": cannot allocate " + std::to_string(need) + " bytes");
  }
  return a;
}

void SaveNpyF32(const std::string& path, const std::vector<size_t>& shape,
                const float* data) {
  std::string dims;
  size_t total = 1;
  for (size_t s : shape) {
    dims += std::to_string(s) + ", ";
    total *= s;
  }
  if (shape.size() > 1) dims.erase(dims.size() - 2);  // "(a, b)"; "(a, )"
  std::string header =
      "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = uint16_t(header.size());
  out.put(char(len & 0xFF));
  out.put(char(len >> 8));
  out << header;
  out.write(reinterpret_cast<const char*>(data), std::streamsize(total * 4));
}

}  // namespace kvsketch
