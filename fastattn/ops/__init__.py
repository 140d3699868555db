"""The op layer: custom ops (``torch.library``) per backend, their autograd, and the functional API."""
