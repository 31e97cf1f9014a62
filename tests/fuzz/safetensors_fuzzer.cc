// Fuzzes the safetensors header parser through the path a checkpoint takes: the bytes become
// a file (in memory, memfd) that SafetensorsFile::Open maps and validates; every tensor the
// header admits is then read, whole and converted, so that an offset or size the validation
// let through would read outside the mapping under ASan.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/model/safetensors.h"

namespace {

// Writes all of `data` to `fd`; false on any error.
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
  using tessera::model::SafetensorsFile;
  using tessera::model::TensorInfo;
  using tessera::model::TensorSlice;

  const int fd = ::memfd_create("safetensors_fuzzer", MFD_CLOEXEC);
  if (fd < 0 || !WriteAll(fd, data, size)) {
    std::perror("safetensors_fuzzer: memfd");
    std::abort();  // the harness, not the parser, failed: stop rather than fuzz nothing
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ::close(fd);  // the mapping, if any, keeps the memory
  if (!file.ok()) return 0;

  for (const TensorInfo& info : (*file)->tensors()) {
    // Open's contract: each tensor lies inside the file and its bytes match dtype x shape.
    if (info.offset + info.nbytes > (*file)->file_size()) std::abort();
    // Bound the work per input: a header may describe a large tensor over a large input.
    if (info.nbytes > (uint64_t{1} << 20)) continue;
    absl::StatusOr<tessera::Tensor> whole = (*file)->Read(info.name);
    if (!whole.ok()) std::abort();  // a tensor Open admitted must read whole as stored
    (void)(*file)->Read(info.name, TensorSlice::Whole(), tessera::DType::kF32);
    if (!info.shape.empty() && info.shape[0] > 0) {
      (void)(*file)->Read(info.name, TensorSlice::Rows(0, (info.shape[0] + 1) / 2));
    }
    if (info.shape.size() >= 2 && info.shape[1] > 0) {
      (void)(*file)->Read(info.name, TensorSlice::Columns(info.shape[1] / 2, info.shape[1]));
    }
    (*file)->ReleasePages(info);
  }
  return 0;
}
