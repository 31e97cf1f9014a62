#include "runtime/train/zero_optimizer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::train {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardedAdamW>> ShardedAdamW::Create(ParameterSet& params,
                                                                   GradientReducer& reducer,
                                                                   comm::Communicator& dp,
                                                                   const AdamWOptions& options) {
  if (reducer.reduction() != Reduction::kReduceScatter) {
    return absl::InternalError("the sharded optimizer needs a reduce-scatter gradient reducer");
  }
  std::unique_ptr<ShardedAdamW> adam(new ShardedAdamW(params, reducer, dp, options));
  const std::vector<Parameter>& all = params.all();
  std::vector<int> slots_of(all.size(), 0);
  int64_t largest = 0;
  for (int b = 0; b < reducer.num_buckets(); ++b) {
    const int64_t shard = reducer.shard_elements(b);
    const int64_t first = dp.rank() * shard, end = first + shard;  // this rank's elements
    Bucket bucket;
    for (const GradientReducer::Slot& slot : reducer.slots(b)) {
      if (slot.id < 0 || slot.id >= static_cast<int>(all.size()) ||
          slot.numel != all[slot.id].value.numel() || !all[slot.id].trainable) {
        return absl::InternalError(
            absl::StrCat("gradient bucket ", b, " holds a slot that is no trainable parameter"));
      }
      ++slots_of[slot.id];
      const int64_t begin = std::max(first, slot.offset);
      const int64_t stop = std::min(end, slot.offset + slot.numel);
      if (begin < stop) {
        bucket.pieces.push_back({slot.id, begin - slot.offset, stop - begin, begin - first});
      }
    }
    TESSERA_ASSIGN_OR_RETURN(bucket.exp_avg, Tensor::Zeros(DType::kF32, {shard}));
    TESSERA_ASSIGN_OR_RETURN(bucket.exp_avg_sq, Tensor::Zeros(DType::kF32, {shard}));
    adam->buckets_.push_back(std::move(bucket));
    largest = std::max(largest, shard);
  }
  for (size_t i = 0; i < all.size(); ++i) {
    if (slots_of[i] != (all[i].trainable ? 1 : 0)) {
      return absl::InternalError(
          absl::StrCat("the gradient buckets hold ", all[i].name, " ", slots_of[i], " times"));
    }
  }
  if (largest > 0) {
    TESSERA_ASSIGN_OR_RETURN(adam->gathered_, Tensor::Empty(DType::kF32, {dp.size() * largest}));
  }
  return adam;
}

absl::StatusOr<double> ShardedAdamW::GradNorm(comm::Communicator& tp) const {
  const std::vector<Parameter>& all = params_->all();
  double sum = 0;
  for (int b = 0; b < static_cast<int>(buckets_.size()); ++b) {
    const float* g = reducer_->shard(b).data<float>();
    for (const Piece& piece : buckets_[b].pieces) {
      sum += CountedSquares(all[piece.param], g + piece.shard_offset, piece.begin, piece.count);
    }
  }
  TESSERA_ASSIGN_OR_RETURN(sum, SumOverGroup(*dp_, sum));
  TESSERA_ASSIGN_OR_RETURN(sum, SumOverGroup(tp, sum));
  return std::sqrt(sum);
}

void ShardedAdamW::ClipGrads(double norm, double max_norm) {
  const double coefficient = ClipCoefficient(norm, max_norm);
  if (coefficient >= 1.0) return;
  const float scale = static_cast<float>(coefficient);
  for (int b = 0; b < static_cast<int>(buckets_.size()); ++b) {
    float* g = reducer_->shard(b).data<float>();
    for (const Piece& piece : buckets_[b].pieces) {
      for (int64_t k = 0; k < piece.count; ++k) g[piece.shard_offset + k] *= scale;
    }
  }
}

absl::Status ShardedAdamW::GatherBucket(int b, const Tensor& shard, std::vector<Tensor>& whole) {
  TESSERA_ASSIGN_OR_RETURN(Tensor gathered,
                           gathered_.Slice(0, dp_->size() * reducer_->shard_elements(b)));
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(dp_->AllGather(shard, gathered, cpu));
  const float* from = gathered.data<float>();
  for (const GradientReducer::Slot& slot : reducer_->slots(b)) {
    if (whole[slot.id].defined()) {
      std::copy_n(from + slot.offset, slot.numel, whole[slot.id].data<float>());
    }
  }
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Step(double lr, double* gather_seconds) {
  ++steps_;
  const AdamWScalars scalars(options_, lr, steps_);
  std::vector<Parameter>& all = params_->all();
  std::vector<Tensor> values(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].trainable) values[i] = all[i].value;
  }
  *gather_seconds = 0;
  for (int b = 0; b < static_cast<int>(buckets_.size()); ++b) {
    Bucket& bucket = buckets_[b];
    Tensor shard = reducer_->shard(b);
    float* g = shard.data<float>();
    for (const Piece& piece : bucket.pieces) {
      Parameter& p = all[piece.param];
      float* w = p.value.data<float>() + piece.begin;
      float* g_piece = g + piece.shard_offset;
      AdamWUpdate(scalars, options_.decay_all || p.weight_decay, w, g_piece,
                  bucket.exp_avg.data<float>() + piece.shard_offset,
                  bucket.exp_avg_sq.data<float>() + piece.shard_offset, piece.count);
      std::copy_n(w, piece.count, g_piece);  // the gradient is spent: the shard sends the value
    }
    const double start = Now();
    TESSERA_RETURN_IF_ERROR(GatherBucket(b, shard, values));
    *gather_seconds += Now() - start;
  }
  return absl::OkStatus();
}

int64_t ShardedAdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const Bucket& bucket : buckets_) {
    bytes += bucket.exp_avg.nbytes() + bucket.exp_avg_sq.nbytes();
  }
  return bytes;
}

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> ShardedAdamW::State(bool materialize) {
  const std::vector<Parameter>& all = params_->all();
  std::vector<Tensor> exp_avg(all.size()), exp_avg_sq(all.size());
  if (materialize) {
    for (size_t i = 0; i < all.size(); ++i) {
      if (!all[i].trainable) continue;
      TESSERA_ASSIGN_OR_RETURN(exp_avg[i], Tensor::Empty(DType::kF32, all[i].value.shape()));
      TESSERA_ASSIGN_OR_RETURN(exp_avg_sq[i], Tensor::Empty(DType::kF32, all[i].value.shape()));
    }
  }
  for (int b = 0; b < static_cast<int>(buckets_.size()); ++b) {
    TESSERA_RETURN_IF_ERROR(GatherBucket(b, buckets_[b].exp_avg, exp_avg));
    TESSERA_RETURN_IF_ERROR(GatherBucket(b, buckets_[b].exp_avg_sq, exp_avg_sq));
  }
  std::vector<std::pair<std::string, Tensor>> state;
  if (!materialize) return state;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!all[i].trainable) continue;
    state.emplace_back(all[i].name + ".exp_avg", exp_avg[i]);
    state.emplace_back(all[i].name + ".exp_avg_sq", exp_avg_sq[i]);
  }
  return state;
}

absl::Status ShardedAdamW::Restore(const std::vector<std::pair<std::string, Tensor>>& state,
                                   int64_t steps) {
  const std::vector<Parameter>& all = params_->all();
  // Every tensor is checked on every rank, not only the owned ones: ranks fail together.
  std::vector<Tensor> exp_avg(all.size()), exp_avg_sq(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    if (!all[i].trainable) continue;
    TESSERA_ASSIGN_OR_RETURN(exp_avg[i],
                             SavedMoment(state, all[i].name + ".exp_avg", all[i].value.shape()));
    TESSERA_ASSIGN_OR_RETURN(exp_avg_sq[i],
                             SavedMoment(state, all[i].name + ".exp_avg_sq", all[i].value.shape()));
  }
  for (Bucket& bucket : buckets_) {
    for (const Piece& piece : bucket.pieces) {
      std::copy_n(exp_avg[piece.param].data<float>() + piece.begin, piece.count,
                  bucket.exp_avg.data<float>() + piece.shard_offset);
      std::copy_n(exp_avg_sq[piece.param].data<float>() + piece.begin, piece.count,
                  bucket.exp_avg_sq.data<float>() + piece.shard_offset);
    }
  }
  steps_ = steps;
  return absl::OkStatus();
}

}  // namespace tessera::train
