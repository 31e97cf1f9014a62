#include "runtime/tokenizer/byte_level.h"

#include <array>

#include "runtime/tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

constexpr int kNoByte = -1;
// Every alphabet character is below U+0144 (256 + the 68 bytes that do not stand for
// themselves).
constexpr char32_t kAlphabetEnd = 0x144;

struct Tables {
  std::array<char32_t, 256> char_of_byte;
  std::array<int, kAlphabetEnd> byte_of_char;
};

Tables MakeTables() {
  Tables t;
  t.byte_of_char.fill(kNoByte);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    t.char_of_byte[b] = printable ? static_cast<char32_t>(b) : next++;
    t.byte_of_char[t.char_of_byte[b]] = b;
  }
  return t;
}

const Tables& GetTables() {
  static const Tables tables = MakeTables();
  return tables;
}

}  // namespace

char32_t ByteLevelChar(uint8_t byte) { return GetTables().char_of_byte[byte]; }

std::optional<std::string> ByteLevelToBytes(absl::string_view token) {
  const Tables& tables = GetTables();
  std::string bytes;
  bytes.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const char32_t c = NextCodePoint(token, pos);
    if (c >= kAlphabetEnd || tables.byte_of_char[c] == kNoByte) return std::nullopt;
    bytes.push_back(static_cast<char>(tables.byte_of_char[c]));
  }
  return bytes;
}

std::string BytesToByteLevel(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char b : bytes) AppendUtf8(ByteLevelChar(static_cast<uint8_t>(b)), &out);
  return out;
}

}  // namespace tessera::tokenizer
