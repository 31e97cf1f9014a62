#ifndef TESSERA_TESTS_MODEL_MODEL_TEST_UTIL_H_
#define TESSERA_TESTS_MODEL_MODEL_TEST_UTIL_H_

// Helpers for the model tests: scratch directories, raw files, and tensors whose every
// element says where it came from.

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"

namespace tessera::model::testing {

// A fresh directory under the test temp dir, removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) / "tessera_model_XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  const std::string& path() const { return path_; }
  // path()/name
  std::string File(absl::string_view name) const {
    return (std::filesystem::path(path_) / std::string(name)).string();
  }

 private:
  std::string path_;
};

inline void WriteBytes(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A safetensors file from its parts: 8-byte little-endian length of `header`, `header`,
// `data`. For writing corrupt files by hand.
inline std::string RawSafetensors(absl::string_view header, absl::string_view data) {
  std::string bytes(8, '\0');
  uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  bytes.append(header.data(), header.size());
  bytes.append(data.data(), data.size());
  return bytes;
}

// The value every tensor made by PatternTensor holds at flat index `index`: distinct for
// every (tag, index) and exact in f32 for tag < 16 and index < 2^20, so that an f32 slice can
// be traced back element by element to where it came from. (16-bit floats round it; compare
// those with the source tensor's elements instead.)
inline double PatternValue(int tag, int64_t index) {
  return tag * 1048576.0 + static_cast<double>(index);
}

// A host tensor of `dtype` with element i = PatternValue(tag, i), rounded to the dtype.
inline Tensor PatternTensor(DType dtype, Shape shape, int tag) {
  absl::StatusOr<Tensor> tensor = Tensor::Empty(dtype, std::move(shape));
  EXPECT_TRUE(tensor.ok()) << tensor.status();
  FillWith(*tensor, [tag](int64_t i) { return PatternValue(tag, i); });
  return *std::move(tensor);
}

}  // namespace tessera::model::testing

#endif  // TESSERA_TESTS_MODEL_MODEL_TEST_UTIL_H_
