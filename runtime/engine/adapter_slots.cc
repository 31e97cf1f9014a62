#include "runtime/engine/adapter_slots.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::engine {

AdapterSlots::~AdapterSlots() {
  for (int slot : slots_) model_.UnloadAdapter(slot).IgnoreError();
}

absl::Status AdapterSlots::Load(const AdapterSpec& adapter, absl::StatusOr<int>* slot) {
  absl::StatusOr<int> mine = model_.LoadAdapter(adapter.dir);
  if (!mine.ok()) {
    mine = absl::Status(mine.status().code(),
                        absl::StrCat("adapter \"", adapter.name, "\" (", adapter.dir, ") on rank ",
                                     tp_.rank(), ": ", mine.status().message()));
  }
  if (tp_.size() > 1) {
    // One minimum over [loaded, slot, -slot]: whether every rank loaded it, and the slot's
    // smallest and largest value across the ranks.
    int64_t agree[3] = {mine.ok() ? 1 : 0, mine.ok() ? *mine : 0, mine.ok() ? -*mine : 0};
    Tensor view = Tensor::Wrap(agree, DType::kI64, {3});
    Stream cpu = Stream::Cpu();
    if (absl::Status reduced = tp_.AllReduce(view, comm::ReduceOp::kMin, cpu); !reduced.ok()) {
      if (mine.ok()) model_.UnloadAdapter(*mine).IgnoreError();
      return reduced;
    }
    if (mine.ok() && agree[0] == 0) {
      model_.UnloadAdapter(*mine).IgnoreError();
      mine = absl::FailedPreconditionError(
          absl::StrCat("adapter \"", adapter.name, "\" (", adapter.dir,
                       "): another rank of the group failed to load it (its error names the "
                       "cause); rank ",
                       tp_.rank(), " unloaded its own"));
    } else if (mine.ok() && agree[1] != -agree[2]) {
      model_.UnloadAdapter(*mine).IgnoreError();
      mine = absl::FailedPreconditionError(absl::StrCat(
          "adapter \"", adapter.name, "\" went into slots ", agree[1], " to ", -agree[2],
          " on different ranks: the ranks' models loaded different adapters before"));
    }
  }
  if (mine.ok()) slots_.insert(*mine);
  *slot = std::move(mine);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>> AdapterSlots::LoadAll(const std::vector<AdapterSpec>& adapters) {
  std::vector<int> slots;
  auto undo = [&] {
    for (int slot : slots) Unload(slot).IgnoreError();
  };
  for (const AdapterSpec& adapter : adapters) {
    absl::StatusOr<int> slot;
    absl::Status group = Load(adapter, &slot);
    if (!group.ok() || !slot.ok()) {
      undo();
      return group.ok() ? slot.status() : group;
    }
    slots.push_back(*slot);
  }
  return slots;
}

absl::Status AdapterSlots::Unload(int slot) {
  if (slots_.erase(slot) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("adapter slot ", slot, " holds no adapter on this rank"));
  }
  return model_.UnloadAdapter(slot);
}

absl::Status AdapterSlots::Apply(const tessera::v1::StepPlan& plan,
                                 std::vector<absl::StatusOr<int>>* loaded) {
  loaded->clear();
  for (int slot : plan.unload_adapters()) {
    if (absl::Status unloaded = Unload(slot); !unloaded.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("step plan #", plan.step(), ": unload: ", unloaded.message()));
    }
  }
  for (const tessera::v1::AdapterLoad& load : plan.load_adapters()) {
    absl::StatusOr<int> slot;
    TESSERA_RETURN_IF_ERROR(Load({load.name(), load.dir()}, &slot));
    loaded->push_back(std::move(slot));
  }
  return absl::OkStatus();
}

}  // namespace tessera::engine
