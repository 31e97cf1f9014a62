#include "runtime/core/tensor.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/device_memory.h"
#include "runtime/core/stream.h"

namespace tessera {
namespace {

absl::Status CheckShape(const Shape& shape) {
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension in shape ", ShapeToString(shape)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

Tensor::Tensor() : shape_{0} {}

Tensor::Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Shape shape, Device device,
               bool is_view)
    : owner_(std::move(owner)),
      data_(data),
      dtype_(dtype),
      shape_(std::move(shape)),
      numel_(NumElements(shape_)),
      device_(device),
      is_view_(is_view) {}

absl::StatusOr<Tensor> Tensor::Empty(DType dtype, Shape shape, Device device) {
  if (absl::Status s = CheckShape(shape); !s.ok()) return s;
  size_t bytes = StorageBytes(dtype, NumElements(shape));
  absl::StatusOr<void*> ptr = AllocateBytes(device, bytes);
  if (!ptr.ok()) return ptr.status();
  std::shared_ptr<void> owner(*ptr, [device](void* p) { FreeBytes(device, p); });
  return Tensor(std::move(owner), *ptr, dtype, std::move(shape), device, /*is_view=*/false);
}

absl::StatusOr<Tensor> Tensor::Zeros(DType dtype, Shape shape, Device device) {
  absl::StatusOr<Tensor> tensor = Empty(dtype, std::move(shape), device);
  if (!tensor.ok()) return tensor;
  Stream host = Stream::Cpu();
  if (absl::Status s = ZeroBytes(tensor->data(), device, tensor->nbytes(), host); !s.ok()) {
    return s;
  }
  return tensor;
}

Tensor Tensor::Wrap(void* data, DType dtype, Shape shape, Device device) {
  return Tensor(nullptr, data, dtype, std::move(shape), device, /*is_view=*/true);
}

absl::StatusOr<Tensor> Tensor::Reshape(Shape shape) const {
  if (absl::Status s = CheckShape(shape); !s.ok()) return s;
  if (NumElements(shape) != numel_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot reshape ", DebugString(), " to ", ShapeToString(shape), ": element counts differ"));
  }
  return Tensor(owner_, data_, dtype_, std::move(shape), device_, /*is_view=*/true);
}

absl::StatusOr<Tensor> Tensor::Slice(int64_t begin, int64_t end) const {
  if (shape_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot slice scalar ", DebugString()));
  }
  if (begin < 0 || end < begin || end > shape_[0]) {
    return absl::OutOfRangeError(
        absl::StrCat("slice [", begin, ", ", end, ") is outside dimension 0 of ", DebugString()));
  }
  int64_t row = NumElements(Shape(shape_.begin() + 1, shape_.end()));
  int64_t first = begin * row;
  if (dtype_ == DType::kI4 && first % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("slice of ", DebugString(), " at row ", begin,
                                                   " does not start on a byte boundary"));
  }
  Shape shape = shape_;
  shape[0] = end - begin;
  void* data = static_cast<char*>(data_) + StorageBytes(dtype_, first);
  return Tensor(owner_, data, dtype_, std::move(shape), device_, /*is_view=*/true);
}

Tensor Tensor::Flatten() const {
  return Tensor(owner_, data_, dtype_, Shape{numel_}, device_, /*is_view=*/true);
}

absl::Status Tensor::CopyFrom(const Tensor& src, Stream& stream) {
  if (src.dtype_ != dtype_ || src.numel_ != numel_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot copy ", src.DebugString(), " into ", DebugString()));
  }
  return CopyBytes(data_, device_, src.data_, src.device_, nbytes(), stream);
}

absl::StatusOr<Tensor> Tensor::To(Device device, Stream& stream) const {
  absl::StatusOr<Tensor> copy = Empty(dtype_, shape_, device);
  if (!copy.ok()) return copy;
  if (absl::Status s = copy->CopyFrom(*this, stream); !s.ok()) return s;
  return copy;
}

std::string Tensor::DebugString() const {
  return absl::StrCat(NameOf(dtype_), ShapeToString(shape_), " on ", device_.ToString());
}

void Tensor::CheckElementType(DType expected) const {
  TESSERA_CHECK(expected == dtype_,
                absl::StrCat("typed access as ", NameOf(expected), " to ", DebugString()));
}

void Tensor::CheckHost() const {
  TESSERA_CHECK(device_.is_cpu(), absl::StrCat("host access to ", DebugString()));
}

}  // namespace tessera
