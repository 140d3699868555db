"""Triton kernels and their launchers, installed as ``fastattn.kernels``.

One module per op. Launchers allocate outputs, pick tile sizes and launch; they know nothing of
autograd or backend selection (that is ``fastattn.ops``).
"""
