#include "launcher/bench_client.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "runtime/core/status_macros.h"
#include "runtime/serve/request_convert.h"

namespace tessera::launcher {
namespace {

// Text tokenized once to learn a range of token ids the model certainly has.
constexpr char kVocabProbe[] =
    "The quick brown fox jumps over the lazy dog. 0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ "
    "Tessera serves and fine-tunes transformer language models across GPUs and nodes.";

}  // namespace

std::shared_ptr<grpc::Channel> ConnectBenchClient(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

absl::Status WaitConnected(grpc::Channel& channel, const std::string& target) {
  if (!channel.WaitForConnected(absl::ToChronoTime(absl::Now() + kBenchConnectTimeout))) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", target));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FirstModel(v1::Inference::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::ListModelsResponse models;
  TESSERA_RETURN_IF_ERROR(
      serve::FromGrpcStatus(stub.ListModels(&context, v1::ListModelsRequest(), &models)));
  if (models.models_size() == 0) {
    return absl::UnavailableError("the coordinator lists no model (no worker group yet)");
  }
  return models.models(0).name();
}

absl::StatusOr<int32_t> ProbeVocab(v1::Inference::Stub& stub, const std::string& model) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::TokenizeRequest request;
  request.set_model(model);
  request.set_text(kVocabProbe);
  v1::TokenizeResponse response;
  TESSERA_RETURN_IF_ERROR(serve::FromGrpcStatus(stub.Tokenize(&context, request, &response)));
  int32_t largest = 0;
  for (int32_t id : response.tokens()) largest = std::max(largest, id);
  if (largest < 1) return absl::FailedPreconditionError("Tokenize gave no usable token ids");
  return largest + 1;
}

}  // namespace tessera::launcher
