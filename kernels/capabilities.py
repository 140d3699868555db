"""What the Triton kernels serve, per op: the one statement of their dtypes, features and limits.

``fastattn.capabilities`` reads :data:`CAPABILITIES` (in the layout of the CUDA extension's
``_C.capabilities()``), and the kernels check their inputs against the same constants. This module
imports no Triton, so it can be read before ``TRITON_INTERPRET`` is set (Triton reads it once, at import).
"""

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The largest head dim of the attention and decode kernels: BLOCK_D = 256, the last row of their
# config tables (kernels/attention.py _GPU_CONFIGS).
MAX_HEAD_DIM = 256
MAX_VOCAB = 2**31 - 1  # sampling: token indices and counts are int32

CAPABILITIES = {
    "attention": {
        "dtypes": DTYPES,
        "features": (
            "dropout",
            "deterministic",
            "return_lse",
            "window",
            "softcap",
            "alibi_slopes",
            "sinks",
            "varlen",
        ),
        "max_head_dim": MAX_HEAD_DIM,
    },
    "kvcache": {
        "dtypes": DTYPES,
        "features": ("return_lse", "window", "softcap", "alibi_slopes", "paged"),
        "max_head_dim": MAX_HEAD_DIM,
    },
    "norm": {"dtypes": DTYPES, "features": ()},
    "sampling": {"dtypes": DTYPES, "features": (), "max_vocab": MAX_VOCAB},
}
