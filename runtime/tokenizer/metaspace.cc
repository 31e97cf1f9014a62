#include "runtime/tokenizer/metaspace.h"

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"

namespace tessera::tokenizer {

absl::Status MetaspaceSplit(const Metaspace& metaspace, absl::string_view piece, bool at_start,
                            absl::FunctionRef<absl::Status(absl::string_view, bool)> on_piece) {
  const std::string& replacement = metaspace.replacement;
  std::string text = absl::StrReplaceAll(piece, {{" ", replacement}});
  const bool prepend = metaspace.prepend_scheme == PrependScheme::kAlways ||
                       (metaspace.prepend_scheme == PrependScheme::kFirst && at_start);
  if (prepend && !absl::StartsWith(text, replacement)) text.insert(0, replacement);
  if (!metaspace.split) return on_piece(text, at_start);
  // Hugging Face splits with MergedWithNext on the replacement: each one starts a piece.
  size_t begin = 0;
  for (size_t next = text.find(replacement, 1); next != std::string::npos;
       next = text.find(replacement, next + 1)) {
    absl::Status status =
        on_piece(absl::string_view(text).substr(begin, next - begin), at_start && begin == 0);
    if (!status.ok()) return status;
    begin = next;
  }
  return on_piece(absl::string_view(text).substr(begin), at_start && begin == 0);
}

void MetaspaceDecode(const Metaspace& metaspace, absl::string_view token, bool first_token,
                     std::string* out) {
  const bool drop = first_token && metaspace.prepend_scheme != PrependScheme::kNever;
  out->append(absl::StrReplaceAll(token, {{metaspace.replacement, drop ? "" : " "}}));
}

}  // namespace tessera::tokenizer
