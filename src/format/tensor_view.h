// Moved to common/: engines and the build side share it.
#pragma once
#include "common/tensor_view.h"
