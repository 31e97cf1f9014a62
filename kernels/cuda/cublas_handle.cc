#include "kernels/cuda/cublas_handle.h"

#include <cuda_runtime.h>

#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "runtime/core/cuda/cuda_check.h"

namespace tessera::kernels::cuda::internal {
namespace {

// (device ordinal, cudaStream_t) -> the stream's handle. Never destroyed: handles destroyed
// after the CUDA context at exit would fail, and a stream's handle is wanted until then.
class HandleRegistry {
 public:
  absl::StatusOr<cublasHandle_t> Get(int ordinal, cudaStream_t stream) {
    absl::MutexLock lock(&mu_);
    auto it = handles_.find({ordinal, stream});
    if (it != handles_.end()) return it->second;
    cublasHandle_t handle = nullptr;
    TESSERA_CUBLAS_CHECK(cublasCreate(&handle));
    absl::Status bound = TESSERA_CALL_STATUS(CublasCall, cublasSetStream(handle, stream));
    if (!bound.ok()) {
      (void)cublasDestroy(handle);
      return bound;
    }
    handles_.emplace(std::make_pair(ordinal, stream), handle);
    return handle;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::pair<int, cudaStream_t>, cublasHandle_t> handles_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<cublasHandle_t> CublasHandleFor(const Stream& stream) {
  static HandleRegistry* registry = new HandleRegistry;
  return registry->Get(stream.device().index, static_cast<cudaStream_t>(stream.native_handle()));
}

}  // namespace tessera::kernels::cuda::internal
