#include "engine/io/file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <new>

#include "kvsketch/error.h"

namespace kvsketch {

uint64_t RegularFileSize(const std::string& path, const std::string& what) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    throw IoError(what + " '" + path + "' cannot be opened");
  if (!S_ISREG(st.st_mode))
    throw IoError(what + " '" + path + "' is not a regular file");
  return uint64_t(st.st_size);
}

uint64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

void ReadFileRange(const std::string& path, const std::string& what,
                   uint64_t offset, void* dst, size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(what + " '" + path + "' cannot be opened");
  in.seekg(std::streamoff(offset));
  in.read(static_cast<char*>(dst), std::streamsize(n));
  if (!in || size_t(in.gcount()) != n)
    throw IoError(what + " '" + path + "': read failed");
}

std::string ReadRegularFile(const std::string& path, const std::string& what,
                            uint64_t max_bytes) {
  const uint64_t size = RegularFileSize(path, what);
  const uint64_t mem = PhysicalMemoryBytes();
  if (size > max_bytes || (mem && size > mem / 2) || size > SIZE_MAX / 2) {
    throw IoError(
        what + " '" + path + "' has " + std::to_string(size) +
        " bytes, more than the " +
        std::to_string(mem && mem / 2 < max_bytes ? mem / 2 : max_bytes) +
        " accepted");
  }
  std::string bytes;
  try {
    bytes.resize(size_t(size));
  } catch (const std::bad_alloc&) {
    throw IoError(what + " '" + path + "': cannot allocate " +
                  std::to_string(size) + " bytes");
  }
  if (size) ReadFileRange(path, what, 0, &bytes[0], size_t(size));
  return bytes;
}

}  // namespace kvsketch
