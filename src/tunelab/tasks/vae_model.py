"""The variational autoencoder itself: a Gaussian encoder, the reparameterised sample, a decoder, and the two terms
of the ELBO (reconstruction and KL to N(0, I)), each per example so they can be reported and used as scores.

The input scaler (a centre and a spread per input, fitted on training rows only) lives in the model as buffers, so
it is saved with the weights and a reloaded model scores raw rows exactly as it was trained to. A counter of the
training examples seen is a buffer too: it drives the KL warm-up and travels in every checkpoint, so a resumed run
warms up exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example, in closed form: ½ Σ (mu² + σ² − 1 − log σ²).

    Closed form rather than a Monte Carlo estimate: exact, and its gradient has no sampling noise.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mu + σ·ε with ε ~ N(0, I) given: a sample of N(mu, σ²) through which gradients reach mu and logvar."""
    return mu + (0.5 * logvar).exp() * noise


def reconstruction_nll(output: torch.Tensor, target: torch.Tensor, likelihood: str,
                       log_noise: torch.Tensor | None = None) -> torch.Tensor:
    """−log p(x | z) per example, summed over the inputs so the ELBO is in nats: Gaussian with unit variance
    ('mse': ½‖x − x̂‖² + D/2·log 2π), Gaussian with a learned variance per input ('gaussian': ``log_noise`` is its
    log), or Bernoulli ('bce': binary cross-entropy of the decoder's logits)."""
    if likelihood == "bce":
        return F.binary_cross_entropy_with_logits(output, target, reduction="none").sum(-1)
    if likelihood == "gaussian":
        return 0.5 * ((output - target).pow(2) * (-log_noise).exp() + log_noise + math.log(2 * math.pi)).sum(-1)
    return 0.5 * (output - target).pow(2).sum(-1) + 0.5 * target.shape[-1] * math.log(2 * math.pi)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


@dataclass
class Terms:
    """Per-example terms of one pass: −log p(x|z) averaged over the latent samples, and the KL of q(z|x)."""

    reconstruction: torch.Tensor
    kl: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class VAE(nn.Module):
    """Encoder x → (mu, logvar), z = mu + σε, decoder z → x̂ (means for mse and gaussian, logits for bce), on scaled
    inputs."""

    def __init__(self, dim: int, hidden: list[int], latent: int, likelihood: str,
                 center: torch.Tensor | None = None, spread: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dim, self.latent, self.likelihood = dim, latent, likelihood
        self.encoder = _mlp([dim, *hidden])
        width = hidden[-1] if hidden else dim
        self.mu = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)
        self.decoder = nn.Sequential(_mlp([latent, *reversed(hidden)]), nn.Linear(hidden[0] if hidden else latent, dim))
        # log-variance of p(x|z) per input for 'gaussian'; floored so a column the decoder gets exactly right cannot
        # drive its variance (and the likelihood) to infinity
        self.log_noise = nn.Parameter(torch.zeros(dim)) if likelihood == "gaussian" else None
        self.register_buffer("center", torch.zeros(dim) if center is None else center.float().clone())
        self.register_buffer("spread", torch.ones(dim) if spread is None else spread.float().clone())
        self.register_buffer("examples_seen", torch.zeros((), dtype=torch.long))

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw inputs to what the encoder reads and the decoder reconstructs."""
        return (raw - self.center) / self.spread

    def unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled * self.spread + self.center

    def encode(self, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian q(z|x): its mean and log-variance (clamped so exp() stays finite early in training)."""
        hidden = self.encoder(scaled)
        return self.mu(hidden), self.logvar(hidden).clamp(-12.0, 12.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for codes z: means (mse) or logits (bce), in scaled units."""
        return self.decoder(z)

    def noise(self) -> torch.Tensor | None:
        """The learned log-variance of p(x|z) per input (scaled units), floored at log 1e-4; None unless 'gaussian'."""
        return None if self.log_noise is None else self.log_noise.clamp(min=math.log(1e-4))

    def mean_output(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean for codes z in raw units (probabilities for bce): what a sample or a reconstruction
        shows."""
        out = self.decode(z)
        return self.unscale(torch.sigmoid(out) if self.likelihood == "bce" else out)

    def forward(self, inputs: torch.Tensor, noise: torch.Tensor | None = None) -> Terms:
        """Per-example terms for raw inputs. ``noise`` holds the ε of each latent draw, shaped (draws, batch, latent);
        without it, one draw from the global RNG (training). Evaluation passes seeded noise so its scores repeat."""
        x = self.scale(inputs)
        mu, logvar = self.encode(x)
        if noise is None:
            noise = torch.randn((1, *mu.shape), device=mu.device, dtype=mu.dtype)
        nll = torch.zeros(x.shape[0], device=x.device)
        for eps in noise:
            out = self.decode(reparameterise(mu, logvar, eps))
            nll = nll + reconstruction_nll(out, x, self.likelihood, self.noise())
        return Terms(nll / len(noise), kl_to_standard_normal(mu, logvar), mu, logvar)
