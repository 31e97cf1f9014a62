#include "runtime/tokenizer/utf8.h"

#include <cstdint>
#include <cstring>

namespace tessera::tokenizer {
namespace {

// The length of the character that lead byte `b` starts and the range its second byte must be
// in (the ranges exclude overlong forms, surrogates and code points above U+10FFFF); length 0
// for a byte that cannot start a character.
struct LeadByte {
  int length;
  uint8_t second_min;
  uint8_t second_max;
};

LeadByte Classify(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xc2 && b <= 0xdf) return {2, 0x80, 0xbf};
  if (b == 0xe0) return {3, 0xa0, 0xbf};
  if (b == 0xed) return {3, 0x80, 0x9f};
  if (b >= 0xe1 && b <= 0xef) return {3, 0x80, 0xbf};
  if (b == 0xf0) return {4, 0x90, 0xbf};
  if (b >= 0xf1 && b <= 0xf3) return {4, 0x80, 0xbf};
  if (b == 0xf4) return {4, 0x80, 0x8f};
  return {0, 0, 0};
}

enum class CharStatus { kValid, kInvalid, kTruncated };

// Examines the character at `data[pos]`. Sets `length` to the bytes it spans when valid, or to
// the length of the maximal ill-formed subpart (at least 1) when invalid or truncated.
CharStatus Examine(const uint8_t* data, size_t size, size_t pos, size_t& length) {
  const LeadByte lead = Classify(data[pos]);
  if (lead.length == 0) {
    length = 1;
    return CharStatus::kInvalid;
  }
  for (int k = 1; k < lead.length; ++k) {
    if (pos + k >= size) {
      length = static_cast<size_t>(k);
      return CharStatus::kTruncated;
    }
    const uint8_t c = data[pos + k];
    const uint8_t lo = k == 1 ? lead.second_min : 0x80;
    const uint8_t hi = k == 1 ? lead.second_max : 0xbf;
    if (c < lo || c > hi) {
      length = static_cast<size_t>(k);
      return CharStatus::kInvalid;
    }
  }
  length = static_cast<size_t>(lead.length);
  return CharStatus::kValid;
}

// The length of the ASCII run that starts at `pos`, eight bytes at a time.
size_t AsciiRun(const uint8_t* data, size_t size, size_t pos) {
  size_t i = pos;
  while (i + 8 <= size) {
    uint64_t word;
    std::memcpy(&word, data + i, sizeof(word));
    if (word & 0x8080808080808080ull) break;
    i += 8;
  }
  while (i < size && data[i] < 0x80) ++i;
  return i - pos;
}

constexpr char kReplacement[] = "\xef\xbf\xbd";  // U+FFFD

}  // namespace

std::optional<size_t> FindInvalidUtf8(absl::string_view text) {
  const auto* data = reinterpret_cast<const uint8_t*>(text.data());
  const size_t size = text.size();
  size_t pos = 0;
  while (pos < size) {
    pos += AsciiRun(data, size, pos);
    if (pos >= size) break;
    size_t length = 0;
    if (Examine(data, size, pos, length) != CharStatus::kValid) return pos;
    pos += length;
  }
  return std::nullopt;
}

size_t AppendUtf8Lossy(absl::string_view bytes, bool final, std::string* out) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t size = bytes.size();
  size_t pos = 0;
  while (pos < size) {
    const size_t ascii = AsciiRun(data, size, pos);
    out->append(bytes.data() + pos, ascii);
    pos += ascii;
    if (pos >= size) break;
    size_t length = 0;
    switch (Examine(data, size, pos, length)) {
      case CharStatus::kValid:
        out->append(bytes.data() + pos, length);
        break;
      case CharStatus::kTruncated:
        if (!final) return pos;
        out->append(kReplacement);
        break;
      case CharStatus::kInvalid:
        out->append(kReplacement);
        break;
    }
    pos += length;
  }
  return size;
}

std::string ReplaceInvalidUtf8(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*final=*/true, &out);
  return out;
}

void AppendUtf8(char32_t code_point, std::string* out) {
  const auto c = static_cast<uint32_t>(code_point);
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3f)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3f)));
  }
}

char32_t NextCodePoint(absl::string_view text, size_t& pos) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  const int length = b0 >= 0xf0 ? 4 : b0 >= 0xe0 ? 3 : 2;
  uint32_t c = b0 & (0x7f >> length);
  for (int k = 1; k < length; ++k) c = (c << 6) | (static_cast<uint8_t>(text[pos + k]) & 0x3f);
  pos += static_cast<size_t>(length);
  return static_cast<char32_t>(c);
}

}  // namespace tessera::tokenizer
