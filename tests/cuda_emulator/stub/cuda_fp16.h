// The CUDA header cuda_fp16.h on a machine without CUDA: the host emulation provides what the kernels use.
#pragma once
#include "../fakecuda.h"
