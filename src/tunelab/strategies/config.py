"""Options of each strategy, validated as part of the recipe (``strategy.method`` picks one).

One pydantic class per method, joined in a discriminated union, so ``strategy: {method: lora, rank: 8}`` is refused
with "unknown key 'strategy.rank', did you mean 'r'" instead of being ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LayerSelection(_Options):
    """Which transformer blocks a strategy acts on; combine selectors as a union."""

    bottom: int | float | None = Field(None, description="First k blocks, or a fraction of them (0.5 = half).")
    top: int | float | None = Field(None, description="Last k blocks, or a fraction of them.")
    every: int | None = Field(None, description="Every n-th block: 0, n, 2n, ...")
    indices: list[int] | None = Field(None, description="Explicit block indices (negative counts from the top).")


class Full(_Options):
    method: Literal["full"] = "full"


class Freeze(LayerSelection):
    method: Literal["freeze"]
    embeddings: bool = Field(True, description="Freeze the embeddings too.")
    patterns: list[str] = Field(default_factory=list, description="Extra parameter-name globs to freeze.")
    train_only: list[str] | None = Field(
        None, description="Freeze everything except these parameter globs (and the new head), e.g. ['lm_head.*']."
    )


class FeatureExtraction(_Options):
    method: Literal["feature_extraction"]
    cache_features: bool = Field(True, description="Run the frozen backbone once and train the head on cached outputs.")


class Lora(_Options):
    method: Literal["lora", "dora"]
    r: int = Field(8, gt=0, description="Rank of the update matrices.")
    alpha: int = Field(16, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, description="Module names to adapt; default per architecture.")


class IA3(_Options):
    method: Literal["ia3"]
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


class PromptLike(_Options):
    method: Literal["prefix_tuning", "prompt_tuning"]
    num_virtual_tokens: int = Field(20, gt=0)


class BitFit(_Options):
    method: Literal["bitfit"]


class Adapters(_Options):
    method: Literal["adapters"]
    bottleneck: int = Field(64, gt=0, description="Hidden size of each bottleneck adapter.")


class GradualUnfreeze(_Options):
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
