#include "format/model_config.h"

#include <cmath>

namespace kiln {
namespace {

// Caps far above any released model (Llama-3.1-405B: hidden 16384, intermediate 53248, 126 layers,
// vocab 128256); they keep later size products such as vocab * hidden * bytes inside int64 and
// catch corrupt headers early.
constexpr int64_t kMaxWidth = int64_t{1} << 20;       // hidden, intermediate, head_dim
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxPositions = int64_t{1} << 30;

Status check_range(const char* field, int64_t value, int64_t max) {
  if (value <= 0 || value > max) return make_error("{}: expected 1..{}, found {}", field, max, value);
  return Status::Ok();
}

}  // namespace

Status ModelConfig::validate() const {
  KILN_TRY(check_range("vocab_size", vocab_size, kMaxVocab));
  KILN_TRY(check_range("hidden_size", hidden_size, kMaxWidth));
  KILN_TRY(check_range("intermediate_size", intermediate_size, kMaxWidth));
  KILN_TRY(check_range("num_layers", num_layers, kMaxLayers));
  KILN_TRY(check_range("num_heads", num_heads, kMaxHeads));
  KILN_TRY(check_range("num_kv_heads", num_kv_heads, kMaxHeads));
  KILN_TRY(check_range("head_dim", head_dim, kMaxWidth));
  KILN_TRY(check_range("max_position_embeddings", max_position_embeddings, kMaxPositions));
  if (num_heads % num_kv_heads != 0) {
    return make_error("num_heads {} is not a multiple of num_kv_heads {} (grouped-query attention)", num_heads,
                      num_kv_heads);
  }
  // RoPE rotates pairs of elements, so each head needs an even width.
  if (head_dim % 2 != 0) return make_error("head_dim: expected an even number (RoPE rotates pairs), found {}", head_dim);
  if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps)) {
    return make_error("rms_norm_eps: expected a positive finite number, found {}", rms_norm_eps);
  }
  if (!(rope_theta > 0.0) || !std::isfinite(rope_theta)) {
    return make_error("rope_theta: expected a positive finite number, found {}", rope_theta);
  }
  if (rope_scaling != RopeScaling::None && (!(rope_factor > 0.0) || !std::isfinite(rope_factor))) {
    return make_error("rope factor: expected a positive finite number, found {}", rope_factor);
  }
  if (rope_scaling == RopeScaling::Llama3) {
    // transformers' _compute_llama3_parameters divides by (high_freq_factor - low_freq_factor)
    // and by both factors.
    if (!(rope_low_freq_factor > 0.0) || !(rope_high_freq_factor > rope_low_freq_factor) ||
        !std::isfinite(rope_high_freq_factor)) {
      return make_error("llama3 rope: expected 0 < low_freq_factor < high_freq_factor, found {} and {}",
                        rope_low_freq_factor, rope_high_freq_factor);
    }
    if (rope_original_max_position <= 0) {
      return make_error("llama3 rope: original_max_position_embeddings: expected > 0, found {}",
                        rope_original_max_position);
    }
  }
  if (bos_token_id < -1 || bos_token_id >= vocab_size) {
    return make_error("bos_token_id: expected -1 (none) or 0..{}, found {}", vocab_size - 1, bos_token_id);
  }
  for (const int64_t eos : eos_token_ids) {
    if (eos < 0 || eos >= vocab_size) {
      return make_error("eos_token_id: expected 0..{}, found {}", vocab_size - 1, eos);
    }
  }
  return Status::Ok();
}

}  // namespace kiln
