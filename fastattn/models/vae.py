"""A variational autoencoder (Kingma & Welling, 2014) whose encoder and decoder are Transformer blocks
over image patches.

- Encoder q(z|x): the image cut into patches, each embedded linearly plus a learned position
  embedding; pre-norm self-attention blocks; a final LayerNorm; all patch vectors together projected
  to ``μ`` and ``log σ²`` of a diagonal Gaussian over ``latent_dim`` dimensions.
- Reparameterization: ``z = μ + σ·ε`` with ``ε ~ N(0, I)``, so the sample is differentiable in μ and σ.
- Decoder p(x|z): ``z`` projected to one vector per patch, plus a learned position embedding;
  self-attention blocks; a final LayerNorm; each patch's pixels as Bernoulli logits.

(Projecting from and to all patches, rather than pooling them into one vector or broadcasting one
vector to all, keeps where each stroke is in the latent code: with mean pooling, the posterior
collapsed onto the prior on the digits.)
- Loss: the negative ELBO, ``reconstruction + β·KL(q(z|x) ‖ N(0, I))``, where reconstruction is the
  binary cross-entropy summed over pixels (images in [0, 1]) and
  ``KL = ½ Σ (μ² + σ² − 1 − log σ²)``, both averaged over the batch. A training loop warms β up
  from 0 (KL warm-up) to keep the posterior from collapsing onto the prior early on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastattn.nn import LayerNorm

from .layers import Block, init_weights


@dataclass
class VAEConfig:
    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    latent_dim: int = 16
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    dropout: float = 0.0
    beta: float = 1.0  # weight of the KL term once warmed up


@dataclass
class VAEOutput:
    logits: Tensor  # (B, C, H, W) Bernoulli logits of the reconstruction
    mu: Tensor  # (B, Z)
    logvar: Tensor  # (B, Z)
    reconstruction: Tensor  # scalar: binary cross-entropy summed over pixels, mean over the batch
    kl: Tensor  # scalar: KL(q(z|x) ‖ N(0, I)) in nats, mean over the batch
    loss: Tensor  # scalar: reconstruction + beta * kl


class VAE(nn.Module):
    """Patch-Transformer VAE; ``forward(images)`` returns a :class:`VAEOutput`."""

    def __init__(self, config: VAEConfig, *, backend: str = "auto") -> None:
        super().__init__()
        if config.image_size % config.patch_size != 0:
            raise ValueError(f"image_size {config.image_size} must be a multiple of patch_size {config.patch_size}")
        self.config, self.backend = config, backend
        self.grid = config.image_size // config.patch_size
        num_patches, patch_dim = self.grid**2, config.channels * config.patch_size**2

        def blocks(count: int) -> nn.ModuleList:
            return nn.ModuleList(
                Block(
                    config.d_model,
                    config.n_heads,
                    config.d_ff,
                    norm_first=True,
                    activation="gelu",
                    dropout=config.dropout,
                    backend=backend,
                )
                for _ in range(count)
            )

        self.patch_embedding = nn.Linear(patch_dim, config.d_model)
        self.encoder_positions = nn.Parameter(torch.zeros(num_patches, config.d_model))
        self.encoder = blocks(config.n_encoder_layers)
        self.encoder_norm = LayerNorm(config.d_model, backend=backend)
        self.to_posterior = nn.Linear(num_patches * config.d_model, 2 * config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, num_patches * config.d_model)
        self.decoder_positions = nn.Parameter(torch.zeros(num_patches, config.d_model))
        self.decoder = blocks(config.n_decoder_layers)
        self.decoder_norm = LayerNorm(config.d_model, backend=backend)
        self.to_pixels = nn.Linear(config.d_model, patch_dim)
        self.apply(init_weights)
        nn.init.normal_(self.encoder_positions, std=0.02)
        nn.init.normal_(self.decoder_positions, std=0.02)

    def _patchify(self, images: Tensor) -> Tensor:
        """(B, C, H, W) → (B, P, C·p·p), patches in row-major order."""
        batch, channels, p, g = images.shape[0], self.config.channels, self.config.patch_size, self.grid
        patches = images.reshape(batch, channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
        return patches.reshape(batch, g * g, channels * p * p)

    def _unpatchify(self, patches: Tensor) -> Tensor:
        """(B, P, C·p·p) → (B, C, H, W)."""
        batch, channels, p, g = patches.shape[0], self.config.channels, self.config.patch_size, self.grid
        images = patches.reshape(batch, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
        return images.reshape(batch, channels, g * p, g * p)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images ``(B, C, H, W)`` in [0, 1] → ``μ``, ``log σ²``, each ``(B, Z)``."""
        x = self.patch_embedding(self._patchify(images)) + self.encoder_positions  # (B, P, D)
        for block in self.encoder:
            x = block(x)
        features = self.encoder_norm(x).flatten(1)  # (B, P·D)
        mu, logvar = self.to_posterior(features).chunk(2, dim=-1)  # (B, Z) each
        return mu, logvar

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, noise: Tensor | None = None) -> Tensor:
        """``z = μ + σ·ε``, ``σ = exp(½ log σ²)``; ``ε ~ N(0, I)`` unless ``noise`` gives it. ``(B, Z)``."""
        if noise is None:
            noise = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * noise

    def decode(self, z: Tensor) -> Tensor:
        """z ``(B, Z)`` → Bernoulli logits of the image ``(B, C, H, W)``."""
        x = self.from_latent(z).view(z.shape[0], self.grid**2, -1) + self.decoder_positions  # (B, P, D)
        for block in self.decoder:
            x = block(x)
        return self._unpatchify(self.to_pixels(self.decoder_norm(x)))  # (B, C, H, W)

    def forward(self, images: Tensor, *, beta: float | None = None, noise: Tensor | None = None) -> VAEOutput:
        """images ``(B, C, H, W)`` in [0, 1]; ``beta`` overrides ``config.beta`` (KL warm-up); ``noise``
        ``(B, Z)`` fixes ε. Returns the reconstruction logits, the posterior and the loss terms."""
        mu, logvar = self.encode(images)
        logits = self.decode(self.reparameterize(mu, logvar, noise))
        batch = images.shape[0]
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / batch
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum() / batch
        weight = self.config.beta if beta is None else beta
        return VAEOutput(logits, mu, logvar, reconstruction, kl, reconstruction + weight * kl)

    @torch.no_grad()
    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Images decoded from ``z ~ N(0, I)`` (the prior): pixel means in [0, 1],
        ``(num_samples, C, H, W)``."""
        weight = self.from_latent.weight
        z = torch.randn(num_samples, self.config.latent_dim, generator=generator).to(weight.device, weight.dtype)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def interpolate(self, start: Tensor, end: Tensor, steps: int) -> Tensor:
        """Decodes ``steps`` points on the line between the posterior means of images ``start`` and
        ``end`` (each ``(C, H, W)``): ``(steps, C, H, W)`` in [0, 1], the first and last reconstructing
        them."""
        mu, _ = self.encode(torch.stack([start, end]))  # (2, Z)
        weights = torch.linspace(0.0, 1.0, steps, device=mu.device, dtype=mu.dtype)[:, None]  # (steps, 1)
        z = (1.0 - weights) * mu[0] + weights * mu[1]  # (steps, Z)
        return torch.sigmoid(self.decode(z))
