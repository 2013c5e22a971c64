#include "models/bert.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/linear/linear.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

using Json = nlohmann::json;

// Philox stream of the embeddings' dropout (the encoder's sites use their
// own streams, models/ft_transformers.cc).
constexpr uint64_t kEmbeddingDropoutStream = 0xBE47000;

constexpr char kWord[] = "embeddings.word_embeddings.weight";
constexpr char kPosition[] = "embeddings.position_embeddings.weight";
constexpr char kTokenType[] = "embeddings.token_type_embeddings.weight";
constexpr char kNormWeight[] = "embeddings.LayerNorm.weight";
constexpr char kNormBias[] = "embeddings.LayerNorm.bias";
constexpr char kPoolerWeight[] = "pooler.dense.weight";
constexpr char kPoolerBias[] = "pooler.dense.bias";

absl::Status Bad(absl::string_view field, absl::string_view requirement,
                 const std::string& got) {
  return absl::InvalidArgumentError(absl::StrCat(
      "BertConfig.", field, " must be ", requirement, ", got ", got));
}

absl::Status JsonTypeError(const std::string& key, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("BertConfig JSON: \"", key, "\" must be ", expected));
}

absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  FTX_RETURN_IF_ERROR(EnsureTensor(tensor, shape, Device::Cpu()));
  return tensor.view<float>();
}

absl::Status BadInput(absl::string_view op, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what));
}

// Every entry of `ids` [N, L] is in [0, limit).
absl::Status CheckIds(absl::string_view op, absl::string_view name,
                      TensorView<const int32_t> ids, int64_t limit) {
  for (int64_t i = 0; i < ids.NumElements(); ++i) {
    const int32_t id = ids.data()[i];
    if (id < 0 || id >= limit) {
      return BadInput(op, absl::StrCat(name, " must be in [0, ", limit,
                                       "), got ", id, " at flat index ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateBertConfig(const BertConfig& c) {
  auto positive = [](absl::string_view field, int64_t value) {
    return value >= 1 ? absl::OkStatus()
                      : Bad(field, ">= 1", absl::StrCat(value));
  };
  FTX_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
  FTX_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
  FTX_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_hidden_layers));
  FTX_RETURN_IF_ERROR(positive("num_attention_heads", c.num_attention_heads));
  if (c.hidden_size % c.num_attention_heads != 0) {
    return Bad("num_attention_heads", "a divisor of hidden_size",
               absl::StrCat(c.num_attention_heads, " for hidden_size ",
                            c.hidden_size));
  }
  FTX_RETURN_IF_ERROR(positive("intermediate_size", c.intermediate_size));
  if (c.hidden_act != Activation::kGelu && c.hidden_act != Activation::kRelu) {
    return Bad("hidden_act", "gelu or relu", ActivationName(c.hidden_act));
  }
  FTX_RETURN_IF_ERROR(
      positive("max_position_embeddings", c.max_position_embeddings));
  FTX_RETURN_IF_ERROR(positive("type_vocab_size", c.type_vocab_size));
  if (!(c.layer_norm_eps >= 0.0f && std::isfinite(c.layer_norm_eps))) {
    return Bad("layer_norm_eps", ">= 0 and finite",
               absl::StrCat(c.layer_norm_eps));
  }
  if (!(c.hidden_dropout_prob >= 0.0f && c.hidden_dropout_prob < 1.0f)) {
    return Bad("hidden_dropout_prob", "in [0, 1)",
               absl::StrCat(c.hidden_dropout_prob));
  }
  if (!(c.attention_probs_dropout_prob >= 0.0f &&
        c.attention_probs_dropout_prob < 1.0f)) {
    return Bad("attention_probs_dropout_prob", "in [0, 1)",
               absl::StrCat(c.attention_probs_dropout_prob));
  }
  if (!(c.initializer_range >= 0.0f && std::isfinite(c.initializer_range))) {
    return Bad("initializer_range", ">= 0 and finite",
               absl::StrCat(c.initializer_range));
  }
  if (c.pad_token_id < 0 || c.pad_token_id >= c.vocab_size) {
    return Bad("pad_token_id", absl::StrCat("in [0, ", c.vocab_size, ")"),
               absl::StrCat(c.pad_token_id));
  }
  return absl::OkStatus();
}

absl::StatusOr<BertConfig> BertConfigFromJson(absl::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        "BertConfig JSON: expected a JSON object");
  }
  BertConfig c;
  const std::map<std::string, int64_t*> ints = {
      {"vocab_size", &c.vocab_size},
      {"hidden_size", &c.hidden_size},
      {"num_hidden_layers", &c.num_hidden_layers},
      {"num_attention_heads", &c.num_attention_heads},
      {"intermediate_size", &c.intermediate_size},
      {"max_position_embeddings", &c.max_position_embeddings},
      {"type_vocab_size", &c.type_vocab_size},
      {"pad_token_id", &c.pad_token_id}};
  const std::map<std::string, float*> floats = {
      {"layer_norm_eps", &c.layer_norm_eps},
      {"hidden_dropout_prob", &c.hidden_dropout_prob},
      {"attention_probs_dropout_prob", &c.attention_probs_dropout_prob},
      {"initializer_range", &c.initializer_range}};
  const std::set<std::string> ignored = {
      "architectures", "transformers_version", "torch_dtype",
      "use_cache",     "classifier_dropout",   "gradient_checkpointing"};
  for (const auto& [key, value] : root.items()) {
    if (auto it = ints.find(key); it != ints.end()) {
      if (!value.is_number_integer()) return JsonTypeError(key, "an integer");
      *it->second = value.get<int64_t>();
    } else if (auto it = floats.find(key); it != floats.end()) {
      if (!value.is_number()) return JsonTypeError(key, "a number");
      *it->second = value.get<float>();
    } else if (key == "hidden_act") {
      if (!value.is_string()) return JsonTypeError(key, "a string");
      const std::string act = value.get<std::string>();
      if (act == "gelu") {
        c.hidden_act = Activation::kGelu;
      } else if (act == "relu") {
        c.hidden_act = Activation::kRelu;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("BertConfig JSON: \"hidden_act\" must be \"gelu\" or "
                         "\"relu\", got \"",
                         act, "\""));
      }
    } else if (key == "model_type" || key == "position_embedding_type") {
      const char* expected = key == "model_type" ? "bert" : "absolute";
      if (!value.is_string() || value.get<std::string>() != expected) {
        return JsonTypeError(key, absl::StrCat("\"", expected, "\"").c_str());
      }
    } else if (key == "add_pooling_layer") {
      if (!value.is_boolean()) return JsonTypeError(key, "a boolean");
      c.add_pooling_layer = value.get<bool>();
    } else if (key == "seed") {
      if (!value.is_number_unsigned()) {
        return JsonTypeError(key, "a non-negative integer");
      }
      c.seed = value.get<uint64_t>();
    } else if (ignored.count(key) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("BertConfig JSON: unknown key \"", key, "\""));
    }
  }
  return c;
}

FtTransformerConfig BertEncoderConfig(const BertConfig& c) {
  FtTransformerConfig e;
  e.n_layers = c.num_hidden_layers;
  e.n_heads = c.num_attention_heads;
  e.d_model = c.hidden_size;
  e.d_keys = c.hidden_size / std::max<int64_t>(c.num_attention_heads, 1);
  e.d_values = e.d_keys;
  e.d_ff = c.intermediate_size;
  e.dropout = c.hidden_dropout_prob;
  e.activation = c.hidden_act;
  e.final_normalization = false;
  e.layer_norm_eps = c.layer_norm_eps;
  e.feed_forward_hidden_dropout = false;
  e.attention_type = "full";
  e.attention_options["attention_dropout"] =
      static_cast<double>(c.attention_probs_dropout_prob);
  e.seed = c.seed;
  return e;
}

absl::StatusOr<std::unique_ptr<BertModel>> BertModel::Create(
    const BertConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateBertConfig(config));
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = config.hidden_size,
                                               .eps = config.layer_norm_eps}));
  std::unique_ptr<BertModel> model(new BertModel(config, norm));
  FTX_RETURN_IF_ERROR(RegisterBuiltinAttentions(model->registry_));
  FTX_ASSIGN_OR_RETURN(model->encoder_,
                       FtTransformerEncoder::Create(BertEncoderConfig(config),
                                                    model->registry_));
  return model;
}

std::vector<ParamShape> BertModel::ParamShapes() const {
  const int64_t C = config_.hidden_size;
  std::vector<ParamShape> shapes = {
      {kWord, {config_.vocab_size, C}},
      {kPosition, {config_.max_position_embeddings, C}},
      {kTokenType, {config_.type_vocab_size, C}},
      {kNormWeight, {C}},
      {kNormBias, {C}}};
  for (ParamShape& shape : encoder_->ParamShapes()) {
    shapes.push_back(std::move(shape));
  }
  if (config_.add_pooling_layer) {
    shapes.push_back({kPoolerWeight, {C, C}});
    shapes.push_back({kPoolerBias, {C}});
  }
  return shapes;
}

absl::Status BertModel::InitParams(const Context& ctx,
                                   ParamStore& store) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "BertModel::InitParams: only CPU contexts are supported");
  }
  const int64_t C = config_.hidden_size;
  uint64_t stream = 0;
  for (const ParamShape& shape : ParamShapes()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> value, store.Value(shape.name));
    const std::string& name = shape.name;
    const bool norm = name.find("LayerNorm.") != std::string::npos ||
                      name.find(".norm") != std::string::npos;
    const bool weight =
        name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
    if (norm || !weight) {
      std::fill(value.data(), value.data() + value.NumElements(),
                norm && weight ? 1.0f : 0.0f);
      continue;
    }
    FTX_RETURN_IF_ERROR(FillNormal(ctx, value, 0.0f, config_.initializer_range,
                                   {.seed = config_.seed, .stream = stream++}));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> word, store.Value(kWord));
  std::fill_n(word.data() + config_.pad_token_id * C, C, 0.0f);
  return absl::OkStatus();
}

absl::StatusOr<LengthMask> BertModel::CheckInputs(
    const BertInputs& inputs) const {
  constexpr absl::string_view op = "BertModel::Forward";
  const TensorView<const int32_t>& ids = inputs.input_ids;
  if (ids.rank() != 2 || ids.dim(0) < 1 || ids.dim(1) < 1 ||
      !ids.IsContiguous() || ids.data() == nullptr) {
    return BadInput(op, absl::StrCat("input_ids must be a contiguous "
                                     "non-empty [N, L] tensor, got ",
                                     ids.shape().ToString()));
  }
  const int64_t N = ids.dim(0), L = ids.dim(1);
  if (L > config_.max_position_embeddings) {
    return BadInput(op, absl::StrCat("input_ids has length ", L,
                                     " > max_position_embeddings ",
                                     config_.max_position_embeddings));
  }
  FTX_RETURN_IF_ERROR(CheckIds(op, "input_ids", ids, config_.vocab_size));
  const TensorView<const int32_t>& types = inputs.token_type_ids;
  if (types.data() != nullptr) {
    if (types.shape() != ids.shape() || !types.IsContiguous()) {
      return BadInput(op, absl::StrCat("token_type_ids must be contiguous "
                                       "and shaped like input_ids ",
                                       ids.shape().ToString(), ", got ",
                                       types.shape().ToString()));
    }
    FTX_RETURN_IF_ERROR(
        CheckIds(op, "token_type_ids", types, config_.type_vocab_size));
  }
  const TensorView<const int32_t>& mask = inputs.attention_mask;
  if (mask.data() != nullptr && !inputs.lengths.full()) {
    return BadInput(op, "give either lengths or attention_mask, not both");
  }
  LengthMask lengths = inputs.lengths;
  if (mask.data() != nullptr) {
    if (mask.shape() != ids.shape() || !mask.IsContiguous()) {
      return BadInput(op, absl::StrCat("attention_mask must be contiguous "
                                       "and shaped like input_ids ",
                                       ids.shape().ToString(), ", got ",
                                       mask.shape().ToString()));
    }
    lengths.lengths.assign(N, 0);
    for (int64_t n = 0; n < N; ++n) {
      const int32_t* row = mask.data() + n * L;
      int64_t ones = 0;
      while (ones < L && row[ones] == 1) ++ones;
      for (int64_t l = ones; l < L; ++l) {
        if (row[l] != 0) {
          return BadInput(
              op, absl::StrCat("attention_mask row ", n,
                               " must be ones followed by zeros (a padding "
                               "mask), got ",
                               row[l], " at position ", l));
        }
      }
      lengths.lengths[n] = ones;
    }
  }
  FTX_RETURN_IF_ERROR(lengths.Validate(op, "lengths", N, L));
  for (int64_t n = 0; !lengths.full() && n < N; ++n) {
    if (lengths.lengths[n] < 1) {
      return BadInput(op, absl::StrCat("sequence ", n,
                                       " has no position to attend "
                                       "(attention_mask / lengths of 0)"));
    }
  }
  return lengths;
}

absl::Status BertModel::Forward(const Context& ctx, ParamStore& store,
                                const BertInputs& inputs,
                                TensorView<float> hidden,
                                TensorView<float> pooled,
                                bool save_for_backward) {
  saved_ = false;
  constexpr absl::string_view op = "BertModel::Forward";
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only CPU contexts are supported"));
  }
  FTX_ASSIGN_OR_RETURN(LengthMask lengths, CheckInputs(inputs));
  const int64_t N = inputs.input_ids.dim(0), L = inputs.input_ids.dim(1);
  const int64_t C = config_.hidden_size;
  const Shape shape{N, L, C};
  if (hidden.shape() != shape || !hidden.IsContiguous() ||
      hidden.data() == nullptr) {
    return BadInput(op,
                    absl::StrCat("hidden must be contiguous ", shape.ToString(),
                                 ", got ", hidden.shape().ToString()));
  }
  const bool want_pooled = pooled.data() != nullptr;
  if (want_pooled) {
    if (!config_.add_pooling_layer) {
      return BadInput(op, "pooled needs add_pooling_layer");
    }
    if (pooled.shape() != Shape({N, C}) || !pooled.IsContiguous()) {
      return BadInput(
          op, absl::StrCat("pooled must be contiguous [", N, ", ", C, "], got ",
                           pooled.shape().ToString()));
    }
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> word, store.Value(kWord));
  FTX_ASSIGN_OR_RETURN(TensorView<float> position, store.Value(kPosition));
  FTX_ASSIGN_OR_RETURN(TensorView<float> token_type, store.Value(kTokenType));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight, store.Value(kNormWeight));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_bias, store.Value(kNormBias));

  ids_.assign(inputs.input_ids.data(), inputs.input_ids.data() + N * L);
  if (inputs.token_type_ids.data() != nullptr) {
    types_.assign(inputs.token_type_ids.data(),
                  inputs.token_type_ids.data() + N * L);
  } else {
    types_.assign(N * L, 0);
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> sum, Buffer(sum_, shape));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t row = n * L + l;
      const float* w = word.data() + ids_[row] * C;
      const float* p = position.data() + l * C;
      const float* t = token_type.data() + types_[row] * C;
      float* out = sum.data() + row * C;
      for (int64_t c = 0; c < C; ++c) out[c] = w[c] + t[c] + p[c];
    }
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded, Buffer(embedded_, shape));
  FTX_RETURN_IF_ERROR(
      norm_.Forward(ctx, norm_weight, norm_bias, sum, embedded, &norm_cache_));
  const bool dropout = inputs.training && config_.hidden_dropout_prob > 0.0f;
  if (dropout) {
    DropoutInto(ctx,
                {.p = config_.hidden_dropout_prob,
                 .seed = inputs.seed,
                 .stream = kEmbeddingDropoutStream},
                embedded.NumElements(), embedded.data(), embedded.data());
  }
  FtEncoderInputs encoder_inputs;
  encoder_inputs.lengths = lengths;
  encoder_inputs.training = inputs.training;
  encoder_inputs.seed = inputs.seed;
  FTX_RETURN_IF_ERROR(encoder_->Forward(ctx, store, embedded, encoder_inputs,
                                        hidden, save_for_backward));
  if (want_pooled) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> first, Buffer(first_, {N, C}));
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(hidden.data() + n * L * C, C, first.data() + n * C);
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> pre, Buffer(pre_pool_, {N, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> pooler_weight,
                         store.Value(kPoolerWeight));
    FTX_ASSIGN_OR_RETURN(TensorView<float> pooler_bias,
                         store.Value(kPoolerBias));
    FTX_RETURN_IF_ERROR(
        LinearForward(ctx, first, pooler_weight, pooler_bias, pre));
    FTX_RETURN_IF_ERROR(Activate(ctx, Activation::kTanh, pre, pooled));
  }
  batch_ = N;
  length_ = L;
  training_ = inputs.training;
  seed_ = inputs.seed;
  pooled_ = want_pooled;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status BertModel::Backward(const Context& ctx, ParamStore& store,
                                 TensorView<const float> d_hidden,
                                 TensorView<const float> d_pooled) {
  constexpr absl::string_view op = "BertModel::Backward";
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(op, " needs a Forward with save_for_backward"));
  }
  const int64_t N = batch_, L = length_, C = config_.hidden_size;
  const Shape shape{N, L, C};
  if (d_hidden.shape() != shape || !d_hidden.IsContiguous() ||
      d_hidden.data() == nullptr) {
    return BadInput(
        op, absl::StrCat("d_hidden must be contiguous ", shape.ToString(),
                         ", got ", d_hidden.shape().ToString()));
  }
  const bool want_pooled = d_pooled.data() != nullptr;
  if (want_pooled) {
    if (!pooled_) {
      return BadInput(op, "d_pooled needs a Forward that computed pooled");
    }
    if (d_pooled.shape() != Shape({N, C}) || !d_pooled.IsContiguous()) {
      return BadInput(op,
                      absl::StrCat("d_pooled must be contiguous [", N, ", ", C,
                                   "], got ", d_pooled.shape().ToString()));
    }
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_total, Buffer(d_total_, shape));
  std::copy_n(d_hidden.data(), d_hidden.NumElements(), d_total.data());
  if (want_pooled) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_pre, Buffer(d_pre_pool_, {N, C}));
    FTX_RETURN_IF_ERROR(ActivateBackward(
        ctx, Activation::kTanh, pre_pool_.view<float>(), d_pooled, d_pre));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_first, Buffer(d_first_, {N, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> pooler_weight,
                         store.Value(kPoolerWeight));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_pooler_weight,
                         store.Grad(kPoolerWeight));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_pooler_bias,
                         store.Grad(kPoolerBias));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, first_.view<float>(), pooler_weight,
                                       d_pre, d_first, d_pooler_weight,
                                       d_pooler_bias));
    for (int64_t n = 0; n < N; ++n) {
      float* row = d_total.data() + n * L * C;
      const float* add = d_first.data() + n * C;
      for (int64_t c = 0; c < C; ++c) row[c] += add[c];
    }
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_embedded,
                       Buffer(d_embedded_, shape));
  FTX_RETURN_IF_ERROR(encoder_->Backward(ctx, store, d_total, d_embedded));
  if (training_ && config_.hidden_dropout_prob > 0.0f) {
    DropoutInto(ctx,
                {.p = config_.hidden_dropout_prob,
                 .seed = seed_,
                 .stream = kEmbeddingDropoutStream},
                d_embedded.NumElements(), d_embedded.data(), d_embedded.data());
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight, store.Value(kNormWeight));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_weight,
                       store.Grad(kNormWeight));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_bias, store.Grad(kNormBias));
  // d_total is free again: it receives the gradient of the embedding sum.
  FTX_RETURN_IF_ERROR(norm_.Backward(ctx, norm_weight, norm_cache_,
                                     sum_.view<float>(), d_embedded, d_total,
                                     d_norm_weight, d_norm_bias));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_word, store.Grad(kWord));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_position, store.Grad(kPosition));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_token_type, store.Grad(kTokenType));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t row = n * L + l;
      const float* g = d_total.data() + row * C;
      float* p = d_position.data() + l * C;
      float* t = d_token_type.data() + types_[row] * C;
      for (int64_t c = 0; c < C; ++c) {
        p[c] += g[c];
        t[c] += g[c];
      }
      if (ids_[row] == config_.pad_token_id) continue;
      float* w = d_word.data() + ids_[row] * C;
      for (int64_t c = 0; c < C; ++c) w[c] += g[c];
    }
  }
  return absl::OkStatus();
}

}  // namespace ftx
