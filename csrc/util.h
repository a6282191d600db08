// Small helpers the C++ core shares (no torch): joining names into one message, sorting block lists.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace vitfiqa {

// "a, b, c" (sep between items): how every error lists the names it knows.
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i == 0 ? "" : sep) + items[i];
  return out;
}

// Sorted ascending, each value once.
inline std::vector<int64_t> sorted_unique(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

}  // namespace vitfiqa
