// Fuzzes the GGUF reader through the path a `--model file.gguf` takes: the bytes become a file
// (in memory, memfd) that GgufFile::Open maps and validates; then every tensor the header
// admits is dequantized under its Hugging Face name (GgufCheckpointFile), whole and in
// slices, so that an offset, size or block count the validation let through would read
// outside the mapping under ASan; and the model directory's files are made from the metadata.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/model/gguf_checkpoint.h"
#include "runtime/model/gguf_file.h"
#include "runtime/model/gguf_model.h"

namespace {

bool WriteAll(int fd, const uint8_t* data, size_t size) {
  while (size > 0) {
    ssize_t written = ::write(fd, data, size);
    if (written <= 0) return false;
    data += written;
    size -= static_cast<size_t>(written);
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tessera::model::GgufCheckpointFile;
  using tessera::model::GgufFile;
  using tessera::model::TensorInfo;
  using tessera::model::TensorSlice;

  const int fd = ::memfd_create("gguf_fuzzer", MFD_CLOEXEC);
  if (fd < 0 || !WriteAll(fd, data, size)) {
    std::perror("gguf_fuzzer: memfd");
    std::abort();  // the harness, not the reader, failed
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  if (file.ok()) {
    for (const auto& info : (*file)->tensors()) {
      // Open's contract: each tensor lies inside the file.
      if (info.offset + info.nbytes > (*file)->file_size()) std::abort();
    }
    (void)tessera::model::GgufModelFilesOf(**file);
  }
  absl::StatusOr<std::unique_ptr<GgufCheckpointFile>> checkpoint = GgufCheckpointFile::Open(path);
  ::close(fd);  // the mappings, if any, keep the memory
  if (!checkpoint.ok()) return 0;
  for (const TensorInfo& info : (*checkpoint)->tensors()) {
    // Bound the work per input: a header may describe a large tensor over a large input.
    int64_t elements = 1;
    for (int64_t d : info.shape) elements *= d;
    if (elements > (int64_t{1} << 18)) continue;
    if (!(*checkpoint)->Read(info.name).ok()) std::abort();  // admitted tensors read whole
    if (info.shape[0] > 1) {
      (void)(*checkpoint)->Read(info.name, TensorSlice::Rows(info.shape[0] / 2, info.shape[0]));
    }
    if (info.shape.size() == 2 && info.shape[1] > 1) {
      (void)(*checkpoint)->Read(info.name, TensorSlice::Columns(1, info.shape[1]));
    }
    (*checkpoint)->ReleasePages(info);
  }
  return 0;
}
