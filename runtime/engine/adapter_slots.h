#ifndef TESSERA_RUNTIME_ENGINE_ADAPTER_SLOTS_H_
#define TESSERA_RUNTIME_ENGINE_ADAPTER_SLOTS_H_

// The LoRA adapters every rank of a group holds in its model's slots
// (Transformer::LoadAdapter). Every rank makes the same loads and unloads in the same order
// (at engine start, then as the StepPlans say), so a slot names the same adapter on every
// rank; each load is checked by an all-reduce that every rank loaded it, into the same slot.

#include <string>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/model/transformer.h"
#include "tessera/v1/step_plan.pb.h"

namespace tessera::engine {

// A LoRA adapter the engine serves beside the base model: requests name it
// (GenerationRequest::adapter); `dir` is a PEFT adapter directory (Transformer::LoadAdapter).
struct AdapterSpec {
  std::string name;
  std::string dir;
};

class AdapterSlots {
 public:
  // `model`'s group is `tp`; both outlive this.
  AdapterSlots(model::Transformer& model, comm::Communicator& tp) : model_(model), tp_(tp) {}
  // Unloads every slot this holds (on every rank, as every rank destroys its engine).
  ~AdapterSlots();
  AdapterSlots(const AdapterSlots&) = delete;
  AdapterSlots& operator=(const AdapterSlots&) = delete;

  // Collective. Loads `adapter` on every rank. Returns the collective's own failure (the group
  // is broken); otherwise `*slot` is the slot, or the load's error on every rank, with
  // nothing left loaded: the failing rank names the adapter, directory, rank and cause, the
  // others name the adapter and say a peer failed.
  absl::Status Load(const AdapterSpec& adapter, absl::StatusOr<int>* slot);
  // Collective. Loads `adapters` in order, all or none: their slots, or the first error
  // (the collective's, or a load's) with none of them left loaded.
  absl::StatusOr<std::vector<int>> LoadAll(const std::vector<AdapterSpec>& adapters);
  // Collective. Applies `plan`'s unload_adapters, then its load_adapters; `*loaded` gets each
  // load's outcome in order. Returns the collective's failure, or FAILED_PRECONDITION naming
  // the step for an unload of a slot this rank does not hold.
  absl::Status Apply(const tessera::v1::StepPlan& plan, std::vector<absl::StatusOr<int>>* loaded);
  // Unloads `slot`; FAILED_PRECONDITION when this does not hold it.
  absl::Status Unload(int slot);

  int resident() const { return static_cast<int>(slots_.size()); }

 private:
  model::Transformer& model_;
  comm::Communicator& tp_;
  absl::btree_set<int> slots_;  // held here, in the model
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_ADAPTER_SLOTS_H_
