#ifndef TESSERA_RUNTIME_SERVE_TRAINING_CONTROL_H_
#define TESSERA_RUNTIME_SERVE_TRAINING_CONTROL_H_

// A group leader's handle on the fine-tune its group runs between serving steps, for the
// Worker service's StartTraining, TrainingStatus and StopTraining (the fine-tune itself is
// the launcher's: launcher/serving_finetune.h).

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "tessera/v1/inference.pb.h"

namespace tessera::serve {

class TrainingControl {
 public:
  virtual ~TrainingControl() = default;

  // Starts a fine-tune of the JSON configuration `config_json` on every rank of the group and
  // returns once it runs. INVALID_ARGUMENT naming the key of a bad configuration;
  // FAILED_PRECONDITION while one runs. In a job of several groups the fine-tune is
  // data-parallel over them and all create it together: `job_wide` says the same start
  // reaches every group of the job at once (FAILED_PRECONDITION there without it).
  virtual absl::Status Start(const std::string& config_json, bool job_wide) = 0;
  // The last fine-tune's state (adapter, state, steps, loss, published version); nullopt
  // when the group never ran one. Model, version and group are the caller's to fill in.
  virtual std::optional<v1::TrainingState> State() const = 0;
  // Stops the running fine-tune at once, dropping a step under way (its last published
  // version stays served); NOT_FOUND when none runs.
  virtual absl::Status Stop() = 0;
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_TRAINING_CONTROL_H_
