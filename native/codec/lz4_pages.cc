#include "codec/lz4_pages.h"

#include <cstring>
#include <lz4.h>

namespace remus {

bool IsZeroPage(const uint8_t* page) {
  // Word-wise OR: the compiler vectorises it; a zero page is rare enough that an early
  // exit on the first non-zero word is what matters.
  const uint64_t* w = reinterpret_cast<const uint64_t*>(page);
  for (size_t i = 0; i < 4096 / 8; i += 8) {
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) return false;
  }
  return true;
}

CompressedPages CompressPages(const uint8_t* pages, const uint64_t* addrs, size_t count) {
  CompressedPages out;
  std::vector<uint8_t> packed;
  std::vector<uint64_t> data_addrs, zero_addrs;
  data_addrs.reserve(count);
  std::vector<uint8_t> is_zero(count, 0);
  const uint8_t* src = pages;
  for (size_t i = 0; i < count; ++i) {
    is_zero[i] = IsZeroPage(pages + i * 4096);
    (is_zero[i] ? zero_addrs : data_addrs).push_back(addrs[i]);
  }
  size_t nonzero = data_addrs.size();
  if (nonzero != count) {
    // Gather the non-zero pages so that LZ4 sees one contiguous input.
    packed.resize(nonzero * 4096);
    size_t k = 0;
    for (size_t i = 0; i < count; ++i)
      if (!is_zero[i]) memcpy(packed.data() + (k++) * 4096, pages + i * 4096, 4096);
    src = packed.data();
  }
  auto bytes_of = [](const std::vector<uint64_t>& v) {
    std::vector<uint8_t> b(v.size() * 8);
    if (!v.empty()) memcpy(b.data(), v.data(), b.size());
    return b;
  };
  out.addrs = bytes_of(data_addrs);
  out.zeros = bytes_of(zero_addrs);
  out.raw_bytes = nonzero * 4096;
  if (out.raw_bytes == 0) return out;
  int bound = LZ4_compressBound(static_cast<int>(out.raw_bytes));
  out.data.resize(static_cast<size_t>(bound));
  int n = LZ4_compress_default(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(out.data.data()),
                               static_cast<int>(out.raw_bytes), bound);
  if (n > 0 && static_cast<uint64_t>(n) < out.raw_bytes) {
    out.data.resize(static_cast<size_t>(n));
    out.compressed = true;
  } else {
    out.data.assign(src, src + out.raw_bytes);
    out.compressed = false;
  }
  return out;
}

std::string DecompressBlock(const uint8_t* src, size_t len, uint8_t* out, size_t raw_bytes) {
  if (len > static_cast<size_t>(LZ4_MAX_INPUT_SIZE) || raw_bytes > static_cast<size_t>(LZ4_MAX_INPUT_SIZE))
    return "LZ4 block too large";
  // LZ4_decompress_safe never reads past src+len nor writes past out+raw_bytes.
  int n = LZ4_decompress_safe(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(out), static_cast<int>(len),
                              static_cast<int>(raw_bytes));
  if (n < 0) return "malformed LZ4 block";
  if (static_cast<size_t>(n) != raw_bytes)
    return "LZ4 block decodes to " + std::to_string(n) + " bytes, expected " + std::to_string(raw_bytes);
  return "";
}

}  // namespace remus
