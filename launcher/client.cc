#include "launcher/client.h"

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "launcher/flags.h"
#include "launcher/process.h"
#include "launcher/secret_file.h"
#include "launcher/tls_flags.h"
#include "runtime/core/status_macros.h"
#include "runtime/serve/bearer.h"
#include "runtime/serve/request_convert.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::launcher {
namespace {

struct ClientConfig {
  std::string target = "127.0.0.1:50051";
  std::string service = "tessera.v1.Inference";  // health: the service to ask about
  std::string model;                             // empty: the first the coordinator lists
  std::string version;
  std::string adapter;  // a LoRA adapter to run with; empty: the base model
  std::string prompt = "Hello";
  std::string prompts_file;
  std::string system;  // chat: a system message first
  std::string tenant;
  std::string session;
  int max_tokens = 32;
  std::string temperature = "0";
  int top_k = 0;
  std::string top_p = "1";
  int seed = -1;
  bool ignore_eos = false;
  absl::Duration timeout = absl::Minutes(5);
  std::string adapter_name;     // adapters load, unload
  std::string adapter_dir;      // adapters load
  std::string group;            // training start, stop: a group id ("g1"); empty: the default
  std::string train_config;     // training start: the --train-config file to send
  std::string api_key_file;     // empty: TESSERA_API_KEY
  std::string join_token_file;  // empty: TESSERA_JOIN_TOKEN
  // What the calls carry as "authorization: Bearer": the API key, or for the operators'
  // calls (adapters load, unload, training start, stop) the coordinator's join token.
  std::string bearer;
  serve::TlsFiles tls;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // made from `tls`
};

std::shared_ptr<grpc::Channel> Connect(const ClientConfig& config) {
  return grpc::CreateChannel(config.target, config.credentials);
}

// A call's deadline, and its API key or join token when there is one.
void PrepareCall(grpc::ClientContext& context, const ClientConfig& config, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  serve::AddBearerToken(context, config.bearer);
}

absl::Status Health(const ClientConfig& config) {
  auto stub = grpc::health::v1::Health::NewStub(Connect(config));
  grpc::ClientContext context;
  PrepareCall(context, config, std::min(config.timeout, absl::Seconds(10)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(config.service);
  grpc::health::v1::HealthCheckResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->Check(&context, request, &response)));
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat(config.target, " is not serving"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::GenerateRequest> MakeRequest(const ClientConfig& config,
                                                v1::Inference::Stub& stub,
                                                const std::string& prompt) {
  v1::GenerateRequest request;
  std::string model = config.model;
  if (model.empty()) {
    grpc::ClientContext context;
    PrepareCall(context, config, absl::Seconds(10));
    v1::ListModelsResponse models;
    TESSERA_RETURN_IF_ERROR(
        serve::FromGrpcStatus(stub.ListModels(&context, v1::ListModelsRequest(), &models)));
    if (models.models_size() == 0) {
      return absl::UnavailableError("the coordinator lists no model (no worker group yet)");
    }
    model = models.models(0).name();
  }
  request.set_model(model);
  request.set_version(config.version);
  request.set_adapter(config.adapter);
  request.set_prompt(prompt);
  request.set_tenant(config.tenant);
  request.set_session_id(config.session);
  v1::SamplingParams& sampling = *request.mutable_sampling();
  double temperature = 0, top_p = 1;
  if (!absl::SimpleAtod(config.temperature, &temperature)) {
    return absl::InvalidArgumentError("--temperature: not a number");
  }
  if (!absl::SimpleAtod(config.top_p, &top_p)) {
    return absl::InvalidArgumentError("--top-p: not a number");
  }
  sampling.set_temperature(static_cast<float>(temperature));
  sampling.set_top_p(static_cast<float>(top_p));
  sampling.set_top_k(config.top_k);
  if (config.seed >= 0) sampling.set_seed(static_cast<uint64_t>(config.seed));
  sampling.set_max_tokens(config.max_tokens);
  sampling.set_ignore_eos(config.ignore_eos);
  return request;
}

void PrintSummary(const std::string& finish, const v1::Usage& usage, const v1::Timings& timings,
                  const v1::Placement& placement) {
  const std::string adapter =
      placement.adapter().empty() ? "" : absl::StrCat(" (adapter ", placement.adapter(), ")");
  std::fprintf(stderr,
               "finish %s; %d prompt tokens (%d cached), %d generated; first token after "
               "%.1f ms, %.1f ms in all; model %s %s%s on group %s\n",
               finish.c_str(), usage.prompt_tokens(), usage.cached_tokens(),
               usage.completion_tokens(), 1e3 * timings.time_to_first_token_seconds(),
               1e3 * timings.total_seconds(), placement.model().c_str(),
               placement.version().c_str(), adapter.c_str(), placement.group().c_str());
}

// Streams `request`'s answer to stdout, and a summary to stderr; returns the text.
absl::StatusOr<std::string> StreamToTerminal(const ClientConfig& config, v1::Inference::Stub& stub,
                                             const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  PrepareCall(context, config, config.timeout);
  auto reader = stub.GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  v1::Placement placement;
  std::string text;
  while (reader->Read(&message)) {
    if (message.has_placement()) placement = message.placement();
    text += message.text();
    std::fwrite(message.text().data(), 1, message.text().size(), stdout);
    std::fflush(stdout);
    if (message.final()) {
      std::printf("\n");
      PrintSummary(v1::FinishReason_Name(message.finish_reason()), message.usage(),
                   message.timings(), placement);
    }
  }
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(reader->Finish()));
  return text;
}

absl::Status Generate(const ClientConfig& config) {
  auto stub = v1::Inference::NewStub(Connect(config));
  TESSERA_ASSIGN_OR_RETURN(v1::GenerateRequest request, MakeRequest(config, *stub, config.prompt));
  return StreamToTerminal(config, *stub, request).status();
}

// A conversation: each line of stdin is the user's turn; the replies join the history that
// the next turn sends (rendered by the model's chat template on the coordinator).
absl::Status Chat(const ClientConfig& config) {
  auto stub = v1::Inference::NewStub(Connect(config));
  TESSERA_ASSIGN_OR_RETURN(v1::GenerateRequest request, MakeRequest(config, *stub, ""));
  request.clear_prompt();
  auto add = [&request](const char* role, const std::string& content) {
    v1::ChatMessage& message = *request.add_messages();
    message.set_role(role);
    message.set_content(content);
  };
  if (!config.system.empty()) add("system", config.system);
  const bool interactive = isatty(STDIN_FILENO) != 0;
  if (interactive) std::fprintf(stderr, "chatting with %s; Ctrl-D ends\n", request.model().c_str());
  for (;;) {
    if (interactive) {
      std::printf("> ");
      std::fflush(stdout);
    }
    std::string line;
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    add("user", line);
    TESSERA_ASSIGN_OR_RETURN(std::string reply, StreamToTerminal(config, *stub, request));
    add("assistant", reply);
  }
  return absl::OkStatus();
}

absl::Status Batch(const ClientConfig& config) {
  if (config.prompts_file.empty()) {
    return absl::InvalidArgumentError("--prompts: required (a file of prompts, one per line)");
  }
  std::ifstream file(config.prompts_file);
  if (!file)
    return absl::NotFoundError(absl::StrCat("--prompts: cannot read ", config.prompts_file));
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::GenerateBatchRequest batch;
  for (std::string line; std::getline(file, line);) {
    if (line.empty()) continue;
    TESSERA_ASSIGN_OR_RETURN(*batch.add_requests(), MakeRequest(config, *stub, line));
  }
  grpc::ClientContext context;
  PrepareCall(context, config, config.timeout);
  v1::GenerateBatchResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->GenerateBatch(&context, batch, &response)));
  int failed = 0;
  for (int i = 0; i < response.results_size(); ++i) {
    const v1::BatchResult& result = response.results(i);
    if (result.error_code() != 0) {
      ++failed;
      std::printf("[%d] error: %s\n", i, result.error_message().c_str());
    } else {
      std::printf("[%d] %s\n", i, result.response().text().c_str());
    }
  }
  if (failed > 0) {
    return absl::UnknownError(
        absl::StrCat(failed, " of ", response.results_size(), " requests failed"));
  }
  return absl::OkStatus();
}

// "version V", or "(every version)" when --version was left out.
std::string VersionText(const ClientConfig& config) {
  return config.version.empty() ? "(every version)" : absl::StrCat("version ", config.version);
}

// `adapters load`: the adapter into the model's groups (those of --version alone, when
// given), and into its groups that register later.
absl::Status LoadAdapter(const ClientConfig& config) {
  if (config.model.empty()) return absl::InvalidArgumentError("--model: required");
  if (config.adapter_name.empty()) {
    return absl::InvalidArgumentError("--name: required (the name requests will use)");
  }
  if (config.adapter_dir.empty()) {
    return absl::InvalidArgumentError(
        "--dir: required (the PEFT adapter's directory, as the workers' hosts see it)");
  }
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::LoadAdapterRequest request;
  request.set_model(config.model);
  request.set_version(config.version);
  request.mutable_adapter()->set_name(config.adapter_name);
  request.mutable_adapter()->set_dir(config.adapter_dir);
  grpc::ClientContext context;
  PrepareCall(context, config, config.timeout);
  v1::LoadAdapterResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->LoadAdapter(&context, request, &response)));
  std::printf("loaded adapter %s of %s %s from %s on groups %s\n", config.adapter_name.c_str(),
              config.model.c_str(), VersionText(config).c_str(), config.adapter_dir.c_str(),
              absl::StrJoin(response.groups(), ", ").c_str());
  return absl::OkStatus();
}

// `adapters unload`: requests running on it finish; later ones naming it are refused.
absl::Status UnloadAdapter(const ClientConfig& config) {
  if (config.model.empty()) return absl::InvalidArgumentError("--model: required");
  if (config.adapter_name.empty()) return absl::InvalidArgumentError("--name: required");
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::UnloadAdapterRequest request;
  request.set_model(config.model);
  request.set_version(config.version);
  request.set_name(config.adapter_name);
  grpc::ClientContext context;
  PrepareCall(context, config, config.timeout);
  v1::UnloadAdapterResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->UnloadAdapter(&context, request, &response)));
  // No group: it was loaded for groups yet to register only, and is no longer.
  const std::string from = response.groups().empty()
                               ? "no group"
                               : absl::StrCat("groups ", absl::StrJoin(response.groups(), ", "));
  std::printf("unloaded adapter %s of %s %s from %s\n", config.adapter_name.c_str(),
              config.model.c_str(), VersionText(config).c_str(), from.c_str());
  return absl::OkStatus();
}

// `rows` (the first the header) in columns two spaces apart. An empty cell prints as "-",
// which keeps every row's columns in place for scripts that split lines on whitespace.
void PrintTable(std::vector<std::vector<std::string>> rows) {
  for (auto& row : rows) {
    for (std::string& cell : row) {
      if (cell.empty()) cell = "-";
    }
  }
  std::vector<size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i + 1 == row.size()) {
        absl::StrAppend(&line, row[i]);
      } else {
        absl::StrAppend(&line, row[i], std::string(widths[i] - row[i].size() + 2, ' '));
      }
    }
    std::printf("%s\n", line.c_str());
  }
}

// `adapters list`: a table, a row per adapter and model version.
absl::Status ListAdapters(const ClientConfig& config) {
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::ListAdaptersRequest request;
  request.set_model(config.model);
  grpc::ClientContext context;
  PrepareCall(context, config, std::min(config.timeout, absl::Seconds(30)));
  v1::ListAdaptersResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->ListAdapters(&context, request, &response)));
  std::vector<std::vector<std::string>> rows = {
      {"MODEL", "VERSION", "NAME", "DIR", "GROUPS", "RESIDENT"}};
  for (const v1::AdapterInfo& info : response.adapters()) {
    rows.push_back({info.model(), info.version(), info.name(), info.dir(),
                    absl::StrCat(info.groups()), absl::StrCat(info.resident())});
  }
  PrintTable(std::move(rows));
  return absl::OkStatus();
}

// `training start`: a LoRA fine-tune inside one of the model's serving groups, from a
// --train-config file (launcher/serving_finetune.h) sent as it is.
absl::Status StartTraining(const ClientConfig& config) {
  if (config.model.empty()) return absl::InvalidArgumentError("--model: required");
  if (config.train_config.empty()) {
    return absl::InvalidArgumentError(
        "--config: required (a JSON fine-tune configuration, as `tessera worker "
        "--train-config` reads)");
  }
  std::ifstream file(config.train_config, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("--config: cannot read ", config.train_config));
  }
  const std::string json((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::StartTrainingRequest request;
  request.set_model(config.model);
  request.set_version(config.version);
  request.set_group(config.group);
  request.set_config_json(json);
  grpc::ClientContext context;
  PrepareCall(context, config, config.timeout);
  v1::StartTrainingResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->StartTraining(&context, request, &response)));
  // A job of several groups runs it on all of them, data-parallel.
  const std::string where =
      response.groups_size() > 1
          ? absl::StrCat("groups ", absl::StrJoin(response.groups(), ", "), " (data-parallel)")
          : absl::StrCat("group ", response.group());
  std::printf("started the fine-tune of %s on %s (`tessera client training status` follows it)\n",
              config.model.c_str(), where.c_str());
  return absl::OkStatus();
}

// `training status`: a table, a row per group that has run a fine-tune, and why each failed
// one did.
absl::Status TrainingStatus(const ClientConfig& config) {
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::TrainingStatusRequest request;
  request.set_model(config.model);
  grpc::ClientContext context;
  PrepareCall(context, config, std::min(config.timeout, absl::Seconds(30)));
  v1::TrainingStatusResponse response;
  TESSERA_RETURN_IF_ERROR(
      serve::FromGrpcStatus(stub->TrainingStatus(&context, request, &response)));
  std::vector<std::vector<std::string>> rows = {
      {"MODEL", "VERSION", "GROUP", "ADAPTER", "STATE", "STEP", "LOSS", "PUBLISHED", "TOKENS/S"}};
  for (const v1::TrainingState& state : response.trainings()) {
    // No loss before the first step, no published step before the first version.
    std::string step = absl::StrCat(state.steps_done(), "/", state.steps());
    if (state.resumed_step() > 0) absl::StrAppend(&step, " (from ", state.resumed_step(), ")");
    rows.push_back(
        {state.model(), state.version(), state.group(), state.adapter(), state.state(), step,
         state.steps_done() > state.resumed_step() ? absl::StrFormat("%.4g", state.loss()) : "",
         state.published_step() > 0 ? absl::StrCat(state.published_step()) : "",
         absl::StrFormat("%.1f", state.train_tokens_per_second())});
  }
  PrintTable(std::move(rows));
  for (const v1::TrainingState& state : response.trainings()) {
    if (!state.error().empty()) {
      std::printf("group %s: %s\n", state.group().c_str(), state.error().c_str());
    }
  }
  return absl::OkStatus();
}

// `training stop`: the fine-tune of the named group, or of every group of the model.
absl::Status StopTraining(const ClientConfig& config) {
  if (config.model.empty()) return absl::InvalidArgumentError("--model: required");
  auto stub = v1::Inference::NewStub(Connect(config));
  v1::StopTrainingRequest request;
  request.set_model(config.model);
  request.set_version(config.version);
  request.set_group(config.group);
  grpc::ClientContext context;
  PrepareCall(context, config, config.timeout);
  v1::StopTrainingResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub->StopTraining(&context, request, &response)));
  std::printf("stopped the fine-tune of %s on groups %s\n", config.model.c_str(),
              absl::StrJoin(response.groups(), ", ").c_str());
  return absl::OkStatus();
}

// What an action's calls carry as "authorization: Bearer".
enum class Credential {
  kApiKey,     // a client's: --api-key-file or TESSERA_API_KEY
  kJoinToken,  // an operator's: --join-token-file or TESSERA_JOIN_TOKEN
};

// The flags of generate, chat and batch: the request's model, adapter and sampling.
void AddRequestFlags(FlagSet& flags, ClientConfig& config) {
  flags.String("model", &config.model, "model name (default: the first listed)");
  flags.String("version", &config.version, "model version (default: the coordinator's pick)");
  flags.String("adapter", &config.adapter,
               "a LoRA adapter loaded for the model to run with (default: the base model)");
  flags.String("tenant", &config.tenant,
               "tenant the tokens are charged to (with API keys: the key's, or leave it out)");
  flags.String("session", &config.session, "session id (keeps one model version)");
  flags.Int("max-tokens", &config.max_tokens, "tokens to generate at most");
  flags.String("temperature", &config.temperature, "sampling temperature (0: greedy)");
  flags.Int("top-k", &config.top_k, "sample among the k most likely tokens (0: all)");
  flags.String("top-p", &config.top_p, "nucleus sampling mass in (0, 1]");
  flags.Int("seed", &config.seed, "sampler seed (-1: the engine's choice)");
  flags.Bool("ignore-eos", &config.ignore_eos, "keep going past end-of-sequence tokens");
}

// The model, version and name flags of adapters load and unload.
void AddAdapterNameFlags(FlagSet& flags, ClientConfig& config) {
  flags.String("model", &config.model, "the model whose groups get it (required)");
  flags.String("version", &config.version, "only this version of the model (default: every one)");
  flags.String("name", &config.adapter_name, "the adapter's name, as requests give it (required)");
}

// The model, version and group flags of training start and stop.
void AddTrainingGroupFlags(FlagSet& flags, ClientConfig& config) {
  flags.String("model", &config.model, "the model whose group trains (required)");
  flags.String("version", &config.version, "only this version's groups (default: any)");
  flags.String("group", &config.group,
               "a group id, as `training status` and the coordinator's log show it (default: "
               "start on the model's first group; stop on every group of the model)");
}

// One action of `tessera client`: the words that name it, what its --help says, the flags it
// takes beside --target, --timeout, the TLS flags and its credential's, and what it does.
struct Action {
  const char* name;
  const char* summary;
  Credential credential;
  void (*add_flags)(FlagSet& flags, ClientConfig& config);
  absl::Status (*run)(const ClientConfig& config);
};

constexpr Action kActions[] = {
    {"health",
     "Asks a coordinator or worker whether it is serving (gRPC health checking); exit 0 when it "
     "is.",
     Credential::kApiKey,
     [](FlagSet& flags, ClientConfig& config) {
       flags.String("service", &config.service,
                    "the service to ask about: tessera.v1.Inference (a coordinator with a healthy "
                    "group), tessera.v1.Worker (a group leader), or \"\" (the process answers)");
     },
     Health},
    {"generate", "Streams one completion to the terminal.", Credential::kApiKey,
     [](FlagSet& flags, ClientConfig& config) {
       AddRequestFlags(flags, config);
       flags.String("prompt", &config.prompt, "the prompt");
     },
     Generate},
    {"chat",
     "A conversation: each line of stdin is your turn, the model's chat template (on the "
     "coordinator) makes the prompt, and the replies stream.",
     Credential::kApiKey,
     [](FlagSet& flags, ClientConfig& config) {
       AddRequestFlags(flags, config);
       flags.String("system", &config.system, "a system message that opens the conversation");
     },
     Chat},
    {"batch", "Runs a file of prompts (one per line) as one GenerateBatch; results in order.",
     Credential::kApiKey,
     [](FlagSet& flags, ClientConfig& config) {
       AddRequestFlags(flags, config);
       flags.String("prompts", &config.prompts_file, "a file of prompts, one per line");
     },
     Batch},
    {"adapters list",
     "The LoRA adapters the coordinator's groups can run: model, version, name, directory, "
     "groups that can run it and groups that hold it in memory.",
     Credential::kApiKey,
     [](FlagSet& flags, ClientConfig& config) {
       flags.String("model", &config.model, "only this model's (default: every model's)");
     },
     ListAdapters},
    {"adapters load",
     "Loads a PEFT adapter into every group of the model (and those that register later); a "
     "name already loaded is replaced. Prints the groups that loaded it.",
     Credential::kJoinToken,
     [](FlagSet& flags, ClientConfig& config) {
       AddAdapterNameFlags(flags, config);
       flags.String("dir", &config.adapter_dir,
                    "the PEFT adapter's directory, as the workers' hosts see it (required)");
     },
     LoadAdapter},
    {"adapters unload",
     "Unloads an adapter from the model's groups: requests running on it finish, later ones "
     "naming it are refused. Prints the groups that held it.",
     Credential::kJoinToken, AddAdapterNameFlags, UnloadAdapter},
    {"training start",
     "Starts a LoRA fine-tune inside one of the model's serving groups, between its serving "
     "steps, from a --train-config file (its paths are the workers' hosts'); the adapter is "
     "served under its name as it learns. Prints the group.",
     Credential::kJoinToken,
     [](FlagSet& flags, ClientConfig& config) {
       AddTrainingGroupFlags(flags, config);
       flags.String("config", &config.train_config,
                    "the fine-tune's JSON configuration file, sent as it is (required)");
     },
     StartTraining},
    {"training status",
     "The fine-tunes of the coordinator's groups: model, version, group, adapter, state, steps "
     "done, last loss, the step of the version served and training tokens/s.",
     Credential::kApiKey,
     [](FlagSet& flags, ClientConfig& config) {
       flags.String("model", &config.model, "only this model's (default: every model's)");
     },
     TrainingStatus},
    {"training stop",
     "Stops the fine-tune of a group, or of every group of the model; the versions it "
     "published stay served. Prints the groups whose fine-tune stopped.",
     Credential::kJoinToken, AddTrainingGroupFlags, StopTraining},
};

// The action `args` begin with, and the number of words that named it; null when none does.
const Action* FindAction(const std::vector<std::string>& args, size_t* words) {
  for (const Action& action : kActions) {
    std::vector<std::string> name = absl::StrSplit(action.name, ' ');
    if (args.size() >= name.size() && std::equal(name.begin(), name.end(), args.begin())) {
      *words = name.size();
      return &action;
    }
  }
  return nullptr;
}

}  // namespace

int RunClient(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  size_t words = 0;
  const Action* action = FindAction(args, &words);
  if (action == nullptr) {
    // "tessera client --help", and "tessera client adapters --help" too.
    const bool help = !args.empty() && (args.back() == "--help" || args.back() == "-h");
    FILE* out = help ? stdout : stderr;
    std::fprintf(out,
                 "usage: tessera client ACTION [flags]  (ACTION --help for its flags)\n\n"
                 "actions:\n");
    for (const Action& each : kActions) std::fprintf(out, "  %s\n", each.name);
    return help ? kExitOk : kExitUsage;
  }
  ClientConfig config;
  FlagSet flags(absl::StrCat("tessera client ", action->name), action->summary);
  flags.String("target", &config.target, "host:port of the coordinator");
  flags.Duration("timeout", &config.timeout, "deadline of the call");
  AddTlsFlags(flags, &config.tls, /*serves=*/false);
  if (action->credential == Credential::kApiKey) {
    flags.String("api-key-file", &config.api_key_file,
                 "a file holding the API key (also TESSERA_API_KEY)");
  } else {
    flags.String("join-token-file", &config.join_token_file,
                 "a file holding the coordinator's join token (also TESSERA_JOIN_TOKEN)");
  }
  action->add_flags(flags, config);
  std::vector<std::string> rest(args.begin() + static_cast<std::ptrdiff_t>(words), args.end());
  if (std::optional<int> done = ParseOrExit(flags, rest)) return *done;
  absl::Status status = [&]() -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(
        config.bearer,
        action->credential == Credential::kApiKey
            ? ReadSecret(config.api_key_file, "TESSERA_API_KEY", "--api-key-file")
            : ReadSecret(config.join_token_file, "TESSERA_JOIN_TOKEN", "--join-token-file"));
    TESSERA_RETURN_IF_ERROR(serve::CheckTlsFiles(config.tls));
    TESSERA_ASSIGN_OR_RETURN(config.credentials, serve::ChannelCredentialsFor(config.tls));
    return action->run(config);
  }();
  if (!status.ok()) {
    std::fprintf(stderr, "tessera client %s: %s\n", action->name, status.ToString().c_str());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace tessera::launcher
