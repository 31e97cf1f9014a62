#include "runtime/tokenizer/normalizer.h"

#include "absl/strings/str_cat.h"

#if TESSERA_HAVE_ICU
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/utypes.h>
#endif

namespace tessera::tokenizer {

#if TESSERA_HAVE_ICU

bool NfcAvailable() { return true; }

absl::Status ToNfc(absl::string_view text, std::string* out) {
  out->clear();
  // ASCII is always in NFC; most text is, and checking is cheaper than normalizing.
  bool ascii = true;
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) {
    out->assign(text.data(), text.size());
    return absl::OkStatus();
  }
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) {
    return absl::InternalError(absl::StrCat("ICU NFC normalizer: ", u_errorName(status)));
  }
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (nfc->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) {
    out->assign(text.data(), text.size());
    return absl::OkStatus();
  }
  status = U_ZERO_ERROR;
  out->reserve(text.size());
  icu::StringByteSink<std::string> sink(out);
  nfc->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) {
    return absl::InternalError(absl::StrCat("ICU NFC normalization failed: ", u_errorName(status)));
  }
  return absl::OkStatus();
}

#else  // !TESSERA_HAVE_ICU

bool NfcAvailable() { return false; }

absl::Status ToNfc(absl::string_view, std::string*) {
  return absl::FailedPreconditionError(
      "NFC normalization needs ICU, and this build of Tessera has none");
}

#endif  // TESSERA_HAVE_ICU

}  // namespace tessera::tokenizer
