"""``python -m fastattn train {gpt,bert,seq2seq,vae}``: trains a reference model on data shipped with
the package, with a progress bar and held-out metrics, then shows what it learned.

- ``gpt``: a character-level GPT on tiny Shakespeare (nanoGPT's CPU "baby" config); held-out loss in
  nats per character; generated text.
- ``bert``: a character-level BERT on tiny Shakespeare, masked-LM pre-training; masked-character
  accuracy against always guessing the most frequent character; filled-in masks.
- ``seq2seq``: the encoder–decoder Transformer translating numerals to English words; exact match on
  held-out numbers; translations.
- ``vae``: the patch-Transformer VAE on scikit-learn's 8×8 digits; held-out reconstruction error
  against predicting the mean image, KL; a PNG of reconstructions, prior samples and an interpolation.

Every task uses AdamW with a linear warm-up and a cosine decay to a tenth of the peak learning rate
over all its steps (those of a loaded checkpoint included), and clips gradients at norm 1.
Each run writes ``metrics.json`` and ``samples.txt`` (``vae.png`` for the VAE) to ``--out``.
``gpt`` also trains on several processes started by torchrun (``--parallel``: :mod:`.parallel`).
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import dataclasses
import json
import math
import os
import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastattn import backends
from fastattn.data import CharTokenizer, NumberTranslation, load_digits, number_to_words, tiny_shakespeare
from fastattn.data.digits import MAX_INTENSITY
from fastattn.usage import UsageError, output_file, positive_number, require_extra, whole_number

from . import parallel
from .bert import BERT, IGNORE_INDEX, BERTConfig, mask_tokens
from .gpt import GPT, GPTConfig
from .transformer import Transformer, TransformerConfig
from .vae import VAE, VAEConfig

EVAL_SEED = 1234  # held-out batches and masks are drawn from this seed, the same in every evaluation


@dataclass(frozen=True)
class Recipe:
    """A task's training defaults (``--steps``, ``--batch-size`` and ``--lr`` override the first three)."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    eval_interval: int
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


def learning_rate(step: int, total_steps: int, recipe: Recipe, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * peak``."""
    if step < recipe.warmup_steps:
        return peak * (step + 1) / recipe.warmup_steps
    progress = min(1.0, (step - recipe.warmup_steps) / max(1, total_steps - recipe.warmup_steps))
    return peak * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Task(abc.ABC):
    """One trainable model and its data. Subclasses set ``name``, ``summary``, ``recipe``,
    ``model_class`` and ``config_class`` and implement the abstract methods."""

    name: str
    summary: str
    recipe: Recipe
    model_class: type[nn.Module]
    config_class: type
    config: object  # the model's config, set before batches are drawn (by :func:`run`)
    batch_size: int  # the training (and evaluation) batch size, set with it

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @abc.abstractmethod
    def default_config(self):
        """The model's config when no checkpoint is loaded."""

    @abc.abstractmethod
    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """A training batch drawn with ``generator``, on ``self.device``."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], step: int, total_steps: int) -> Tensor:
        """The training loss of ``batch`` at ``step`` of ``total_steps``."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, *, full: bool) -> dict[str, float]:
        """Held-out metrics (model in eval mode, no gradients); ``full=False``: a quicker estimate."""

    @abc.abstractmethod
    def show(self, model: nn.Module, out_dir: Path, seed: int) -> str:
        """What the model learned, as text to print (and to write to ``samples.txt``)."""


def format_metrics(metrics: dict[str, float]) -> str:
    """One line for the progress log."""
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())


# -------------------------------------------------------------------------------------------- gpt
class GPTTask(Task):
    name = "gpt"
    summary = "character-level GPT on tiny Shakespeare; held-out loss (nats/char) and generated text"
    recipe = Recipe(steps=2000, batch_size=12, learning_rate=1e-3, warmup_steps=100, eval_interval=250)
    model_class, config_class = GPT, GPTConfig
    EVAL_BATCHES = 200

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        text = tiny_shakespeare()
        self.tokenizer = CharTokenizer(text)
        data = self.tokenizer.encode(text)
        split = int(0.9 * len(data))  # nanoGPT's split: the last 10% is held out
        self.train_data, self.val_data = data[:split], data[split:]

    def default_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=self.tokenizer.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)

    def _windows(self, data: Tensor, batch_size: int, block_size: int, generator: torch.Generator):
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)  # (B,)
        index = starts[:, None] + torch.arange(block_size + 1)  # (B, N + 1)
        windows = data[index].to(self.device)
        return windows[:, :-1], windows[:, 1:]  # inputs, next characters: (B, N) each

    def batch(self, batch_size, generator):
        return self._windows(self.train_data, batch_size, self.config.block_size, generator)

    def loss(self, model, batch, step, total_steps):
        return model(*batch)[1]

    @torch.no_grad()
    def evaluate(self, model, *, full):
        generator = torch.Generator().manual_seed(EVAL_SEED)
        count = self.EVAL_BATCHES if full else self.EVAL_BATCHES // 10
        losses = [
            model(*self._windows(self.val_data, self.batch_size, self.config.block_size, generator))[1].item()
            for _ in range(count)
        ]
        return {"loss": sum(losses) / len(losses)}  # nats per character

    def show(self, model, out_dir, seed):
        prompt = self.tokenizer.encode("\n")[None].to(self.device)  # (1, 1)
        out = model.generate(prompt, 500, temperature=0.8, top_p=0.95, seed=seed)
        return "generated (temperature 0.8, top-p 0.95):\n" + self.tokenizer.decode(out[0, 1:])


# ------------------------------------------------------------------------------------------- bert
class BERTTask(Task):
    name = "bert"
    summary = "character-level BERT on tiny Shakespeare; masked-character accuracy and filled-in masks"
    recipe = Recipe(steps=2500, batch_size=32, learning_rate=1e-3, warmup_steps=200, eval_interval=500)
    model_class, config_class = BERT, BERTConfig
    SPECIALS = ["[PAD]", "[CLS]", "[MASK]"]
    MIN_LENGTH = 16  # characters per sequence are drawn from MIN_LENGTH .. max_seq_len - 1 (then padded)
    EVAL_BATCHES = 50

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        text = tiny_shakespeare()
        self.tokenizer = CharTokenizer(text, specials=self.SPECIALS)
        data = self.tokenizer.encode(text)
        split = int(0.9 * len(data))
        self.train_data, self.val_data = data[:split], data[split:]
        counts = torch.bincount(self.train_data, minlength=self.tokenizer.vocab_size)
        self.most_frequent = int(counts.argmax())  # the baseline's guess (a space)

    def default_config(self) -> BERTConfig:
        pad, cls, mask = (self.tokenizer.stoi[s] for s in self.SPECIALS)
        return BERTConfig(
            vocab_size=self.tokenizer.vocab_size,
            max_seq_len=64,
            n_layer=4,
            n_head=4,
            d_model=128,
            d_ff=512,
            dropout=0.0,
            pad_id=pad,
            cls_id=cls,
            mask_id=mask,
        )

    def _sequences(self, data: Tensor, batch_size: int, generator: torch.Generator) -> Tensor:
        """``[CLS]`` + a random stretch of text of random length, right-padded: int64 ``(B, max_seq_len)``."""
        width = self.config.max_seq_len - 1
        starts = torch.randint(len(data) - width, (batch_size,), generator=generator)  # (B,)
        lengths = torch.randint(self.MIN_LENGTH, width + 1, (batch_size,), generator=generator)  # (B,)
        text = data[starts[:, None] + torch.arange(width)]  # (B, N - 1)
        text = text.masked_fill(torch.arange(width) >= lengths[:, None], self.config.pad_id)
        cls = torch.full((batch_size, 1), self.config.cls_id, dtype=torch.int64)
        return torch.cat([cls, text], dim=1)  # (B, N)

    def _masked(self, tokens: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        maskable = tokens >= len(self.SPECIALS)  # real characters only
        inputs, labels = mask_tokens(
            tokens,
            mask_id=self.config.mask_id,
            vocab_size=self.tokenizer.vocab_size,
            maskable=maskable,
            generator=generator,
            first_regular_id=len(self.SPECIALS),
        )
        return inputs.to(self.device), labels.to(self.device)

    def batch(self, batch_size, generator):
        return self._masked(self._sequences(self.train_data, batch_size, generator), generator)

    def loss(self, model, batch, step, total_steps):
        return model(*batch)[1]

    @torch.no_grad()
    def evaluate(self, model, *, full):
        generator = torch.Generator().manual_seed(EVAL_SEED)
        correct = baseline = total = 0
        loss_sum = 0.0
        for _ in range(self.EVAL_BATCHES if full else self.EVAL_BATCHES // 5):
            inputs, labels = self._masked(self._sequences(self.val_data, self.batch_size, generator), generator)
            logits, loss = model(inputs, labels)
            chosen = labels != IGNORE_INDEX
            predicted = logits.argmax(dim=-1)
            correct += int((predicted == labels)[chosen].sum())
            baseline += int((labels == self.most_frequent)[chosen].sum())
            total += int(chosen.sum())
            loss_sum += loss.item() * int(chosen.sum())
        return {
            "masked_accuracy": correct / total,
            "baseline_accuracy": baseline / total,
            "ratio_to_baseline": correct / max(baseline, 1),
            "masked_loss": loss_sum / total,
        }

    def _printable(self, ids: Tensor) -> str:
        return self.tokenizer.decode(ids).replace("\n", "|")  # one line per sequence

    def show(self, model, out_dir, seed):
        lines = ["masked characters (each a [MASK], shown as _) and the model's fill-ins, held-out text:"]
        generator = torch.Generator().manual_seed(seed)
        width = self.config.max_seq_len - 1
        for _ in range(4):
            start = int(torch.randint(len(self.val_data) - width, (), generator=generator))
            text = self.val_data[start : start + width]  # (N - 1,)
            chosen = torch.rand(width, generator=generator) < 0.15
            masked = text.masked_fill(chosen, self.config.mask_id)
            tokens = torch.cat([torch.tensor([self.config.cls_id]), masked])[None].to(self.device)  # (1, N)
            predicted = model(tokens)[0][0, 1:].argmax(dim=-1).cpu()  # (N - 1,)
            filled = torch.where(chosen, predicted, text)
            right = int((predicted == text)[chosen].sum())
            lines += [
                f"  original {self._printable(text)}",
                f"  masked   {self._printable(masked).replace('[MASK]', '_')}",
                f"  filled   {self._printable(filled)}   ({right}/{int(chosen.sum())} right)",
                "",
            ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- seq2seq
class Seq2SeqTask(Task):
    name = "seq2seq"
    summary = "encoder-decoder Transformer, numerals to English words; exact match on held-out numbers"
    recipe = Recipe(
        steps=3000,
        batch_size=64,
        learning_rate=1e-3,
        warmup_steps=300,
        eval_interval=500,
        betas=(0.9, 0.98),
        weight_decay=0.01,
    )
    model_class, config_class = Transformer, TransformerConfig
    EXAMPLES = [0, 15, 100, 1234, 70007, 110011, 999999]

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.data = NumberTranslation(max_number=10**6, num_test=1000, seed=0)

    def default_config(self) -> TransformerConfig:
        return TransformerConfig(
            source_vocab_size=len(self.data.source_vocab),
            target_vocab_size=len(self.data.target_vocab),
            d_model=128,
            n_heads=4,
            d_ff=512,
            n_encoder_layers=3,
            n_decoder_layers=3,
            dropout=0.1,
            label_smoothing=0.1,
            max_len=32,
            pad_id=NumberTranslation.PAD,
        )

    def batch(self, batch_size, generator):
        _, source, target = self.data.train_batch(batch_size, generator)
        return source.to(self.device), target.to(self.device)

    def loss(self, model, batch, step, total_steps):
        source, target = batch
        return model(source, target[:, :-1], target[:, 1:])[1]  # predict each next word

    def translate(self, model: Transformer, numbers: list[int]) -> list[str]:
        source = self.data.encode_source(numbers).to(self.device)
        out = model.generate(
            source,
            bos_id=NumberTranslation.BOS,
            eos_id=NumberTranslation.EOS,
            max_new_tokens=self.data.max_target_len - 1,
        )
        return [self.data.decode_target(row) for row in out.cpu()]

    @torch.no_grad()
    def evaluate(self, model, *, full):
        numbers = self.data.test_numbers if full else self.data.test_numbers[:200]
        translations = self.translate(model, numbers)
        right = sum(t == number_to_words(n) for n, t in zip(numbers, translations, strict=True))
        return {"exact_match": right / len(numbers)}

    def show(self, model, out_dir, seed):
        numbers = self.EXAMPLES + self.data.test_numbers[:8]
        lines = ["translations (greedy), hand-picked then held-out numbers:"]
        for n, translation in zip(numbers, self.translate(model, numbers), strict=True):
            mark = "ok" if translation == number_to_words(n) else f"WRONG (expected: {number_to_words(n)})"
            lines.append(f"  {n:>7} -> {translation}   {mark}")
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------- vae
class VAETask(Task):
    name = "vae"
    summary = "patch-Transformer VAE on the 8x8 digits; reconstruction error, KL, and a PNG"
    recipe = Recipe(
        steps=3000, batch_size=64, learning_rate=1e-3, warmup_steps=100, eval_interval=500, weight_decay=0.0
    )
    model_class, config_class = VAE, VAEConfig
    NUM_TEST = 297
    KL_WARMUP_FRACTION = 0.3  # beta rises linearly from 0 to config.beta over this fraction of the steps

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        images, labels = load_digits()
        images = images.float().div(MAX_INTENSITY)[:, None]  # (1797, 1, 8, 8) in [0, 1]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        test, train = order[: self.NUM_TEST], order[self.NUM_TEST :]
        self.train_images, self.test_images = images[train].to(device), images[test].to(device)
        self.test_labels = labels[test]
        self.mean_image = self.train_images.mean(dim=0)  # (1, 8, 8): the baseline's prediction

    def default_config(self) -> VAEConfig:
        return VAEConfig()

    def batch(self, batch_size, generator):
        index = torch.randint(len(self.train_images), (batch_size,), generator=generator)
        return (self.train_images[index.to(self.device)],)

    def beta(self, step: int, total_steps: int) -> float:
        warmup = max(1, int(self.KL_WARMUP_FRACTION * total_steps))
        return self.config.beta * min(1.0, step / warmup)

    def loss(self, model, batch, step, total_steps):
        return model(batch[0], beta=self.beta(step, total_steps)).loss

    @torch.no_grad()
    def evaluate(self, model, *, full):
        images = self.test_images
        mu, logvar = model.encode(images)
        reconstruction = torch.sigmoid(model.decode(mu))  # decoded from the posterior mean
        error = F.mse_loss(reconstruction, images).item()
        baseline = F.mse_loss(self.mean_image.expand_as(images), images).item()
        noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(EVAL_SEED)).to(mu)
        out = model(images, beta=1.0, noise=noise)
        return {
            "reconstruction_mse": error,
            "mean_image_mse": baseline,
            "mse_ratio": error / baseline,
            "kl": out.kl.item(),
            "negative_elbo": out.loss.item(),
        }

    def show(self, model, out_dir, seed):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        generator = torch.Generator().manual_seed(seed)
        originals = self.test_images[:10]
        reconstructions = torch.sigmoid(model.decode(model.encode(originals)[0]))
        samples = model.sample(10, generator=generator)
        first = int((self.test_labels == 1).nonzero()[0])
        last = int((self.test_labels == 7).nonzero()[0])
        path = model.interpolate(self.test_images[first], self.test_images[last], 10)
        rows = [
            ("held-out digits", originals),
            ("reconstructions", reconstructions),
            ("samples from the prior", samples),
            ("interpolation 1 -> 7", path),
        ]
        figure, axes = plt.subplots(len(rows), 10, figsize=(10, 1.25 * len(rows) + 0.5))
        for row, (title, images) in enumerate(rows):
            axes[row, 0].set_title(title, loc="left", fontsize=9)
            for column in range(10):
                axes[row, column].imshow(images[column, 0].cpu().numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)
                axes[row, column].axis("off")
        figure.suptitle("fastattn VAE on 8x8 digits")
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / "vae.png"
        figure.savefig(png, dpi=100)
        plt.close(figure)
        return f"wrote {png}: held-out digits, their reconstructions, 10 prior samples, an interpolation"


TASKS: dict[str, type[Task]] = {task.name: task for task in (GPTTask, BERTTask, Seq2SeqTask, VAETask)}


# ---------------------------------------------------------------------------------- the training loop
CHECKPOINT_NAME = "checkpoint.pt"  # in --out: written every --checkpoint-every steps, at the end and on interruption
# A save of these models (at most a few million parameters with their AdamW moments) takes well under a
# second on a CPU; 200 steps are seconds (gpt, vae) to half a minute (bert, seq2seq) of CPU training.
DEFAULT_CHECKPOINT_EVERY = 200
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of ``python -m fastattn train``."""


def save_checkpoint(
    path: str | os.PathLike, task: Task, model: nn.Module, optimizer, step: int, resume: dict | None = None
) -> None:
    """Writes the task name, the model's config, its weights, the optimizer's state and the step, and
    ``resume`` (what :func:`run` needs to continue the run exactly), atomically: the file is written
    and flushed to disk under a temporary name in the same folder, then renamed over ``path``, so that
    ``path`` always holds a whole checkpoint, the previous one until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "task": task.name,
        "config": dataclasses.asdict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
    }
    if resume is not None:
        state["resume"] = resume
    write_checkpoint(path, state)


def write_checkpoint(path: Path, state: dict) -> None:
    """Writes ``state`` (a checkpoint's dictionary) to ``path`` atomically (see :func:`save_checkpoint`)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # never a checkpoint's name
    try:
        with open(temporary, "xb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def load_checkpoint(
    path: str | os.PathLike, device: torch.device, keys: frozenset = frozenset({"model", "optimizer"})
) -> dict:
    """The dictionary :func:`save_checkpoint` wrote, tensors on ``device``; :class:`CheckpointError`
    when ``path`` is missing, truncated, corrupt or not such a checkpoint. ``keys``: what it must hold
    besides the task, config and step (a --parallel run's settings file holds no tensors)."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as error:  # a truncated zip, garbage bytes, an empty file: each fails differently
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt? {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}); use an earlier checkpoint or train afresh"
        ) from None
    if not isinstance(checkpoint, dict) or not {"task", "config", "step", *keys} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a checkpoint of `python -m fastattn train`")
    return checkpoint


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary files of saves that were killed before their rename (kill -9): never a checkpoint."""
    for stale in directory.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        stale.unlink(missing_ok=True)


def _check_writable(directory: Path) -> None:
    """Raises UsageError naming --out when nothing can be written in ``directory`` (before any step)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise UsageError(f"argument --out: cannot write to {directory}: {error.strerror or error}") from None


class _Interruption:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request to stop after the current step, so that the
    checkpoint written then holds a whole step; a second signal stops at once, as usual, unless
    ``defer_repeats``: torchrun passes the Ctrl-C its processes already received on to them once more,
    and kills them itself when they take longer than its shutdown timeout (30 s) to save and exit."""

    def __init__(self, defer_repeats: bool = False) -> None:
        self.signal: signal.Signals | None = None
        self._previous = {}
        self._defer_repeats = defer_repeats

    def _handle(self, number, frame) -> None:
        self.signal = signal.Signals(number)
        if not self._defer_repeats:
            for other, handler in self._previous.items():  # a second Ctrl-C or SIGTERM is not deferred
                signal.signal(other, handler)

    def __enter__(self) -> _Interruption:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {number: signal.signal(number, self._handle) for number in EXIT_STATUS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _rng_states(generator: torch.Generator, device: torch.device) -> dict:
    states = {"batches": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _restore_rng_states(states: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(states["batches"].cpu())
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def make_optimizer(model: nn.Module, recipe: Recipe, peak_lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or position vectors)."""
    parameters = list(model.parameters())  # each tied weight once
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=peak_lr, betas=recipe.betas)


def _load_for(flag: str, path: str, task: Task, device: torch.device, parallel_mode: str | None) -> dict:
    """The checkpoint ``path`` given to ``flag`` (--load or --resume), or a UsageError saying what is wrong.
    A --parallel run's checkpoint is a folder: only the settings are read here, the tensors once the
    model is distributed (:func:`parallel.load`)."""
    if os.path.isdir(path):
        if not parallel.is_checkpoint_folder(path):
            raise UsageError(f"argument {flag}: {path} is a folder but not the checkpoint of a --parallel run")
        if parallel_mode is None:
            raise UsageError(
                f"argument {flag}: {path} is the checkpoint of a --parallel run; continue it with --parallel "
                "(on any number of processes: one needs no torchrun)"
            )
        read, needed = Path(path) / parallel.SETTINGS_NAME, frozenset()
    else:
        read, needed = path, frozenset({"model", "optimizer"})
    try:
        checkpoint = load_checkpoint(read, device, needed)
    except CheckpointError as error:
        raise UsageError(f"argument {flag}: {error}") from None
    if checkpoint["task"] != task.name:
        raise UsageError(f"argument {flag}: {path} holds a {checkpoint['task']} checkpoint, not {task.name}")
    if flag == "--resume" and "resume" not in checkpoint:
        raise UsageError(
            f"argument --resume: {path} does not hold the state of a run in progress; --load starts from its weights"
        )
    return checkpoint


def _train_device(args: argparse.Namespace) -> torch.device:
    """--device, or the default; under --parallel, this process's: cuda:LOCAL_RANK or the CPU."""
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.parallel:
        return device
    if device.index is not None:
        raise UsageError(
            f"argument --device: with --parallel each process takes cuda:LOCAL_RANK; give cuda, not {device}"
        )
    device = parallel.local_device(device.type)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise UsageError(
            f"argument --device: process {device.index} of this machine needs {device}, and the machine has "
            f"{torch.cuda.device_count()} GPU(s); start at most that many processes a machine (--nproc-per-node)"
        )
    return device


def run(args: argparse.Namespace) -> int:
    """The ``train`` command (see :func:`add_arguments`). Returns the exit status: 0, or 130 / 143 when
    SIGINT / SIGTERM stopped the run (after saving it)."""
    try:
        return _run(args)
    except UsageError:
        if parallel.launched_rank() != 0:  # every process finds the same fault, before they connect
            return 2  # and the first one reports it
        raise
    finally:
        if args.parallel:
            parallel.disconnect()


def _run(args: argparse.Namespace) -> int:
    from ..progress import progress_bar

    if args.parallel and args.model != "gpt":
        raise UsageError(f"argument --parallel: only gpt trains on several processes, not {args.model}")
    if not args.parallel and parallel.launched_world_size() > 1:
        raise UsageError(
            f"argument --parallel: torchrun started {parallel.launched_world_size()} processes; say how they "
            f"share each step: --parallel {', '.join(parallel.MODES)}"
        )
    if args.model == "vae":
        require_extra("matplotlib", "plot", "model", "train vae, which draws its samples as a PNG,")
    is_main = parallel.launched_rank() == 0
    say = print if is_main else lambda *_: None
    device = _train_device(args)
    if args.backend != "auto" and backends.device_reasons(args.backend, device):
        reasons = "; ".join(backends.device_reasons(args.backend, device))
        raise UsageError(f"argument --backend: {args.backend} cannot run on {device}: {reasons}")
    task = TASKS[args.model](device)
    recipe = task.recipe
    out_dir = Path(args.out or os.path.join("runs", f"train-{task.name}"))
    _check_writable(out_dir)
    checkpoint_path = out_dir / (parallel.CHECKPOINT_NAME if args.parallel else CHECKPOINT_NAME)

    checkpoint, settings = None, None
    if args.resume:
        given = {"--load": args.load, "--steps": args.steps, "--batch-size": args.batch_size, "--lr": args.lr}
        for flag, value in {**given, "--seed": args.seed}.items():
            if value is not None:
                raise UsageError(f"argument {flag}: not with --resume, which continues the run with its own settings")
        checkpoint = _load_for("--resume", args.resume, task, device, args.parallel)
        settings = checkpoint["resume"]
    elif args.load:
        checkpoint = _load_for("--load", args.load, task, device, args.parallel)
    seed = settings["seed"] if settings else args.seed or 0
    torch.manual_seed(seed)
    task.config = task.config_class(**checkpoint["config"]) if checkpoint else task.default_config()
    task.batch_size = settings["batch_size"] if settings else args.batch_size or recipe.batch_size
    world = None
    if args.parallel:
        try:
            parallel.check(
                args.parallel,
                parallel.launched_world_size(),
                task.batch_size,
                "--resume" if settings else "--batch-size",
                task.config.block_size,
                task.config.dropout,
                args.backend,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
        world = parallel.connect(args.parallel, device)
    if is_main:
        _remove_stale_temporaries(out_dir)
        if world is not None:
            loaded = args.resume or args.load
            parallel.remove_stale_saves(out_dir, keep=Path(loaded) if loaded and os.path.isdir(loaded) else None)

    unwrapped = task.model_class(task.config, backend=args.backend).to(device)
    model = parallel.distribute(unwrapped, world) if world else unwrapped
    peak_lr = settings["peak_lr"] if settings else args.lr or recipe.learning_rate
    optimizer = make_optimizer(model, recipe, peak_lr)
    generator = torch.Generator().manual_seed(seed)
    start_step, smoothed = 0, None
    if checkpoint is not None:
        if world is None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        elif "model" in checkpoint:  # a single-file checkpoint, read whole by every process
            parallel.load_whole(checkpoint, unwrapped, optimizer)
        else:
            parallel.load(args.resume or args.load, unwrapped, optimizer)
        start_step = checkpoint["step"]
        say(f"{'resumed' if settings else 'loaded'} {args.resume or args.load} (step {start_step})")
    if settings:
        total_steps, smoothed = settings["total_steps"], settings["smoothed_loss"]
        _restore_rng_states(settings["rng"], generator, device)
    else:
        total_steps = start_step + (recipe.steps if args.steps is None else args.steps)
    steps = total_steps - start_step
    parameters = sum(p.numel() for p in model.parameters())
    say(f"train {task.name}: {task.summary}")
    say(
        f"{parameters / 1e6:.2f}M parameters, {steps} steps of batch {task.batch_size}, peak lr {peak_lr:g}, "
        f"backend {args.backend}, device {device.type if world else device}, seed {seed}"
        + (f", {world.describe(task.batch_size, task.config.block_size)}" if world else "")
    )

    def resume_state() -> dict:
        return {
            "total_steps": total_steps,
            "batch_size": task.batch_size,
            "peak_lr": peak_lr,
            "seed": seed,
            "smoothed_loss": smoothed,
            "rng": _rng_states(generator, device),
        }

    def save(path: Path, step: int) -> None:
        if world is None:
            save_checkpoint(path, task, model, optimizer, step, resume_state())
        else:
            run_settings = {"task": task.name, "config": dataclasses.asdict(task.config), "step": step}
            parallel.save(path, world, unwrapped, optimizer, {**run_settings, "resume": resume_state()})

    replica = parallel.replica(unwrapped, device) if world and is_main else None

    def held_out(full: bool) -> dict[str, float] | None:
        """The task's held-out metrics, on the main process under --parallel (None on the others)."""
        if world is None:
            model.eval()
            metrics = task.evaluate(model, full=full)
            model.train()
            return metrics
        weights, _ = parallel.gather(unwrapped, None, world)
        if replica is None:
            return None
        replica.load_state_dict(weights)
        return task.evaluate(replica.eval(), full=full)

    model.train()
    started = time.perf_counter()
    progress = progress_bar(
        range(start_step, total_steps),
        desc=f"train {task.name}",
        unit="step",
        dynamic_ncols=True,
        disable=steps == 0 or not is_main,
    )
    done, loss_value, stop = start_step, None, None  # steps completed, the last one's loss, the signal that stopped
    with _Interruption(defer_repeats=world is not None) as interruption:
        for step in progress:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, recipe, peak_lr)
            batch = task.batch(task.batch_size, generator)
            loss = task.loss(model, world.share(batch) if world else batch, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world:
                world.reduce_gradients(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            loss_value = world.mean(loss) if world else loss.item()
            smoothed = loss_value if smoothed is None else 0.95 * smoothed + 0.05 * loss_value
            progress.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
            done = step + 1
            if done % recipe.eval_interval == 0 and done < total_steps:
                metrics = held_out(full=False)
                if is_main:
                    progress.write(f"step {done}: train loss {smoothed:.4f}; held-out: {format_metrics(metrics)}")
            stop = world.stop_signal(interruption.signal) if world else interruption.signal
            if stop is not None:
                break
            if done % args.checkpoint_every == 0 and done < total_steps:
                save(checkpoint_path, done)
        progress.close()
        if steps > 0:
            save(checkpoint_path, done)
    if stop is not None:
        say(
            f"{stop.name} after step {done} of {total_steps}: saved {checkpoint_path}; "
            f"continue with --resume {checkpoint_path}"
        )
        return EXIT_STATUS[stop]
    train_seconds = time.perf_counter() - started

    if world is None:
        evaluated = model
    else:  # the whole model on the main process, which evaluates and shows it while the others end
        weights, optimizer_state = parallel.gather(unwrapped, optimizer if args.save else None, world)
        if replica is None:
            return 0
        replica.load_state_dict(weights)
        evaluated = replica
    evaluated.eval()
    metrics = task.evaluate(evaluated, full=True)
    say(f"held-out after {total_steps} steps ({train_seconds:.0f} s of training): {format_metrics(metrics)}")
    with torch.no_grad():
        shown = task.show(evaluated, out_dir, seed)
    say(shown)
    (out_dir / "samples.txt").write_text(shown + "\n", encoding="utf-8")
    record = {
        "task": task.name,
        "steps": total_steps,
        "train_seconds": round(train_seconds, 1),
        "backend": args.backend,
        "device": str(device),
        "seed": seed,
        "config": dataclasses.asdict(task.config),
        "train_loss": loss_value,  # the last step's, over the whole batch
        "metrics": metrics,
    }
    if world is not None:
        record.update(device=device.type, parallel=world.mode, processes=world.size)
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.save:
        if world is None:
            save(Path(args.save), total_steps)
        else:  # one file in the single-process format, for generate, attention-graph and runs on one process
            state = {"task": task.name, "config": dataclasses.asdict(task.config), "step": total_steps}
            write_checkpoint(
                Path(args.save), {**state, "model": weights, "optimizer": optimizer_state, "resume": resume_state()}
            )
        say(f"saved {args.save}")
    return 0


def _device(text: str) -> torch.device:
    """cpu, or a CUDA device that exists here."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return device


def _existing_checkpoint(text: str) -> str:
    """A checkpoint file, or the checkpoint folder of a --parallel run, that exists (read once the
    command runs)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` subcommand's arguments."""
    parser.add_argument("model", choices=list(TASKS), help="the model to train: " + ", ".join(TASKS))
    parser.add_argument(
        "--steps",
        type=whole_number(0),
        metavar="N",
        help="training steps (defaults: "
        + ", ".join(f"{n} {t.recipe.steps}" for n, t in TASKS.items())
        + "); with --load, steps beyond the checkpoint's; 0 only evaluates and shows",
    )
    parser.add_argument(
        "--batch-size", type=whole_number(1), metavar="B", help="sequences (images) per step (default: the task's)"
    )
    parser.add_argument("--lr", type=positive_number, metavar="LR", help="peak learning rate (default: the task's)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto",) + backends.BACKENDS,
        help="backend of every attention, norm and sampling call (default auto: the fastest "
        "that runs here; torch on a CPU). triton on a CPU needs TRITON_INTERPRET=1 set before Python "
        "starts (Triton's interpreter; slow)",
    )
    parser.add_argument("--device", type=_device, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, help="seed of the initialization, the batches and the samples (default: 0)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"where {CHECKPOINT_NAME} ({parallel.CHECKPOINT_NAME} under --parallel), metrics.json, samples.txt "
        "and vae.png go (default: runs/train-MODEL); checked for writing before the first step",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=whole_number(1),
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help=f"write DIR/{CHECKPOINT_NAME} every N steps (default: {DEFAULT_CHECKPOINT_EVERY}: a save takes under "
        "a second, 200 steps seconds to half a minute on a CPU), at the end, and when Ctrl-C or SIGTERM stops "
        "the run (exit status 130 / 143). Each write goes to a temporary file first and replaces the "
        "checkpoint only once complete, so a kill at any moment leaves the previous one whole",
    )
    parser.add_argument(
        "--resume",
        type=_existing_checkpoint,
        metavar="PATH",
        help=f"continue a stopped run exactly where it stopped (e.g. DIR/{CHECKPOINT_NAME}, or "
        f"DIR/{parallel.CHECKPOINT_NAME} with --parallel): model, optimizer, learning-rate schedule, step, batch "
        "order and random state, with the run's own steps, batch size, learning rate and seed; the result is "
        "bitwise that of the run never stopped (on as many processes)",
    )
    parser.add_argument(
        "--load",
        type=_existing_checkpoint,
        metavar="PATH",
        help="start a new run from this checkpoint's weights and optimizer (of the same model), for --steps "
        "more steps on a new schedule; --resume continues a run instead",
    )
    parser.add_argument(
        "--save",
        type=output_file,
        metavar="PATH",
        help="also write the final checkpoint here, as one file, under --parallel too (it can be --resume'd "
        "or --load'ed, with or without --parallel)",
    )
    parser.add_argument(
        "--parallel",
        choices=parallel.MODES,
        help="gpt only: train on the processes torchrun starts (torchrun --nproc-per-node N -m fastattn train gpt "
        "--parallel ...; gloo on CPUs, nccl and one GPU a process on GPUs), or on this one process without "
        "torchrun. ddp: each process a whole model and an equal share of the batch's sequences; fsdp: each "
        "holds 1/N of the parameters and optimizer state (FSDP2, per block); context: each takes every "
        "sequence's N-th part, attention around the ring (the model's context length must divide by 2N). "
        f"The global batch is that of one process. Checkpoints: DIR/{parallel.CHECKPOINT_NAME}, a "
        "torch.distributed.checkpoint folder that --resume continues on any number of processes and mode",
    )
