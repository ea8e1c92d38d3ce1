"""Turn a quantised GGUF file into a plain float Hugging Face folder, once, atomically.

transformers can read GGUF (it dequantises to float tensors), but the object it returns
still carries a `GgufConfig` and refuses `save_pretrained`, and re-reading the GGUF costs
~15 s every time. Training, PEFT and the run folder all want an ordinary folder, so we
convert once into a cache and reuse it.
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunelab.errors import ModelError

SOURCE_FILE = "tunelab_source.json"
CHECK_PROMPT = "The capital of France is"
CONVERSION_FORMAT = 2  # raise when convert_gguf changes what it writes


def cache_root() -> Path:
    """Where converted models live: `$TUNELAB_CACHE` if set, else `~/.cache/tunelab`.

    One place, overridable, so tests and CI can convert into a throwaway folder.
    """
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab")


def _source_stamp(gguf_path: Path) -> dict[str, object]:
    """What made a converted folder: the GGUF file's content hash and the library versions that read and wrote it.

    A changed file or an upgraded transformers/gguf/torch (whose dequantisation or saved format may differ) makes
    the stamp differ, so an upgrade converts afresh instead of reusing a stale folder.
    """
    info = gguf_path.stat()
    return {"gguf_file": gguf_path.name, "gguf_bytes": info.st_size,
            "gguf_sha256": _sha256(str(gguf_path), info.st_size, info.st_mtime_ns),
            "versions": {name: importlib.metadata.version(name) for name in ("transformers", "gguf", "torch")},
            "format": CONVERSION_FORMAT}


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, computed once per process for a given size and modification time (~0.2 s for 94 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_current(out_dir: Path, gguf_path: Path) -> bool:
    """True when out_dir is a finished conversion of this very GGUF file by the libraries installed now."""
    stamp_file = out_dir / SOURCE_FILE
    if not stamp_file.is_file():
        return False
    return json.loads(stamp_file.read_text()) == _source_stamp(gguf_path)


def _plain_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild the dequantised GGUF model as an ordinary model that `save_pretrained` accepts."""
    config = gguf_model.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model.eval()


def _check_same_logits(reference: PreTrainedModel, folder: Path, input_ids: torch.Tensor) -> None:
    """Reload the written folder the way a user would and refuse it unless it predicts identically."""
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(input_ids).logits
        got = reloaded(input_ids).logits
    if not torch.allclose(expected, got, atol=1e-5, rtol=1e-5):
        diff = (expected - got).abs().max().item()
        raise ModelError(
            f"Converting {folder.name}: the saved folder's logits differ from the GGUF model's "
            f"(max abs diff {diff:.3g}). The folder was not kept; please report this with your "
            "transformers and gguf versions."
        )


def _load_gguf(gguf: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Read tokenizer and dequantised model from a GGUF file; unreadable files become ModelError."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    except (OSError, ValueError, KeyError) as error:  # KeyError: architecture transformers cannot map
        detail = " ".join(str(error).split()).rstrip(".")
        raise ModelError(
            f"Could not read the GGUF file {gguf}: {error.__class__.__name__}: {detail}. transformers reads "
            "GGUF only for some architectures and quantisation types; check the file, or convert it "
            "elsewhere to a Hugging Face folder and point the recipe at that folder."
        ) from error
    return tokenizer, model


def convert_gguf(gguf_path: str, out_dir: str) -> str:
    """Dequantise `gguf_path` into a float32 Hugging Face folder at `out_dir` and return it.

    Why: fine-tuning needs ordinary float weights plus the tokenizer's chat template in a folder
    any library can load. The folder is built in a temporary sibling and renamed into place, so a
    crash never leaves a half-written folder that looks complete; a folder already converted from
    the same GGUF is reused without work. float32 is kept on purpose: CPU training in bf16 loses
    precision and the 135M model is small.
    """
    gguf = Path(gguf_path).expanduser().resolve()
    out = Path(out_dir).expanduser()
    if not gguf.is_file():
        raise ModelError(f"GGUF file {gguf} does not exist; check the path or reinstall its package.")
    if _is_current(out, gguf):
        return str(out)
    if out.exists() and not (out / SOURCE_FILE).is_file():
        raise ModelError(
            f"{out} already exists and is not a tunelab GGUF conversion (no {SOURCE_FILE}); refusing to "
            "overwrite it. Remove it or choose another output folder."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tokenizer, gguf_model = _load_gguf(gguf)
        model = _plain_copy(gguf_model)
        model.save_pretrained(tmp)
        # GGUF carries no max length; without it truncation=True would never truncate.
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.save_pretrained(tmp)
        _check_same_logits(gguf_model, tmp, tokenizer(CHECK_PROMPT, return_tensors="pt").input_ids)
        (tmp / SOURCE_FILE).write_text(json.dumps(_source_stamp(gguf)))
        _make_readable(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only files; a shared cache must be readable by all."""
    folder.chmod(0o755)
    for file in folder.iterdir():
        file.chmod(0o644)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; a stale conversion is swapped out, a racing twin wins."""
    if out.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, stale / out.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if not out.is_dir():
            raise
