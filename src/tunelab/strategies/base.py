"""Strategies decide which parameters train: the unit users compare.

A strategy prepares the model (freeze, wrap, add layers), names the parameters the optimiser should hold, may
change what trains at step or epoch boundaries (gradual unfreezing), and keeps any state a resume needs. The new
head (parameters the pretrained checkpoint did not have) always trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tunelab.errors import ModelError
from tunelab.strategies import layers


def new_params(model: nn.Module) -> set[str]:
    """Names of the parameters the task added (the new head), as recorded when the model was built."""
    return set(getattr(model, "tunelab_new_params", []))


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """Exactly these parameters train; every other one is frozen."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


class Strategy:
    """Base: full fine-tuning. Subclasses override ``apply`` and, where needed, the hooks below."""

    name = "full"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze or wrap the model; returns the model to train (may be a wrapper)."""
        set_trainable(model, {name for name, _ in model.named_parameters()})
        return model

    def trainable_candidates(self, model: nn.Module) -> list[str]:
        """Parameters the optimiser holds: those that train now or will later."""
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def depth_map(self, model: nn.Module) -> dict[str, int] | None:
        """Depth of each parameter for discriminative learning rates; None if the model has no block stack."""
        try:
            return layers.depth_map(model)
        except ModelError:
            return None

    def set_train_mode(self, model: nn.Module) -> None:
        """Put modules in train or eval mode (a frozen backbone runs in eval mode: no dropout)."""
        model.train()

    def on_step_end(self, step: int, epoch: int, end_of_epoch: bool, model: nn.Module) -> bool:
        """Hook after each optimiser step; returns True when the set of trainable parameters changed."""
        return False

    def save_model(self, model: nn.Module, folder: Path) -> dict[str, Any]:
        """Write the trained model as a plain Hugging Face folder; returns what tunelab.json records about it."""
        model.save_pretrained(folder, safe_serialization=True)
        return {"format": "hf"}

    def state(self) -> dict[str, Any]:
        """What a resume needs to put this strategy back where it was."""
        return {}

    def load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore ``state()`` output onto a freshly prepared model."""


class Freeze(Strategy):
    """Freeze chosen blocks (bottom/top/fraction/every-n/indices), embeddings, and name patterns."""

    name = "freeze"

    def apply(self, model: nn.Module) -> nn.Module:
        all_names = [name for name, _ in model.named_parameters()]
        head = new_params(model)
        if self.cfg.train_only is not None:
            keep = set(layers.match_params(model, self.cfg.train_only)) | head
            set_trainable(model, keep)
            return model
        frozen: set[str] = set()
        c = self.cfg
        if any(v is not None for v in (c.bottom, c.top, c.every, c.indices)):
            for block_name, block in layers.pick_blocks(model, bottom=c.bottom, top=c.top, every=c.every, indices=c.indices):
                frozen |= {f"{block_name}.{n}" for n, _ in block.named_parameters()}
        if c.embeddings:
            depth = layers.depth_map(model)
            frozen |= {name for name in all_names if depth.get(name) == 0}
        if c.patterns:
            frozen |= set(layers.match_params(model, c.patterns))
        set_trainable(model, set(all_names) - (frozen - head))
        return model


class FeatureExtraction(Strategy):
    """The whole pretrained backbone frozen and in eval mode; only the new head trains."""

    name = "feature_extraction"

    def apply(self, model: nn.Module) -> nn.Module:
        head = new_params(model)
        if not head:
            raise ModelError("feature_extraction needs a new head to train, but this task added no new parameters")
        set_trainable(model, head)
        return model

    def set_train_mode(self, model: nn.Module) -> None:
        model.eval()
        for name in {n.rsplit(".", 1)[0] for n in new_params(model)}:
            model.get_submodule(name).train()


class BitFit(Strategy):
    """Only the bias terms (and the new head) train: Ben Zaken et al., 2021."""

    name = "bitfit"

    def apply(self, model: nn.Module) -> nn.Module:
        names = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
        if not names:
            raise ModelError(f"{type(model).__name__} has no bias parameters, so bitfit would train nothing but the head")
        set_trainable(model, names | new_params(model))
        return model


class GradualUnfreeze(Strategy):
    """ULMFiT: start with the head, unfreeze one more block from the top every epoch (or every N steps)."""

    name = "gradual_unfreeze"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.stage = 0

    def apply(self, model: nn.Module) -> nn.Module:
        self.depth = layers.depth_map(model)
        self.top = max(self.depth.values())
        self._unfreeze_to(model, self.stage)
        return model

    def trainable_candidates(self, model: nn.Module) -> list[str]:
        return [name for name, _ in model.named_parameters()]

    def _unfreeze_to(self, model: nn.Module, stage: int) -> None:
        lowest = self.top - stage if (stage < self.top or self.cfg.embeddings) else 1
        set_trainable(model, {n for n, d in self.depth.items() if d >= lowest} | new_params(model))

    def on_step_end(self, step: int, epoch: int, end_of_epoch: bool, model: nn.Module) -> bool:
        due = step % self.cfg.every_steps == 0 if self.cfg.every_steps else end_of_epoch
        if not due or self.stage >= self.top:
            return False
        self.stage += 1
        self._unfreeze_to(model, self.stage)
        return True

    def state(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.stage = int(state.get("stage", 0))
        self._unfreeze_to(model, self.stage)


REGISTRY: dict[str, type[Strategy]] = {
    "full": Strategy,
    "freeze": Freeze,
    "feature_extraction": FeatureExtraction,
    "bitfit": BitFit,
    "gradual_unfreeze": GradualUnfreeze,
}


def make_strategy(cfg: Any) -> Strategy:
    """The strategy object for a validated ``strategy`` section."""
    if cfg.method not in REGISTRY:
        from tunelab.strategies.peft_methods import PEFT_METHODS, PeftStrategy

        if cfg.method in PEFT_METHODS:
            return PeftStrategy(cfg)
        raise ModelError(f"strategy.method '{cfg.method}' is not implemented yet; available: {', '.join(REGISTRY)}")
    return REGISTRY[cfg.method](cfg)
