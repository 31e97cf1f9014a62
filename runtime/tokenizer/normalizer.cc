#include "runtime/tokenizer/normalizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/utf8.h"

#if TESSERA_HAVE_ICU
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/utypes.h>
#endif

namespace tessera::tokenizer {
namespace {

#if TESSERA_HAVE_ICU

constexpr bool kHaveIcu = true;

bool IsAscii(absl::string_view text) {
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

const icu::Normalizer2* Form(NormalizerStep::Kind kind, UErrorCode& status) {
  switch (kind) {
    case NormalizerStep::Kind::kNfd:
      return icu::Normalizer2::getNFDInstance(status);
    case NormalizerStep::Kind::kNfkc:
      return icu::Normalizer2::getNFKCInstance(status);
    case NormalizerStep::Kind::kNfkd:
      return icu::Normalizer2::getNFKDInstance(status);
    default:
      return icu::Normalizer2::getNFCInstance(status);
  }
}

absl::Status ToForm(NormalizerStep::Kind kind, absl::string_view text, std::string* out) {
  // ASCII is the same in every form; most text is, and checking is cheaper than normalizing.
  if (IsAscii(text)) {
    out->assign(text.data(), text.size());
    return absl::OkStatus();
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* form = Form(kind, status);
  if (U_FAILURE(status)) {
    return absl::InternalError(absl::StrCat("ICU normalizer: ", u_errorName(status)));
  }
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (form->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) {
    out->assign(text.data(), text.size());
    return absl::OkStatus();
  }
  status = U_ZERO_ERROR;
  out->clear();
  out->reserve(text.size());
  icu::StringByteSink<std::string> sink(out);
  form->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) {
    return absl::InternalError(absl::StrCat("ICU normalization failed: ", u_errorName(status)));
  }
  return absl::OkStatus();
}

absl::Status ToLowercase(absl::string_view text, std::string* out) {
  out->clear();
  out->reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const auto c = static_cast<unsigned char>(text[pos]);
    if (c < 0x80) {
      out->push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c));
      ++pos;
      continue;
    }
    const char32_t code_point = NextCodePoint(text, pos);
    // The one unconditional lowercase mapping of more than one character (SpecialCasing.txt);
    // every other character's full mapping is its simple one.
    if (code_point == 0x130) {
      out->append("i\xcc\x87");
    } else {
      AppendUtf8(static_cast<char32_t>(u_tolower(static_cast<UChar32>(code_point))), out);
    }
  }
  return absl::OkStatus();
}

#else  // !TESSERA_HAVE_ICU

constexpr bool kHaveIcu = false;

absl::Status ToForm(NormalizerStep::Kind, absl::string_view, std::string*) {
  return absl::FailedPreconditionError(
      "Unicode normalization needs ICU, and this build of Tessera has none");
}

absl::Status ToLowercase(absl::string_view, std::string*) {
  return absl::FailedPreconditionError("Lowercase needs ICU, and this build of Tessera has none");
}

#endif  // TESSERA_HAVE_ICU

// `text` with every match of `step.pattern` replaced by `step.text`.
absl::Status Replace(const NormalizerStep& step, absl::string_view text, std::string* out) {
  out->clear();
  size_t previous = 0;
  TESSERA_RETURN_IF_ERROR(step.pattern->ForEachMatch(text, [&](size_t begin, size_t end) {
    out->append(text.data() + previous, begin - previous);
    out->append(step.text);
    previous = end;
  }));
  out->append(text.data() + previous, text.size() - previous);
  return absl::OkStatus();
}

}  // namespace

bool UnicodeFormsAvailable() { return kHaveIcu; }

absl::Status Normalizer::Normalize(absl::string_view text, std::string* out) const {
  out->assign(text.data(), text.size());
  std::string next;
  for (const NormalizerStep& step : steps_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kNfc:
      case NormalizerStep::Kind::kNfd:
      case NormalizerStep::Kind::kNfkc:
      case NormalizerStep::Kind::kNfkd:
        TESSERA_RETURN_IF_ERROR(ToForm(step.kind, *out, &next));
        break;
      case NormalizerStep::Kind::kLowercase:
        TESSERA_RETURN_IF_ERROR(ToLowercase(*out, &next));
        break;
      case NormalizerStep::Kind::kPrepend:
        if (out->empty()) continue;
        next = absl::StrCat(step.text, *out);
        break;
      case NormalizerStep::Kind::kReplace:
        TESSERA_RETURN_IF_ERROR(Replace(step, *out, &next));
        break;
    }
    std::swap(*out, next);
  }
  return absl::OkStatus();
}

}  // namespace tessera::tokenizer
