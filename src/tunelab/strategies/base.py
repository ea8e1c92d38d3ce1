"""Strategies decide which parameters train: the unit users compare.

A strategy prepares the model (freeze, wrap, add layers), names the parameters the optimiser should hold, may
change what trains at step or epoch boundaries (gradual unfreezing), and keeps any state a resume needs. The new
head (parameters the pretrained checkpoint did not have) always trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tunelab.errors import ModelError, RecipeError
from tunelab.strategies import layers


# Default rates of a new head over a frozen pooler, chosen on validation (docs/defaults.md): the head alone
# (feature_extraction) at HEAD_ONLY_LR; the head beside adapters, vectors or biases at FROZEN_HEAD_LR.
FROZEN_HEAD_LR = 3e-2
HEAD_ONLY_LR = 1e-1


def new_params(model: nn.Module) -> set[str]:
    """Names of the parameters the task added (the new head), as recorded when the model was built."""
    return set(getattr(model, "tunelab_new_params", []))


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """Exactly these parameters train; every other one is frozen."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def head_modules(model: nn.Module) -> list[str]:
    """The outermost modules made only of new parameters (``classifier``, not ``classifier.0``).

    PEFT saves these whole (``modules_to_save``) and feature extraction keeps them in train mode, so the head's own
    dropout layers, which hold no parameters, count as part of it.
    """
    new = new_params(model)
    heads: set[str] = set()
    for name in new:
        parts = name.split(".")[:-1]
        top = None
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if not all(n in new for n, _ in model.get_submodule(prefix).named_parameters(prefix=prefix)):
                break
            top = prefix
        if top is not None:
            heads.add(top)
    return sorted(heads)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def hold_frozen_norms(model: nn.Module) -> None:
    """Frozen means frozen: a batch-norm layer whose weights do not train runs in eval mode, so its running mean and
    variance stay as pretrained (in train mode every batch would move them, the drift users of other tools report in
    "frozen" CNN feature extractors)."""
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS) and module.affine and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


class Strategy:
    """Base: full fine-tuning. Subclasses override ``apply`` and, where needed, the hooks below."""

    name = "full"
    # optim.head_lr when the recipe sets none; methods that freeze the pooler under the head use FROZEN_HEAD_LR
    default_head_lr: float | None = None

    def __init__(self, cfg: Any, task_type: str = "classification") -> None:
        self.cfg = cfg
        self.task_type = task_type

    def check_model_class(self, model_class: type | None, model_name: str) -> None:
        """Refuse, before any data is read or weights loaded, a model this method cannot run on in the installed
        library versions (``model_class`` is the class the task would build; None when it cannot be told)."""

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
        """Put modules in train or eval mode (a frozen backbone runs in eval mode: no dropout; frozen batch norms
        keep their statistics)."""
        model.train()
        hold_frozen_norms(model)

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
            set_trainable(model, set(_match_train_only(model, self.cfg.train_only)) | head)
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
        if not set(all_names) - (frozen - head):
            raise RecipeError(
                f"strategy freeze: this selection freezes every parameter of {type(model).__name__} (blocks "
                f"{layers.describe_blocks(model)}, embeddings, no new head), so nothing would train"
            )
        set_trainable(model, set(all_names) - (frozen - head))
        return model

    def set_train_mode(self, model: nn.Module) -> None:
        """With ``cache_boundary`` the frozen stem and bottom blocks run in eval mode (no dropout), cached or not."""
        super().set_train_mode(model)
        if getattr(self.cfg, "cache_boundary", False):
            for module in layers.frozen_prefix(model):
                module.eval()


def _match_train_only(model: nn.Module, patterns: list[str]) -> list[str]:
    """``match_params``, explaining the usual surprise: a tied output layer has no parameter name of its own."""
    try:
        return layers.match_params(model, patterns)
    except RecipeError as err:
        outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if outputs is not None and inputs is not None and outputs.weight is inputs.weight:
            raise RecipeError(
                f"{err}. Note: {type(model).__name__} ties its output layer to its input embeddings (one tensor, "
                "named once, as the embedding), so the output layer cannot train apart from them; checkpoints that "
                "save their own output layer (FLAN-T5, T5 v1.1) load untied"
            ) from None
        raise


class FeatureExtraction(Strategy):
    """The whole pretrained backbone frozen and in eval mode; only the new head trains."""

    name = "feature_extraction"
    default_head_lr = HEAD_ONLY_LR

    def apply(self, model: nn.Module) -> nn.Module:
        head = new_params(model)
        if not head:
            raise RecipeError(
                f"strategy feature_extraction trains only a new head, but this task put none on "
                f"{type(model).__name__}; to train only the output layer of a language model use "
                "strategy: {method: freeze, train_only: ['lm_head.*']}"
            )
        set_trainable(model, head)
        return model

    def set_train_mode(self, model: nn.Module) -> None:
        model.eval()
        for name in head_modules(model):
            model.get_submodule(name).train()


class BitFit(Strategy):
    """Only the bias terms (and the new head) train: Ben Zaken et al., 2021."""

    name = "bitfit"
    default_head_lr = FROZEN_HEAD_LR

    def apply(self, model: nn.Module) -> nn.Module:
        names = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
        if not names:
            raise RecipeError(f"strategy bitfit: {type(model).__name__} has no bias parameters, so bitfit would train "
                              "nothing but the head; choose lora or ia3 for this architecture")
        set_trainable(model, names | new_params(model))
        return model


class GradualUnfreeze(Strategy):
    """ULMFiT: start with the head, unfreeze one more block from the top every epoch (or every N steps).

    Depths come from ``layers.depth_map``: 0 embeddings, 1..N blocks, N+1 what sits above them (pooler, final norm,
    output layer). Stage 0 trains depth N+1 and the new head; stage k adds depth N+1-k; the last stage is N (every
    block) or, with ``embeddings: true``, N+1 (the embeddings too).
    """

    name = "gradual_unfreeze"

    def __init__(self, cfg: Any, task_type: str = "classification") -> None:
        super().__init__(cfg, task_type)
        self.stage = 0

    def apply(self, model: nn.Module) -> nn.Module:
        self.depth = layers.depth_map(model)
        self.top = max(self.depth.values())
        self.last_stage = self.top if self.cfg.embeddings else self.top - 1
        self._unfreeze_to(model, self.stage)
        return model

    def trainable_candidates(self, model: nn.Module) -> list[str]:
        lowest = self.top - self.last_stage
        head = new_params(model)
        return [name for name, _ in model.named_parameters() if self.depth[name] >= lowest or name in head]

    def _unfreeze_to(self, model: nn.Module, stage: int) -> None:
        lowest = self.top - stage
        set_trainable(model, {n for n, d in self.depth.items() if d >= lowest} | new_params(model))

    def on_step_end(self, step: int, epoch: int, end_of_epoch: bool, model: nn.Module) -> bool:
        due = step % self.cfg.every_steps == 0 if self.cfg.every_steps else end_of_epoch
        if not due or self.stage >= self.last_stage:
            return False
        self.stage += 1
        self._unfreeze_to(model, self.stage)
        return True

    def state(self) -> dict[str, Any]:
        return {"stage": self.stage}

    def load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.stage = int(state.get("stage", 0))
        self._unfreeze_to(model, self.stage)
