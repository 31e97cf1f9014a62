#ifndef TESSERA_RUNTIME_MODEL_MAPPED_FILE_H_
#define TESSERA_RUNTIME_MODEL_MAPPED_FILE_H_

// A checkpoint file mapped read-only and private, so that a rank only ever touches the pages
// of the slices it reads. Shared by the safetensors and GGUF readers.
//
// Like any mapped file, one truncated by another process while mapped makes reads of the lost
// pages fault (SIGBUS); the readers check everything they can when opening.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tessera::model {

class MappedFile {
 public:
  // NOT_FOUND for a missing file; INVALID_ARGUMENT for something that is not a regular file;
  // other errors by errno. Every message names the path.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // The whole file; empty for an empty file.
  absl::Span<const uint8_t> bytes() const { return {base_, size_}; }

  // Drops this process's mapping of the pages of [offset, offset + nbytes) (MADV_DONTNEED):
  // they stay in the page cache but no longer count as this process's resident memory, and a
  // later read faults them back in. Advice only: a failure costs memory, not correctness.
  void ReleasePages(uint64_t offset, uint64_t nbytes) const;

 private:
  MappedFile(std::string path, const uint8_t* base, uint64_t size)
      : path_(std::move(path)), base_(base), size_(size) {}

  std::string path_;
  const uint8_t* base_ = nullptr;  // null for an empty file
  uint64_t size_ = 0;
};

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_MAPPED_FILE_H_
