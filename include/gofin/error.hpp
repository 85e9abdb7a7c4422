#pragma once
#include <stdexcept>

namespace gofin {

// Misuse of the API; what() is Go's message text.
class Error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

}  // namespace gofin
