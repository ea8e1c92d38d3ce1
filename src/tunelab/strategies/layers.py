"""Find a model's blocks — transformer blocks or CNN stages — and select among them.

Every layer-wise strategy (freeze bottom/top/fraction/every-n/indices/patterns, gradual
unfreezing, discriminative learning rates) needs the same question answered: *which modules
are the repeated transformer blocks, in what order, and which parameters belong to which?*
Architectures name the stack differently (BERT ``bert.encoder.layer``, Llama ``model.layers``,
GPT-2 ``transformer.h``, T5 ``encoder.block`` + ``decoder.block``) and PEFT prefixes it with
``base_model.model.``, so we find it with one generic rule instead of a table of names:

    an ``nn.ModuleList`` whose children all share one class and contain attention,
    not nested inside another such list.

Convolutional networks from transformers (ResNet ``resnet.encoder.stages``, ConvNeXt ``convnext.encoder.stages``,
MobileNetV2 ``mobilenet_v2.layer``, EfficientNet ``efficientnet.encoder.blocks``) have no attention; when a model has no
attention stack, the same rule with "contain a convolution" in place of "contain attention" finds their stages.

Image models from timm say themselves what their blocks are: ``group_matcher(coarse=True)`` groups the modules into
stem, stages (EfficientNet ``blocks.0-6``, ResNet ``layer1-4``, VGG's convolutions, ConvNeXt ``stages.0-3``) and
head. There the stages are the blocks, the stem plays the embeddings' part (depth 0) and whatever follows the last
stage (EfficientNet's ``conv_head``, the classifier) sits above them, so every layer-wise strategy works on CNNs too.

Conventions (documented once, used by every strategy):

* **Depth order.** Stacks are ordered as the model registers them, which puts an
  encoder before its decoder (T5, BART); ``ordered_blocks`` concatenates them, so on T5
  block indices 0..2 are ``encoder.block.0-2`` and 3..4 are ``decoder.block.0-1``.
* **Fractions** in ``select_blocks``: ``round-half-up(n * f)``, at least 1 when f > 0
  (0.5 of 6 -> 3, 0.25 of 6 -> 2, 0.1 of 6 -> 1). An int is a count, a float a fraction:
  ``bottom: 1`` is one block, ``bottom: 1.0`` is all of them.
* **Combining selectors.** ``bottom`` and ``top`` may be given together (the union: both
  ends). ``every`` and ``indices`` must stand alone, since pairing them with anything else
  could mean a union or an intersection.
* **Patterns** in ``match_params`` are ``fnmatch`` globs (case-sensitive; ``*`` also spans
  dots), tried on the full parameter name and on the name without PEFT's
  ``base_model.model.`` prefix, so one recipe works on wrapped and unwrapped models.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tunelab.errors import ModelError, RecipeError

PEFT_PREFIX = "base_model.model."


@dataclass
class BlockStack:
    """One ``nn.ModuleList`` of identical transformer blocks and its dotted path in the model."""

    name: str
    blocks: nn.ModuleList


def _has_attention(module: nn.Module) -> bool:
    """Whether a block contains attention, judged by submodule class or attribute names."""
    for name, sub in module.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if "attention" in type(sub).__name__.lower() or "attn" in leaf or "attention" in leaf:
            return True
    return False


def _has_conv(module: nn.Module) -> bool:
    """Whether a block contains a 2-D convolution (a CNN stage or block)."""
    return any(isinstance(sub, nn.Conv2d) for sub in module.modules())


def _stacks(model: nn.Module, kind: Callable[[nn.Module], bool]) -> list[BlockStack]:
    """Outermost non-empty ModuleLists of one child class whose first child is of the ``kind`` asked for."""
    stacks: list[BlockStack] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(stack.name + ".") for stack in stacks):
            continue
        if len({type(child) for child in module}) != 1 or not kind(module[0]):
            continue
        stacks.append(BlockStack(name=name, blocks=module))
    return stacks


def find_block_stacks(model: nn.Module) -> list[BlockStack]:
    """Find the model's stacks of repeated transformer blocks (or, without attention, CNN stages) in depth order.

    Strategies select and freeze layers by position in these stacks, so this is the one place
    that decides what "a layer" is. Lists nested inside an accepted stack (T5's per-block
    ``layer`` list, for instance) are skipped.
    """
    stacks = _stacks(model, _has_attention) or _stacks(model, _has_conv)
    if not stacks:
        raise ModelError(
            f"found no stack of transformer blocks in {type(model).__name__}: looked for an "
            "nn.ModuleList of identical modules that contain attention (or convolutions). Layer-wise strategies "
            "(freeze bottom/top/every/indices, gradual unfreezing, layer-wise learning rates) "
            "cannot work on this model; select parameters with name patterns instead."
        )
    return stacks


def timm_stages(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """A timm image model's stages in depth order, with full dotted names; None if no timm model is inside.

    The stages are timm's coarse groups between the first (stem) and the last (head). A group that spans a stage and
    modules after it (EfficientNet's last stage with ``conv_head`` and ``bn2``) counts as the stage; the rest of it
    then sits above the blocks with the head.
    """
    owner_path, owner = next(((name, module) for name, module in model.named_modules()
                              if callable(getattr(module, "group_matcher", None))), ("", None))
    if owner is None:
        return None
    from timm.models import group_modules  # only for timm models: importing timm costs seconds that text runs skip

    groups = [names for _, names in sorted(group_modules(owner, owner.group_matcher(coarse=True)).items())]
    stages = []
    for names in groups[1:-1]:
        top = names[0].split(".")[0]
        parts = [name.split(".") for name in names if name.split(".")[0] == top]
        common = []
        for level in zip(*parts):
            if len(set(level)) > 1:
                break
            common.append(level[0])
        path = ".".join(common)
        stages.append((f"{owner_path}.{path}" if owner_path else path, owner.get_submodule(path)))
    return stages


def ordered_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All blocks of all stacks as one list in depth order, with full dotted names.

    Encoder-decoder models give encoder blocks first, then decoder blocks, because that is the
    order data flows through them; "bottom" therefore means the encoder's first blocks. Image models from
    timm give their stages (``timm_stages``).
    """
    stages = timm_stages(model)
    if stages:
        return stages
    return [
        (f"{stack.name}.{i}", block)
        for stack in find_block_stacks(model)
        for i, block in enumerate(stack.blocks)
    ]


def describe_blocks(model: nn.Module) -> str:
    """A short human description of the stacks, e.g. ``encoder.block.0-2 then decoder.block.0-1``.

    Error messages use it so that a user who asks for a block that does not exist sees
    what does.
    """
    stages = timm_stages(model)
    if stages:
        return ", ".join(name for name, _ in stages)
    return " then ".join(
        f"{stack.name}.0-{len(stack.blocks) - 1}" for stack in find_block_stacks(model)
    )


def _is_int(value: object) -> bool:
    """YAML ``true`` is an int subclass in Python; a boolean is never a block count."""
    return isinstance(value, int) and not isinstance(value, bool)


def _count(key: str, value: int | float, n: int, where: str) -> int:
    """Turn a ``bottom``/``top`` value (int count or float fraction) into a number of blocks."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= n:
            raise RecipeError(
                f"{where}: {key} = {value} is out of range; {key} must be 0..{n} or a fraction in (0, 1]"
            )
        return value
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise RecipeError(
                f"{where}: {key} = {value} is not a usable fraction; {key} must be 0..{n} "
                "(a count, written as an integer) or a fraction in (0, 1]"
            )
        return max(1, math.floor(n * value + 0.5))
    raise RecipeError(
        f"{where}: {key} = {value!r} ({type(value).__name__}) is neither a count nor a fraction; "
        f"{key} must be an integer 0..{n} or a fraction in (0, 1]"
    )


def select_blocks(
    n: int,
    *,
    bottom: int | float | None = None,
    top: int | float | None = None,
    every: int | None = None,
    indices: list[int] | None = None,
    blocks_desc: str | None = None,
) -> list[int]:
    """The sorted block indices (0-based, in depth order) picked by one recipe selector.

    Kept separate from the model so that a recipe can be checked against a block count alone.
    ``blocks_desc`` (see ``describe_blocks``) is quoted in errors so users see what exists.
    """
    where = f"the model has {n} blocks" + (f" ({blocks_desc})" if blocks_desc else "")
    selectors = {"bottom": bottom, "top": top, "every": every, "indices": indices}
    given = [key for key, value in selectors.items() if value is not None]
    if not given:
        raise RecipeError(f"{where}, but no selector was given: set one of bottom, top, every or indices")
    if len(given) > 1 and not set(given) <= {"bottom", "top"}:
        raise RecipeError(
            f"{where}: selectors {', '.join(given)} were given together, which is ambiguous "
            "(union or intersection?); give only one, or only bottom and top (their union)"
        )
    if every is not None:
        if not _is_int(every) or every < 1:
            raise RecipeError(
                f"{where}: every = {every!r} must be an integer >= 1 (every: 2 picks blocks 0, 2, 4, ...)"
            )
        return list(range(0, n, every))
    if indices is not None:
        if not isinstance(indices, list):
            raise RecipeError(f"{where}: indices = {indices!r} must be a list of block indices, e.g. [0, -1]")
        picked: set[int] = set()
        for index in indices:
            if not _is_int(index) or not -n <= index < n:
                raise RecipeError(
                    f"{where}: index {index!r} in indices does not exist; indices must be integers "
                    f"0..{n - 1} (or -{n}..-1 counting from the top)"
                )
            picked.add(index % n)
        return sorted(picked)
    selected: set[int] = set()
    if bottom is not None:
        selected.update(range(_count("bottom", bottom, n, where)))
    if top is not None:
        selected.update(range(n - _count("top", top, n, where), n))
    return sorted(selected)


def pick_blocks(
    model: nn.Module,
    *,
    bottom: int | float | None = None,
    top: int | float | None = None,
    every: int | None = None,
    indices: list[int] | None = None,
) -> list[tuple[str, nn.Module]]:
    """The (name, block) pairs of ``model`` chosen by ``select_blocks`` selectors.

    The one call a strategy makes: it finds the blocks, applies the recipe's selector and
    quotes the model's real block names in any error.
    """
    blocks = ordered_blocks(model)
    chosen = select_blocks(
        len(blocks), bottom=bottom, top=top, every=every, indices=indices, blocks_desc=describe_blocks(model)
    )
    return [blocks[i] for i in chosen]


def match_params(model: nn.Module, patterns: list[str]) -> list[str]:
    """Parameter names (in model order) matching any of the ``fnmatch`` glob ``patterns``.

    Used by pattern-based freezing and by strategies that train e.g. only ``*.bias``. A pattern
    that matches nothing is almost always a typo, so it raises instead of silently training or
    freezing nothing.
    """
    names = [name for name, _ in model.named_parameters()]
    stripped = {name: name.removeprefix(PEFT_PREFIX) for name in names}
    matched: set[str] = set()
    for pattern in patterns:
        hits = {
            name
            for name in names
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(stripped[name], pattern)
        }
        if not hits:
            close = difflib.get_close_matches(pattern, list(stripped.values()), n=3, cutoff=0.4)
            examples = close or list(stripped.values())[:3]
            label = "did you mean" if close else "parameter names look like"
            raise RecipeError(
                f"parameter pattern {pattern!r} matches no parameter of {type(model).__name__} "
                f"({len(names)} parameters); {label}: {', '.join(examples)}. Patterns are fnmatch "
                "globs: '*' matches any characters including dots, e.g. '*.bias' or '*attention*'"
            )
        matched |= hits
    return [name for name in names if name in matched]


def depth_map(model: nn.Module) -> dict[str, int]:
    """Map every parameter name to a depth: 0 embeddings, 1..N blocks, N+1 head.

    Layer-wise learning-rate decay (``lr * decay ** (N + 1 - depth)``) and gradual unfreezing
    (top first) both need one number per parameter. Block parameters get their block's
    1-based position in ``ordered_blocks``. Other parameters are placed by where they appear
    in ``named_parameters()``: before the first block -> 0, after the last -> N + 1, in between
    (e.g. T5's ``encoder.final_layer_norm``) -> the depth of the block just before them.
    """
    block_depth = {name: depth for depth, (name, _) in enumerate(ordered_blocks(model), start=1)}
    last = len(block_depth)
    depths: dict[str, int] = {}
    current = 0
    pending: list[str] = []
    for name, _ in model.named_parameters():
        owner = next((b for b in block_depth if name.startswith(b + ".")), None)
        if owner is None:
            pending.append(name)
            depths[name] = current
            continue
        current = block_depth[owner]
        depths[name] = current
        pending = []
    for name in pending:
        depths[name] = last + 1
    return depths


STEM_NAMES = ("embeddings", "embed_tokens")  # the module that feeds block 0 (BERT family, Llama family)


def frozen_bottom(model: nn.Module) -> tuple[str, nn.Module, str, nn.ModuleList, int]:
    """The stem (parent path, module), the block stack (path, list) and the index of its lowest trainable block.

    Raises ModelError when there is nothing to cache or the model does not have the one-stack shape the boundary
    cache relies on.
    """
    stacks = find_block_stacks(model)
    if len(stacks) != 1:
        raise ModelError(f"the model has {len(stacks)} block stacks; the boundary cache handles one")
    stack = stacks[0]
    trainable = [i for i, block in enumerate(stack.blocks) if any(p.requires_grad for p in block.parameters())]
    boundary = trainable[0] if trainable else len(stack.blocks)
    parts = stack.name.split(".")
    for end in range(len(parts) - 1, -1, -1):
        owner_path = ".".join(parts[:end])
        owner = model.get_submodule(owner_path) if owner_path else model
        for attr in STEM_NAMES:
            stem = getattr(owner, attr, None)
            if isinstance(stem, nn.Module):
                if any(p.requires_grad for p in stem.parameters()):
                    raise ModelError(f"the stem {owner_path}.{attr} trains, so no hidden state below the blocks is fixed")
                if boundary == 0:
                    raise ModelError("block 0 trains, so only the embeddings are frozen; nothing worth caching")
                return f"{owner_path}.{attr}".lstrip("."), stem, stack.name, stack.blocks, boundary
    raise ModelError(f"no stem module named {' or '.join(STEM_NAMES)} above {stack.name}")


def frozen_prefix(model: nn.Module) -> list[nn.Module]:
    """The frozen stem and blocks the boundary cache replaces; with cache_boundary they always run in eval mode (no
    dropout), cached or not, so the cached and the plain path compute the same function. Empty if there is none."""
    try:
        _, stem, _, blocks, boundary = frozen_bottom(model)
    except ModelError:
        return []
    return [stem, *list(blocks)[:boundary]]
