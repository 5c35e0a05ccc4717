// The built-in calibration prompts of `kiln build --quant` (used when no --calib file is given).
#pragma once

#include <string>
#include <vector>

namespace kiln {

// Varied English text written for kiln (stories, explanations, dialogue, instructions, code, lists,
// numbers, chat turns): activations that look like what a model serves. Not the perplexity text.
const std::vector<std::string>& builtin_calibration_prompts();

}  // namespace kiln
