"""Options of each strategy, validated as part of the recipe (``strategy.method`` picks one).

One pydantic class per method, joined in a discriminated union, so ``strategy: {method: lora, rank: 8}`` is refused
with "unknown key 'strategy.rank', did you mean 'r'" instead of being ignored.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the train.lr this method is known to need; a run far below it is warned (fine-tuning rates barely move adapters)
    recommended_lr: ClassVar[float | None] = None


class LayerSelection(_Options):
    """Which transformer blocks a strategy acts on; combine selectors as a union."""

    bottom: int | float | None = Field(None, description="First k blocks, or a fraction of them (0.5 = half).")
    top: int | float | None = Field(None, description="Last k blocks, or a fraction of them.")
    every: int | None = Field(None, description="Every n-th block: 0, n, 2n, ...")
    indices: list[int] | None = Field(None, description="Explicit block indices (negative counts from the top).")


class Full(_Options):
    """Every parameter trains. Recommended train.lr: 2e-5 .. 1e-4."""

    method: Literal["full"] = "full"


class Freeze(LayerSelection):
    """Freeze chosen blocks, the embeddings and name patterns; the rest and the new head train.

    The FLAN-T5 demo (shared embedding, encoder and decoder frozen, only the output projection trains) is one line:
    ``strategy: {method: freeze, train_only: ["lm_head.*"]}``. Recommended train.lr: as for full (1e-4); with only a
    small top part training, 1e-3.
    """

    method: Literal["freeze"]
    embeddings: bool = Field(True, description="Freeze the embeddings too.")
    patterns: list[str] = Field(default_factory=list, description="Extra parameter-name globs to freeze.")
    train_only: list[str] | None = Field(
        None, description="Freeze everything except these parameter globs (and the new head), e.g. ['lm_head.*']."
    )
    cache_boundary: bool = Field(
        False, description="Run the frozen bottom blocks in eval mode (no dropout), cache the hidden states they "
        "hand to the lowest trainable block once, and run only the trainable blocks every later epoch.",
    )


class FeatureExtraction(_Options):
    """The pretrained backbone frozen and in eval mode; only the new head trains.

    The head trains at optim.head_lr, by default 1e-1, far above fine-tuning rates; the other methods that leave
    the pooler frozen (lora, dora, ia3, bitfit, adapters, prompts) train their head at 3e-2 by default (why, and
    the validation runs that chose both: docs/defaults.md). Set optim.head_lr to change it.
    """

    method: Literal["feature_extraction"]
    cache_features: bool = Field(True, description="Run the frozen backbone once, keep the head's inputs in memory "
                                 "and train the head on them every epoch (same result, far less work).")


class Lora(_Options):
    """LoRA (Hu et al., 2021), or DoRA (method: dora; Liu et al., 2024), through peft; the new head trains in full.

    Default targets per architecture are peft's (BERT query/value, Llama q_proj/v_proj, T5 q/v).
    Recommended train.lr: 1e-3: a full fine-tuning rate of 1e-4 or less barely moves the adapters. The head trains
    at optim.head_lr, default 3e-2, chosen on validation (docs/defaults.md).
    """

    recommended_lr: ClassVar[float | None] = 1e-3
    method: Literal["lora", "dora"]
    r: int = Field(8, gt=0, description="Rank of the update matrices.")
    alpha: int = Field(16, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the input of the update matrices.")
    target_modules: list[str] | None = Field(
        None, description="Module names (last part, or a dotted suffix) to adapt; default per architecture."
    )


class IA3(_Options):
    """(IA)^3 (Liu et al., 2022) through peft: learned vectors rescale keys, values and feed-forward activations.

    Recommended train.lr: 1e-2 (the vectors start at 1 and need large steps); head at 3e-2 as for lora.
    """

    recommended_lr: ClassVar[float | None] = 1e-2
    method: Literal["ia3"]
    target_modules: list[str] | None = Field(
        None, description="Modules whose outputs are rescaled; default per architecture."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Those of target_modules whose input, not output, is rescaled (feed-forward outputs)."
    )


class PromptLike(_Options):
    """Prefix tuning (Li & Liang, 2021) or prompt tuning (Lester et al., 2021) through peft: trained virtual tokens.

    Recommended train.lr: 1e-2 .. 3e-2 (prompt tuning often up to 3e-1), head at 3e-2 as for lora; they need many
    steps to match LoRA.
    """

    recommended_lr: ClassVar[float | None] = 1e-2
    method: Literal["prefix_tuning", "prompt_tuning"]
    num_virtual_tokens: int = Field(20, gt=0, description="Number of trained virtual tokens.")


class BitFit(_Options):
    """Only the bias terms (and the new head) train (Ben Zaken et al., 2021).

    Recommended train.lr: 5e-3, head at 3e-2 as for lora (docs/defaults.md says how far that rate is checked).
    """

    recommended_lr: ClassVar[float | None] = 5e-3
    method: Literal["bitfit"]


class Adapters(LayerSelection):
    """Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020) after the output layer of each selected block.

    The backbone is frozen; adapters (at train.lr, with optim.layer_lr_decay by depth like LoRA) and the new head
    (at optim.head_lr, default 3e-2) train. No selector means every block. Recommended train.lr: 1e-3.
    """

    recommended_lr: ClassVar[float | None] = 1e-3
    method: Literal["adapters"]
    bottleneck: int = Field(64, gt=0, description="Hidden size of each bottleneck adapter.")
    activation: Literal["gelu", "relu", "tanh"] = Field("gelu", description="Non-linearity between the projections.")


class GradualUnfreeze(_Options):
    """ULMFiT (Howard & Ruder, 2018): the head first, then one more block from the top every epoch or every N steps.

    Pair it with optim.layer_lr_decay (e.g. 0.8) for discriminative learning rates. Recommended train.lr: as for full
    (1e-4); with a budget of one epoch, set every_steps so that every block gets its turn.
    """

    method: Literal["gradual_unfreeze"]
    every_steps: int | None = Field(None, gt=0, description="Unfreeze one more block every N steps (default: every epoch).")
    embeddings: bool = Field(False, description="Unfreeze the embeddings once every block trains.")


StrategyConfig = Annotated[
    Union[Full, Freeze, FeatureExtraction, Lora, IA3, PromptLike, BitFit, Adapters, GradualUnfreeze],
    Field(discriminator="method"),
]

_BY_METHOD: dict[str, type[_Options]] = {
    "full": Full, "freeze": Freeze, "feature_extraction": FeatureExtraction, "lora": Lora, "dora": Lora, "ia3": IA3,
    "prefix_tuning": PromptLike, "prompt_tuning": PromptLike, "bitfit": BitFit, "adapters": Adapters,
    "gradual_unfreeze": GradualUnfreeze,
}


def fields_of_method(method: str) -> list[str]:
    """Valid option names of one method, for did-you-mean messages."""
    cls = _BY_METHOD.get(method)
    return list(cls.model_fields) if cls else []


def method_names() -> list[str]:
    """Every strategy method a recipe may name."""
    return list(_BY_METHOD)
