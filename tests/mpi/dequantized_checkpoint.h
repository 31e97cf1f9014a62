#ifndef TESSERA_TESTS_MPI_DEQUANTIZED_CHECKPOINT_H_
#define TESSERA_TESTS_MPI_DEQUANTIZED_CHECKPOINT_H_

// The reference for a model run with `--quantize`: a copy of its checkpoint whose layer
// projections hold exactly the weights the quantization makes of them, dequantized to f32 (its
// other tensors as stored).
// With f32 activations the quantized forward multiplies by the same values, so the two agree
// to f32 rounding.

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/quantized_linear.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"
#include "runtime/model/weight_quantization.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::model::testing {

// Writes the copy of model directory `from` into TempDir()/`name` on rank 0, in a folder every
// rank sees, and returns its path once every rank may read it. Collective over World().
inline std::string DequantizedCheckpoint(const std::string& from,
                                         const WeightQuantization& quantization,
                                         const std::string& name) {
  const std::string dir = (std::filesystem::path(::testing::TempDir()) / name).string();
  if (::tessera::testing::World().rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    for (const char* file : {"config.json", "generation_config.json"}) {
      if (std::filesystem::exists(from + "/" + file)) {
        std::filesystem::copy_file(from + "/" + file, dir + "/" + file);
      }
    }
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(from);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& tensor : (*checkpoint)->TensorNames()) {
      absl::StatusOr<Tensor> value = (*checkpoint)->Read(tensor);  // as stored
      EXPECT_TRUE(value.ok()) << value.status();
      if (IsLayerProjection(tensor)) {
        absl::StatusOr<kernels::QuantizedWeight> quantized = kernels::QuantizeWeight(
            *value, quantization.quant, quantization.GroupFor(value->dim(1)));
        EXPECT_TRUE(quantized.ok()) << tensor << ": " << quantized.status();
        value = kernels::DequantizeWeight(*quantized);
        EXPECT_TRUE(value.ok()) << value.status();
      }
      tensors.emplace_back(tensor, *std::move(value));
    }
    EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  }
  EXPECT_TRUE(::tessera::testing::World().Barrier().ok());
  return dir;
}

}  // namespace tessera::model::testing

#endif  // TESSERA_TESTS_MPI_DEQUANTIZED_CHECKPOINT_H_
