"""Backends: what each one can run here, and how one is chosen for a call.

Four backends serve every op:

- ``cuda``:   our CUDA C++ kernels (the extension ``fastattn._C``), CUDA tensors;
- ``triton``: our Triton kernels (``fastattn.kernels``), CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` runs them through Triton's interpreter (slow; for testing);
- ``torch``:  PyTorch's own fused ops, where it has one;
- ``naive``:  the textbook reference (``fastattn.reference``).

Each op asks :func:`select` for a backend, handing it a function that lists, for a backend name, the
reasons that backend cannot serve the call (an empty list: it can). ``"auto"`` takes the first backend
of :data:`AUTO_ORDER` that can; an explicit backend that cannot raises ``NotImplementedError`` listing
every backend's reasons, so the error says both what went wrong and what would work.

The default for ``backend="auto"`` can be changed for a block (:func:`use_backend`, which holds for
the thread or asyncio task that enters it) or for the process (the environment variable
``FASTATTN_BACKEND``).

Triton is offered only once it has shown it works here: the first time the triton backend is
considered (outside of torch.compile's tracing), a tiny kernel (``fastattn.kernels.probe``) is compiled
and run; a Triton that is missing, fails at import or cannot compile is reported with its error by
``python -m fastattn env`` and every error message, and ``auto`` passes over it.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Iterator

import torch


class Backend(str, enum.Enum):
    """A backend. Each member is also its name as a str (``Backend.CUDA == "cuda"``), so a user may pass
    either, and it prints as its name."""

    CUDA = "cuda"
    TRITON = "triton"
    TORCH = "torch"
    NAIVE = "naive"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # a list of backends prints as the names a user would type
        return repr(self.value)

    __format__ = str.__format__  # f"{Backend.CUDA:<7}" pads the name, on every Python version
    __hash__ = str.__hash__  # equal to its name, so hashed as its name: {"cuda": x}[Backend.CUDA] is x


BACKENDS = tuple(Backend)
FUSED = (Backend.CUDA, Backend.TRITON)  # ours: fastattn's own kernels (CUDA C++, Triton)
# "auto" tries ours first, then PyTorch's, then the reference. Triton comes before CUDA until the two
# have been timed against each other on a GPU: the Triton kernels' numerics are tested on every run
# (on the CPU, through the interpreter), the CUDA kernels' only where a GPU is present.
AUTO_ORDER = (Backend.TRITON, Backend.CUDA, Backend.TORCH, Backend.NAIVE)
CHOICES = ("auto", *(backend.value for backend in Backend))  # what a backend= argument accepts
# Name -> member by one dict lookup: Backend(name) costs about 0.4 µs a call, and every op call makes
# several (`python -m fastattn bench overhead` holds the whole dispatch under 5% of a small call).
_MEMBERS = {backend.value: backend for backend in Backend}

# The innermost use_backend of the running thread or asyncio task (None: none is active). A context
# variable, not a global: two threads choosing different backends at once each keep their own.
_block_default: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastattn_backend", default=None)


def triton_interpreting() -> bool:
    """True when Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def parse(name: str, what: str = "backend") -> Backend | str:
    """``name`` as a :class:`Backend`, or ``"auto"``; anything else raises a ValueError naming ``what``."""
    if name == "auto":
        return "auto"
    backend = _MEMBERS.get(name) if isinstance(name, str) else None
    if backend is None:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, CHOICES))}, got {name!r}")
    return backend


def _import_error(module: str) -> str | None:
    """The error importing ``module`` raised, or None."""
    try:
        importlib.import_module(module)
    except Exception as error:  # an extension can fail with OSError (a missing .so) as well as ImportError
        return f"{type(error).__name__}: {error}"
    return None


# Worked out once, as fastattn is imported, so that no backend check imports anything later (an
# import inside a function that torch.compile traces breaks the graph). The extension's import error
# is recorded and shown, never swallowed. Triton is only looked for, not imported: it must be imported
# after TRITON_INTERPRET is set, which a program may do after importing fastattn.
EXTENSION_ERROR = _import_error("fastattn._C")
_C = importlib.import_module("fastattn._C") if EXTENSION_ERROR is None else None
TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_version() -> str | None:
    """The installed Triton's version, read from its metadata (importing nothing), or None."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def platform_reasons(name: str) -> list[str]:
    """Why backend ``name`` cannot run on this machine at all (empty when it can)."""
    backend = _MEMBERS.get(name) or Backend(name)  # an unknown name: Backend's ValueError
    if backend not in FUSED:
        return []
    # Only the triton backend depends on TRITON_INTERPRET: the environment lookup costs about 0.8 µs.
    return list(_platform_reasons(backend, backend is Backend.TRITON and triton_interpreting()))


_platform_reasons_found: dict[tuple[Backend, bool], tuple[str, ...]] = {}


def _platform_reasons(name: Backend, interpreting: bool) -> tuple[str, ...]:
    # Asked on every op call: worked out once per name (and TRITON_INTERPRET setting), as
    # torch.cuda.is_available() does not change within a process; uncached, this took 1-4 µs a call.
    key = (name, interpreting)
    if key not in _platform_reasons_found:
        if torch.compiler.is_compiling():
            # No import or kernel launch while torch.compile traces (either breaks the graph): the triton
            # probe waits for the first call outside of tracing.
            return _find_platform_reasons(name, interpreting, probe=False)
        _platform_reasons_found[key] = _find_platform_reasons(name, interpreting)
    return _platform_reasons_found[key]


def _find_platform_reasons(name: Backend, interpreting: bool, probe: bool = True) -> tuple[str, ...]:
    if name is Backend.CUDA:
        if EXTENSION_ERROR is not None:
            return (f"extension not built: {EXTENSION_ERROR}",)
        if not torch.cuda.is_available():
            return ("no CUDA GPU is available",)
    elif name is Backend.TRITON:
        if not TRITON_FOUND:
            return ("triton is not installed",)
        if not torch.cuda.is_available() and not interpreting:
            return ("no CUDA GPU is available (set TRITON_INTERPRET=1 to run the kernels on the CPU)",)
        error = _triton_probe_error() if probe else None
        if error is not None:
            return (f"triton does not work here: {error}",)
    return ()


def _triton_probe_error() -> str | None:
    """None when a tiny Triton kernel imports, compiles, runs and copies right here; else the error.

    Runs on the GPU, or on the CPU through the interpreter when there is none."""
    source = torch.arange(37, dtype=torch.float32, device="cuda" if torch.cuda.is_available() else "cpu")
    try:
        probe = importlib.import_module("fastattn.kernels.probe")
        copied = probe.copy(source)
    except Exception as error:  # an import can fail with more than ImportError, a compile with anything
        return f"{type(error).__name__}: {error}"
    if not torch.equal(copied, source):
        return "a test kernel copied a tensor wrongly"
    return None


def device_reasons(name: str, device: torch.device) -> list[str]:
    """Why backend ``name`` cannot run on tensors of ``device`` (empty when it can)."""
    backend = _MEMBERS.get(name) or Backend(name)
    if backend not in FUSED:
        return []
    reasons = platform_reasons(backend)
    if reasons:
        return reasons
    if backend is Backend.CUDA:
        if device.type != "cuda":
            return [f"needs CUDA tensors, got {device.type} tensors"]
        return list(_cuda_device_reasons(_device_index(device)))
    if backend is Backend.TRITON:
        if device.type == "cpu" and not triton_interpreting():
            return ["CPU tensors need TRITON_INTERPRET=1 (Triton's interpreter)"]
        if device.type not in ("cpu", "cuda"):
            return [f"needs CUDA tensors, got {device.type} tensors"]
    return []


# The tensor-core kernels use mma.sync with bfloat16 operands and cp.async: compute capability 8.0.
MIN_CUDA_CAPABILITY = (8, 0)

_cuda_device_reasons_found: dict[int, tuple[str, ...]] = {}


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _cuda_device_reasons(index: int) -> tuple[str, ...]:
    # Asked on every op call with CUDA tensors; a device's capability and the extension's kernel images
    # do not change within a process, so each device is asked once.
    if index not in _cuda_device_reasons_found:
        _cuda_device_reasons_found[index] = _find_cuda_device_reasons(index)
    return _cuda_device_reasons_found[index]


def _find_cuda_device_reasons(index: int) -> tuple[str, ...]:
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CUDA_CAPABILITY:
        major, minor = MIN_CUDA_CAPABILITY
        return (
            f"needs a GPU of compute capability {major}.{minor} or newer, cuda:{index} is "
            f"{capability[0]}.{capability[1]}",
        )
    error = _C.kernel_image_error(index)
    if error:
        return (
            f"the extension has no kernel for cuda:{index} (sm_{capability[0]}{capability[1]}): {error}; "
            "rebuild it with FASTATTN_CUDA_ARCHS including this architecture",
        )
    return ()


def shared_memory_limit(device: torch.device) -> int:
    """The most dynamic shared memory one block may use on CUDA ``device`` (opted in), in bytes."""
    return torch.cuda.get_device_properties(_device_index(device)).shared_memory_per_block_optin


def available_backends() -> list[Backend]:
    """The backends that can run on this machine, in the order ``auto`` tries them."""
    return [name for name in AUTO_ORDER if not platform_reasons(name)]


def default_backend() -> Backend | str:
    """What ``backend="auto"`` means right now: the innermost :func:`use_backend`, else
    ``FASTATTN_BACKEND``, else ``"auto"``."""
    block_default = _block_default.get()
    if block_default is not None:
        return block_default
    return parse(os.environ.get("FASTATTN_BACKEND", "auto"), "FASTATTN_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls that pass ``backend="auto"`` use ``name``, in this thread (or asyncio
    task) only: other threads keep their own choice.

    >>> with fastattn.use_backend("triton"):
    ...     out = fastattn.attention(q, k, v, causal=True)
    """
    token = _block_default.set(parse(name, "backend"))
    try:
        yield
    finally:
        _block_default.reset(token)


def select(op: str, backend: str, reasons: Callable[[Backend], list[str]]) -> Backend:
    """The backend that serves a call of ``op``.

    ``reasons(name)`` lists why backend ``name`` cannot serve this call. ``backend`` is what the caller
    asked for; ``"auto"`` defers to :func:`default_backend` and then to :data:`AUTO_ORDER`.
    """
    requested = parse(backend, "backend")
    if requested == "auto":
        requested = default_backend()
    candidates = AUTO_ORDER if requested == "auto" else (requested,)
    for name in candidates:
        if not reasons(name):
            return name
    every = {name: reasons(name) for name in BACKENDS}
    lines = [f"  {name}: {'; '.join(why) if why else 'can serve it'}" for name, why in every.items()]
    if requested == "auto":
        head = f"{op}: no backend can serve these inputs"
    else:
        head = f"{op}: backend '{requested}' cannot serve these inputs"
    raise NotImplementedError(head + ":\n" + "\n".join(lines))
