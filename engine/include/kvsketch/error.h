// The library's exception type: every rejected input or impossible
// configuration throws kvsketch::Error with a message naming the problem.
#pragma once

#include <stdexcept>
#include <string>

namespace kvsketch {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// The configuration does not fit its memory budget.
class BudgetError : public Error {
 public:
  explicit BudgetError(const std::string& what) : Error(what) {}
};

// A file or saved state that cannot be read, written or trusted: I/O
// failures, bad format, checksum, configuration mismatch, invalid fields.
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what) {}
};

}  // namespace kvsketch
