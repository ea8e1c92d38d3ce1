"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): small new layers in a frozen backbone.

Each adapter is down-projection, non-linearity, up-projection, plus a residual: ``h + up(act(down(h)))``. The
up-projection starts at zero, so the adapted model starts as exactly the pretrained one. One adapter goes after the
output layer of each selected block (BERT ``output.dense``, Llama ``mlp.down_proj``, T5 ``DenseReluDense.wo``),
before the block's own residual and normalisation, which is where Pfeiffer's adapter sits.

The adapter is attached as a child module named ``adapter`` of that output ``nn.Linear`` and run by a forward hook,
so every pretrained parameter keeps its name and the checkpoint loads unchanged. Plain transformers cannot rebuild
adapters, so final/ is the usual folder (with the adapter weights among the others, reported as unexpected keys by
plain transformers) plus ``tunelab.json`` naming the blocks; ``saving.load_model`` rebuilds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.errors import ModelError, RecipeError
from tunelab.strategies import layers
from tunelab.strategies.base import FROZEN_HEAD_LR, Strategy, new_params, set_trainable
from tunelab.task_options import TASK_CONFIGS

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """``h + up(act(down(h)))`` with ``up`` initialised to zero (the identity at the start)."""

    def __init__(self, width: int, size: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, size)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(size, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _run_adapter(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on the block's output layer: its output goes through the adapter."""
    return module.adapter(output)


def output_layer(block_name: str, block: nn.Module) -> str:
    """Name (within the block) of its output ``nn.Linear``: the last one that maps back to the block's width.

    The block's width is the input width of its first linear layer (the attention projection), so no table of
    architecture names is needed.
    """
    linears = [(name, m) for name, m in block.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"adapters: block {block_name} ({type(block).__name__}) has no nn.Linear layer to follow; "
                         "this architecture needs lora or ia3 instead")
    width = linears[0][1].in_features
    outputs = [name for name, m in linears if m.out_features == width]
    if not outputs:
        raise ModelError(f"adapters: no linear layer in block {block_name} maps back to its width {width}")
    return outputs[-1]


def insert_adapters(model: nn.Module, blocks: list[str], size: int, activation: str) -> list[str]:
    """Put an adapter after the output layer of each named block; returns the new parameters' names."""
    added: list[str] = []
    for block_name in blocks:
        block = model.get_submodule(block_name)
        layer_name = output_layer(block_name, block)
        linear = block.get_submodule(layer_name)
        adapter = Bottleneck(linear.out_features, size, activation).to(linear.weight.device, linear.weight.dtype)
        linear.add_module("adapter", adapter)
        linear.register_forward_hook(_run_adapter)
        added += [f"{block_name}.{layer_name}.adapter.{name}" for name, _ in adapter.named_parameters()]
    return added


def load_adapters(model: nn.Module, state: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
    """Rebuild the adapters that ``tunelab.json`` describes and load their saved weights exactly."""
    names = insert_adapters(model, spec["blocks"], spec["bottleneck"], spec["activation"])
    missing = [name for name in names if name not in state]
    if missing:
        raise ModelError(f"adapters: the saved weights lack {len(missing)} adapter tensors (e.g. {missing[0]})")
    model.load_state_dict({name: state[name] for name in names}, strict=False)


class Adapters(Strategy):
    """Backbone frozen; bottleneck adapters in the selected blocks (all by default) and the new head train."""

    name = "adapters"
    default_head_lr = FROZEN_HEAD_LR

    def check_model_class(self, model_class: type | None, model_name: str) -> None:
        """Bottleneck adapters act on a transformer block's token vectors; a CNN's stages output feature maps."""
        if TASK_CONFIGS[self.task_type].inputs != "tokens":
            raise RecipeError(f"strategy adapters inserts bottleneck layers on token vectors, and model '{model_name}' "
                              "reads pixels; use lora (on its 1x1 convolutions), bitfit, freeze or feature_extraction")

    def apply(self, model: nn.Module) -> nn.Module:
        c = self.cfg
        if any(v is not None for v in (c.bottom, c.top, c.every, c.indices)):
            chosen = layers.pick_blocks(model, bottom=c.bottom, top=c.top, every=c.every, indices=c.indices)
        else:
            chosen = layers.ordered_blocks(model)
        self.blocks = [name for name, _ in chosen]
        added = insert_adapters(model, self.blocks, c.bottleneck, c.activation)
        set_trainable(model, set(added) | new_params(model))  # adapters train at train.lr, the head at optim.head_lr
        return model

    def save_model(self, model: nn.Module, folder: Path) -> dict[str, Any]:
        """The whole model (pretrained weights, adapters, head) as safetensors, and how to rebuild the adapters."""
        model.save_pretrained(folder, safe_serialization=True)
        spec = {"blocks": self.blocks, "bottleneck": self.cfg.bottleneck, "activation": self.cfg.activation}
        return {"format": "adapters", "adapters": spec}
