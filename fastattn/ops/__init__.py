"""The op layer: custom ops (``torch.library``) per backend, their autograd, and the functional API."""


def refuse_double_backward(backward_op, op: str) -> None:
    """Registers, as the autograd formula of a fused backward op, a clear error: its gradient is not
    implemented, so differentiating twice (``create_graph=True``, then backward through the gradients,
    as a gradient penalty does) needs a backend that PyTorch differentiates."""

    def refuse(ctx, *grads):
        raise NotImplementedError(
            f"{op}: the fused kernels' backward cannot be differentiated again (double backward); "
            "use backend='torch' or backend='naive' for this computation"
        )

    backward_op.register_autograd(refuse)
