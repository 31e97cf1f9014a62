#include "launcher/offline_generate.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "launcher/engine_flags.h"
#include "launcher/request_file.h"
#include "runtime/core/status_macros.h"

namespace tessera::launcher {
namespace {

// Broadcasts world rank 0's `text` to every rank.
absl::Status BroadcastText(comm::Communicator& world, std::string* text) {
  Stream cpu = Stream::Cpu();
  int64_t size = static_cast<int64_t>(text->size());
  Tensor header = Tensor::Wrap(&size, DType::kI64, {1});
  TESSERA_RETURN_IF_ERROR(world.Broadcast(header, 0, cpu));
  text->resize(size);
  Tensor body = Tensor::Wrap(text->data(), DType::kI8, {size});
  return world.Broadcast(body, 0, cpu);
}

// Every rank's `text`, on every rank.
absl::StatusOr<std::vector<std::string>> GatherText(comm::Communicator& world,
                                                    const std::string& text) {
  Stream cpu = Stream::Cpu();
  int64_t size = static_cast<int64_t>(text.size());
  TESSERA_ASSIGN_OR_RETURN(Tensor sizes, Tensor::Empty(DType::kI64, {world.size()}));
  Tensor mine = Tensor::Wrap(&size, DType::kI64, {1});
  TESSERA_RETURN_IF_ERROR(world.AllGather(mine, sizes, cpu));
  int64_t longest = 1;
  for (int64_t s : sizes.span<int64_t>()) longest = std::max(longest, s);
  std::string padded = text;
  padded.resize(longest);
  TESSERA_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty(DType::kI8, {world.size() * longest}));
  Tensor local = Tensor::Wrap(padded.data(), DType::kI8, {longest});
  TESSERA_RETURN_IF_ERROR(world.AllGather(local, all, cpu));
  std::vector<std::string> texts;
  for (int r = 0; r < world.size(); ++r) {
    texts.emplace_back(reinterpret_cast<const char*>(all.data<int8_t>()) + r * longest,
                       sizes.data<int64_t>()[r]);
  }
  return texts;
}

void DrawProgress(int64_t done, int64_t total, const engine::EngineStats& stats) {
  constexpr int kWidth = 30;
  int filled = total > 0 ? static_cast<int>(kWidth * done / total) : kWidth;
  std::string bar(filled, '=');
  if (filled < kWidth) bar += '>' + std::string(kWidth - filled - 1, ' ');
  std::fprintf(stderr, "\r[%s] %lld/%lld requests, %d running, %.0f tokens/s  ", bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total), stats.running,
               stats.output_tokens_per_second);
  std::fflush(stderr);
}

}  // namespace

absl::Status RunOfflineJob(const OfflineJob& job, comm::MpiCommunicator& world,
                           comm::Layout& layout, model::Transformer& model,
                           const tokenizer::Tokenizer& tokenizer) {
  std::string contents;
  absl::Status read_status;
  if (world.rank() == 0) {
    std::ifstream file(job.requests_path, std::ios::binary);
    if (!file) {
      read_status = absl::NotFoundError(absl::StrCat("--requests: cannot read ", job.requests_path));
    } else {
      std::stringstream buffer;
      buffer << file.rdbuf();
      contents = buffer.str();
    }
  }
  // Everyone learns whether the file was read (an empty broadcast means it was not).
  std::string failure = std::string(read_status.message());
  TESSERA_RETURN_IF_ERROR(BroadcastText(world, &failure));
  if (!failure.empty()) return absl::NotFoundError(failure);
  TESSERA_RETURN_IF_ERROR(BroadcastText(world, &contents));

  // Requests are the non-blank lines, numbered by their line in the file.
  std::vector<std::pair<int, std::string>> lines;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++number;
    if (!absl::StripAsciiWhitespace(line).empty()) lines.emplace_back(number, std::string(line));
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> engine,
                           engine::Engine::Create(model, layout.tp(), &tokenizer, job.engine));
  const bool leader = engine->is_leader();
  if (world.rank() == 0) {
    std::fprintf(stderr, "tessera: %s\n", DescribeKvCache(*engine, model).c_str());
  }

  // This replica's share: request i goes to replica i % dp.
  struct Pending {
    size_t index;
    RequestResult result;
    std::shared_ptr<engine::RequestStream> stream;
  };
  std::vector<Pending> mine;
  if (leader) {
    for (size_t i = layout.dp_rank(); i < lines.size(); i += layout.dp_size()) {
      Pending pending{i, {}, nullptr};
      pending.result.line = lines[i].first;
      absl::StatusOr<engine::GenerationRequest> request =
          ParseRequestLine(lines[i].second, lines[i].first);
      if (!request.ok()) {
        pending.result.id = absl::StrCat(lines[i].first);
        pending.result.error = std::string(request.status().message());
      } else {
        pending.result.id = request->id;
        pending.result.with_logprobs = request->sampling.logprobs;
        absl::StatusOr<std::shared_ptr<engine::RequestStream>> stream = engine->Submit(*request);
        if (stream.ok()) {
          pending.stream = *stream;
        } else {
          pending.result.error =
              absl::StrCat("line ", lines[i].first, ": ", stream.status().message());
        }
      }
      mine.push_back(std::move(pending));
    }
    engine->StopWhenIdle();
  }
  if (world.rank() == 0 && isatty(fileno(stderr))) {
    const int64_t total = static_cast<int64_t>(mine.size());
    engine->SetStepObserver([total](const engine::EngineStats& stats) {
      DrawProgress(stats.requests_finished, total, stats);
    });
  }
  absl::Time start = absl::Now();
  TESSERA_RETURN_IF_ERROR(engine->Run());
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (world.rank() == 0 && isatty(fileno(stderr))) std::fprintf(stderr, "\n");

  // Results as "index\tjson" lines, gathered to rank 0.
  std::string lines_out;
  int failed = 0;
  for (Pending& pending : mine) {
    RequestResult& result = pending.result;
    if (pending.stream != nullptr) {
      engine::TokenEvent event;
      while (pending.stream->Next(&event)) {
        result.text += event.text;
        if (event.final) {
          result.finish_reason = event.finish_reason;
          result.usage = event.usage;
          if (!event.status.ok()) result.error = std::string(event.status.message());
          break;
        }
        result.token_ids.push_back(event.token);
        result.logprobs.push_back(event.logprob);
      }
    }
    if (!result.error.empty()) ++failed;
    absl::StrAppend(&lines_out, pending.index, "\t", FormatResultLine(result), "\n");
  }
  absl::StrAppend(&lines_out, "failed\t", failed, "\n");
  TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> all, GatherText(world, lines_out));
  engine::EngineStats stats = engine->Stats();
  if (world.rank() != 0) return absl::OkStatus();

  std::vector<std::string> ordered(lines.size());
  int total_failed = 0;
  for (const std::string& text : all) {
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      std::pair<absl::string_view, absl::string_view> parts = absl::StrSplit(line, '\t');
      if (parts.first == "failed") {
        int count = 0;
        if (absl::SimpleAtoi(parts.second, &count)) total_failed += count;
        continue;
      }
      size_t index = 0;
      if (absl::SimpleAtoi(parts.first, &index) && index < ordered.size()) {
        ordered[index] = std::string(parts.second);
      }
    }
  }
  FILE* out = stdout;
  if (!job.output_path.empty()) {
    out = std::fopen(job.output_path.c_str(), "w");
    if (out == nullptr) {
      return absl::PermissionDeniedError(absl::StrCat("--output: cannot write ", job.output_path));
    }
  }
  for (const std::string& line : ordered) std::fprintf(out, "%s\n", line.c_str());
  if (out != stdout) std::fclose(out);
  std::fprintf(stderr,
               "tessera: %zu requests in %.2f s (%.2f requests/s); replica 0: %lld prompt tokens "
               "computed, %lld generated (%.1f tokens/s), mean batch %.1f, prefix cache hits "
               "%lld/%lld blocks, %lld preemptions\n",
               lines.size(), seconds, lines.size() / std::max(seconds, 1e-9),
               static_cast<long long>(stats.prompt_tokens),
               static_cast<long long>(stats.output_tokens),
               stats.output_tokens / std::max(seconds, 1e-9),
               stats.steps > 0 ? static_cast<double>(stats.step_sequences) / stats.steps : 0.0,
               static_cast<long long>(stats.prefix_hits),
               static_cast<long long>(stats.prefix_lookups),
               static_cast<long long>(stats.preemptions));
  if (total_failed > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        total_failed, " of ", lines.size(), " requests failed; their lines in ",
        job.output_path.empty() ? "the output" : job.output_path, " say why"));
  }
  return absl::OkStatus();
}

}  // namespace tessera::launcher
