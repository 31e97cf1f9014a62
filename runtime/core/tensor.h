#ifndef TESSERA_RUNTIME_CORE_TENSOR_H_
#define TESSERA_RUNTIME_CORE_TENSOR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/core/check.h"
#include "runtime/core/device.h"
#include "runtime/core/dtype.h"

namespace tessera {

class Stream;

using Shape = absl::InlinedVector<int64_t, 4>;

// Number of elements in a shape (1 for a scalar, 0 if any dimension is 0).
int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);  // "[2,3]"

// A dense, row-major block of elements on one device. A Tensor either owns its memory
// (Empty/Zeros; views made from it share ownership) or is a view of memory someone else
// owns (Wrap), which must outlive it. Copying a Tensor copies the handle, not the data.
// There is no autograd. Not thread safe; distinct Tensors may be used from distinct threads.
class Tensor {
 public:
  // An undefined tensor: no storage, f32, shape [0].
  Tensor();

  // Uninitialized memory.
  static absl::StatusOr<Tensor> Empty(DType dtype, Shape shape, Device device = Device::Cpu());
  // Zero-filled memory (synchronously, for any device).
  static absl::StatusOr<Tensor> Zeros(DType dtype, Shape shape, Device device = Device::Cpu());
  // A view of memory owned elsewhere.
  static Tensor Wrap(void* data, DType dtype, Shape shape, Device device = Device::Cpu());
  // A host tensor holding a copy of `values`, shaped `shape` (Shape{} makes a scalar of one
  // value) or [values.size()].
  template <typename T>
  static absl::StatusOr<Tensor> FromValues(absl::Span<const T> values, Shape shape);
  template <typename T>
  static absl::StatusOr<Tensor> FromValues(absl::Span<const T> values) {
    return FromValues(values, Shape{static_cast<int64_t>(values.size())});
  }

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return StorageBytes(dtype_, numel_); }
  Device device() const { return device_; }
  // False only for a default-constructed Tensor.
  bool defined() const { return data_ != nullptr || is_view_; }
  // True when this tensor shares memory it did not allocate (Wrap, Reshape, Slice).
  bool is_view() const { return is_view_; }

  void* data() { return data_; }
  const void* data() const { return data_; }

  // Typed access. T must be the element type of dtype() (see DTypeOf); a mismatch is a
  // programming error and aborts. Host pointers only make sense for CPU tensors.
  template <typename T>
  T* data() {
    CheckElementType(DTypeOf<T>::value);
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* data() const {
    CheckElementType(DTypeOf<T>::value);
    return static_cast<const T*>(data_);
  }
  // Host tensors only.
  template <typename T>
  absl::Span<T> span() {
    CheckHost();
    return absl::Span<T>(data<T>(), static_cast<size_t>(numel_));
  }
  template <typename T>
  absl::Span<const T> span() const {
    CheckHost();
    return absl::Span<const T>(data<T>(), static_cast<size_t>(numel_));
  }

  // A view with a new shape of the same number of elements.
  absl::StatusOr<Tensor> Reshape(Shape shape) const;
  // A view of rows [begin, end) along dimension 0 (for int4, the row must start on a byte).
  absl::StatusOr<Tensor> Slice(int64_t begin, int64_t end) const;
  // A 1-D view of all elements.
  Tensor Flatten() const;

  // Copies src's elements into this tensor: same dtype and element count, any devices.
  // Ordered on `stream` (see CopyBytes in device_memory.h).
  absl::Status CopyFrom(const Tensor& src, Stream& stream);
  // A new tensor on `device` holding a copy of this one.
  absl::StatusOr<Tensor> To(Device device, Stream& stream) const;

  std::string DebugString() const;  // "bf16[2,3] on cuda:0"

 private:
  Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Shape shape, Device device,
         bool is_view);
  void CheckElementType(DType expected) const;
  void CheckHost() const;

  std::shared_ptr<void> owner_;  // keeps owned memory alive; null for Wrap
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_;
  int64_t numel_ = 0;
  Device device_;
  bool is_view_ = false;
};

template <typename T>
absl::StatusOr<Tensor> Tensor::FromValues(absl::Span<const T> values, Shape shape) {
  if (NumElements(shape) != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError("FromValues: shape " + ShapeToString(shape) + " holds " +
                                      std::to_string(NumElements(shape)) + " elements, given " +
                                      std::to_string(values.size()));
  }
  absl::StatusOr<Tensor> tensor = Empty(DTypeOf<T>::value, std::move(shape));
  if (!tensor.ok()) return tensor;
  std::copy(values.begin(), values.end(), tensor->template data<T>());
  return tensor;
}

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_TENSOR_H_
