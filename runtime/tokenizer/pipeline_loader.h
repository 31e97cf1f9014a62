#ifndef TESSERA_RUNTIME_TOKENIZER_PIPELINE_LOADER_H_
#define TESSERA_RUNTIME_TOKENIZER_PIPELINE_LOADER_H_

// Reads the text pipeline of a tokenizer.json, around its model: "normalizer",
// "pre_tokenizer" and "decoder" (each a step or a Sequence of steps; nullptr when absent). What
// each supports is listed in tokenizer.h; anything else is INVALID_ARGUMENT naming its JSON
// path (a Unicode normalizer in a build without ICU is UNIMPLEMENTED).

#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/decoder.h"
#include "runtime/tokenizer/json_reader.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/pre_tokenizer.h"

namespace tessera::tokenizer {

absl::StatusOr<Normalizer> LoadNormalizer(const JsonReader& reader, const Json* normalizer);

absl::StatusOr<PreTokenizer> LoadPreTokenizer(const JsonReader& reader, const Json* pre_tokenizer);

// The decoder's steps, checked against decoder.h's rule on their order; a decoder is required.
absl::StatusOr<std::vector<DecoderStep>> LoadDecoder(const JsonReader& reader, const Json* decoder);

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_PIPELINE_LOADER_H_
