#ifndef TESSERA_LAUNCHER_PLAN_H_
#define TESSERA_LAUNCHER_PLAN_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera plan`: what a model takes in memory on each tensor-parallel rank and how many
// sequences fit (runtime/model/memory_plan.h), before loading it. Returns the exit code.
int RunPlan(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_PLAN_H_
