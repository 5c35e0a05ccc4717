// placeholder: being implemented
#include "backend/cuda/kernels.h"
