"""The GAN itself: a generator from noise (and, conditional, a class) to rows, a discriminator from rows (and the
class) to one logit, and the input scaler as buffers, so final/ draws rows in raw units as training saw them.

Two architectures. ``mlp`` serves every input: tables and pretrained text features have no spatial structure, and
an 8x8 digit is only 64 numbers, which a two-layer MLP sees whole (recipes/gan-digits.yaml says which of the two
did better on the digits' validation split). ``conv`` is the DCGAN shape (Radford et
al. 2016) for larger images: the generator upsamples a (side/4)² feature map twice with transposed convolutions,
the discriminator mirrors it with strided convolutions and LeakyReLU. Neither uses batch norm, so a discriminator
update leaves every generator tensor, buffers included, exactly as it was. The generator's last layer is linear for
every input, pixels included: a sigmoid output saturated and collapsed to one image on the digits (every draw the
same, the discriminator's loss near 0 within 1,500 steps, where a linear output reached the equilibrium loss 2 ln 2
and train-on-synthetic accuracy 0.75 in a standalone loop of the same nets). Drawn pixels are clipped to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int], activation: type[nn.Module], dropout: float = 0.0) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), activation()] + ([nn.Dropout(dropout)] if dropout else [])
    return layers


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU(0.2): the discriminator's activation since DCGAN (gradients flow for rows it rejects), and the MLP
    generator's."""

    def __init__(self) -> None:
        super().__init__(0.2)


class ConvGenerator(nn.Module):
    """noise (+ one-hot class) -> channels x side/4 x side/4 -> 2x up -> 2x up -> image."""

    def __init__(self, inputs: int, channels: int, side: int, width: int) -> None:
        super().__init__()
        self.channels, self.quarter, self.width = channels, side // 4, width
        self.project = nn.Linear(inputs, width * self.quarter ** 2)
        self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU(),
                                nn.ConvTranspose2d(width // 2, channels, 4, 2, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.project(inputs).view(-1, self.width, self.quarter, self.quarter)
        return self.up(hidden).permute(0, 2, 3, 1).flatten(1)  # channels last, as the scaler's pixels are


class ConvDiscriminator(nn.Module):
    """image (+ class maps) -> 2x down -> 2x down -> one logit."""

    def __init__(self, channels: int, classes: int, side: int, width: int, dropout: float) -> None:
        super().__init__()
        self.channels, self.side, self.classes = channels, side, classes
        self.down = nn.Sequential(nn.Conv2d(channels + classes, width // 2, 4, 2, 1), LeakyReLU(),
                                  nn.Conv2d(width // 2, width, 4, 2, 1), LeakyReLU(), nn.Flatten(),
                                  nn.Dropout(dropout), nn.Linear(width * (side // 4) ** 2, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        pixels = inputs[:, : inputs.shape[1] - self.classes].view(-1, self.side, self.side, self.channels)
        maps = inputs[:, inputs.shape[1] - self.classes :, None, None].expand(-1, -1, self.side, self.side)
        return self.down(torch.cat([pixels.permute(0, 3, 1, 2), maps], 1))


class GAN(nn.Module):
    """Generator and discriminator on scaled rows; ``classes`` > 0 makes both conditional on a one-hot class."""

    def __init__(self, dim: int, noise: int, generator_hidden: list[int], discriminator_hidden: list[int],
                 classes: int = 0, pixels: bool = False, architecture: str = "mlp", side: int = 0, dropout: float = 0.0,
                 center: torch.Tensor | None = None, spread: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dim, self.noise, self.classes, self.pixels = dim, noise, classes, pixels
        if architecture == "conv":
            channels = dim // (side * side)
            self.generator: nn.Module = ConvGenerator(noise + classes, channels, side, generator_hidden[0])
            self.discriminator: nn.Module = ConvDiscriminator(channels, classes, side, discriminator_hidden[0], dropout)
        else:
            g_sizes = [noise + classes, *generator_hidden]
            self.generator = nn.Sequential(*_mlp(g_sizes, LeakyReLU), nn.Linear(g_sizes[-1], dim))
            d_sizes = [dim + classes, *discriminator_hidden]
            self.discriminator = nn.Sequential(*_mlp(d_sizes, LeakyReLU, dropout), nn.Linear(d_sizes[-1], 1))
        self.register_buffer("center", torch.zeros(dim) if center is None else center.float().clone())
        self.register_buffer("spread", torch.ones(dim) if spread is None else spread.float().clone())

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.center) / self.spread

    def unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled * self.spread + self.center

    def _with_class(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.classes:
            return x
        return torch.cat([x, F.one_hot(labels, self.classes).to(x.dtype)], 1)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled rows for noise z (and classes): what the discriminator judges."""
        return self.generator(self._with_class(z, labels))

    def critic(self, scaled: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's logit per row (real: high)."""
        return self.discriminator(self._with_class(scaled, labels)).squeeze(-1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Rows in raw units for noise z (and classes); pixels clipped to [0, 1]."""
        rows = self.unscale(self.generate(z, labels))
        return rows.clamp(0.0, 1.0) if self.pixels else rows
