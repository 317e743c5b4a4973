"""Loading: every bad checkpoint and impossible combination is refused before loading, with a way out."""

from __future__ import annotations

import json
import shutil

import pytest
from qwen1_checkpoint import Shape, write_checkpoint

from qwen_core import CheckpointError, CheckpointNotFound, UnsupportedCombination, load_engine
from qwen_core.catalog import GpuInfo, find_variant, recommend
from qwen_core.checkpoint import CheckpointInfo, inspect_checkpoint, resolve_checkpoint
from qwen_core.placement import plan_placement

GB = 10**9
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", 79 * GB, 80 * GB, (9, 0))


def _ckpt(n_params: float, name: str, stored="bf16", bits=None) -> CheckpointInfo:
    """Metadata of a published checkpoint, without its weights (refusals read nothing else)."""
    from pathlib import Path

    nbytes = int(n_params * (2 if bits is None else bits / 8))
    return CheckpointInfo(Path(f"/models/{name}"), {}, {}, (), int(n_params), nbytes, stored, bits)


@pytest.fixture
def copy_of(ckpt_dir, tmp_path):
    def make(name="copy"):
        dst = tmp_path / name
        shutil.copytree(ckpt_dir, dst)
        return dst

    return make


def test_sharded_and_unsharded_load(ckpt_dir, long_ckpt_dir):
    assert len(inspect_checkpoint(ckpt_dir).weight_files) == 1
    info = inspect_checkpoint(long_ckpt_dir)
    assert len(info.weight_files) == 3 and info.stored_dtype == "fp32" and not info.is_gptq


def test_missing_shard(long_ckpt_dir, tmp_path):
    dst = shutil.copytree(long_ckpt_dir, tmp_path / "partial")
    (dst / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete.*model-00002-of-00003.safetensors.*Download them again"):
        load_engine(str(dst), device="cpu")


def test_missing_tensor_is_not_silently_random(copy_of):
    from safetensors.torch import load_file, save_file

    dst = copy_of()
    tensors = load_file(str(dst / "model.safetensors"))
    del tensors["transformer.h.1.mlp.w2.weight"]
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks 1 weights"):
        load_engine(str(dst), device="cpu")


def test_wrong_vocabulary(copy_of):
    dst = copy_of()
    (dst / "qwen.tiktoken").write_text("aGVsbG8= 0\n")
    with pytest.raises(CheckpointError, match="wrong file"):
        load_engine(str(dst), device="cpu")
    (dst / "qwen.tiktoken").unlink()
    with pytest.raises(CheckpointError, match="no qwen.tiktoken"):
        load_engine(str(dst), device="cpu")


def test_other_architecture(copy_of):
    dst = copy_of()
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'llama' model.*not a first-generation Qwen"):
        load_engine(str(dst), device="cpu")


def test_malformed_config_names_line(copy_of):
    dst = copy_of()
    (dst / "config.json").write_text('{\n  "model_type": "qwen",\n  oops\n}')
    with pytest.raises(CheckpointError, match="config.json: invalid JSON at line 3"):
        load_engine(str(dst), device="cpu")


def test_missing_folder():
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        load_engine("/nonexistent/qwen", device="cpu")


def test_offline_hub_names_the_folder_and_flag(tmp_path):
    with pytest.raises(CheckpointNotFound) as err:
        resolve_checkpoint("Qwen/Qwen-1_8B-Chat", cache_dir=tmp_path, offline=True)
    msg = str(err.value)
    assert str(tmp_path) in msg and "--model" in msg and "Qwen/Qwen-1_8B-Chat" in msg


def test_cached_hub_snapshot_resolves_offline(ckpt_dir, tmp_path):
    """A model already in the HF cache layout loads with no network."""
    repo = tmp_path / "models--Qwen--Qwen-1_8B-Chat"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(ckpt_dir, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    path = resolve_checkpoint("Qwen/Qwen-1_8B-Chat", cache_dir=tmp_path, offline=True)
    assert path == snap
    eng = load_engine("Qwen/Qwen-1_8B-Chat", device="cpu", cache_dir=tmp_path, offline=True)
    assert eng.chat("hi", do_sample=False, max_new_tokens=3) is not None


def test_checkpoint_code_is_never_executed(engine):
    # The fixture folder carries a modeling_qwen.py that raises when imported or run.
    import sys

    remote = [m for m in sys.modules if m.split(".")[-1] == "modeling_qwen" or m.startswith("transformers_modules")]
    assert remote == []
    assert engine.chat("hi", do_sample=False, max_new_tokens=2) is not None


@pytest.mark.parametrize(
    ("precision", "device", "pattern"),
    [
        ("fp16", "cpu", "fp16 on the CPU is not supported.*bf16"),
        ("fp64", "cpu", "use one of auto, fp32"),
        ("auto", "cuda", "no CUDA GPU is visible.*--device cpu"),
        ("auto", "cuda:1", "no CUDA GPU is visible"),
        ("auto", "tpu", "use auto, cpu, cuda or cuda:N"),
    ],
)
def test_refused_combinations_on_this_machine(ckpt_dir, precision, device, pattern):
    with pytest.raises(UnsupportedCombination, match=pattern):
        load_engine(str(ckpt_dir), precision=precision, device=device)


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_int_widths_on_a_bf16_checkpoint_need_llamacpp_on_cpu_and_bitsandbytes_on_cuda(
    ckpt_dir, precision, monkeypatch
):
    import qwen_core.placement as placement

    # On the CPU they run through llama.cpp (tests/test_llamacpp.py); the torch engine refuses them.
    with pytest.raises(UnsupportedCombination, match="runs through llama.cpp"):
        load_engine(str(ckpt_dir), precision=precision, device="cpu", cpu_engine="torch")
    # On CUDA: bitsandbytes (tests/test_bitsandbytes.py loads it); a host without it gets the install line.
    planned = plan_placement(_ckpt(1.8e9, "Qwen-1_8B-Chat"), precision, "cuda", gpus=[H100])
    assert planned.precision == precision and planned.device.startswith("cuda")
    monkeypatch.setattr(placement, "bitsandbytes_available", lambda: False)
    with pytest.raises(UnsupportedCombination, match="bitsandbytes.*not installed: pip install bitsandbytes"):
        plan_placement(_ckpt(1.8e9, "Qwen-1_8B-Chat"), precision, "cuda", gpus=[H100])


def test_refusals_with_gpus():
    qwen72 = _ckpt(72.3e9, "Qwen-72B-Chat")
    with pytest.raises(UnsupportedCombination, match="nearest variant that fits: Qwen/Qwen-72B-Chat-Int4"):
        plan_placement(qwen72, "bf16", "cuda", model_id="Qwen/Qwen-72B-Chat", gpus=[H100])
    with pytest.raises(UnsupportedCombination, match="only GPUs 0..0"):
        plan_placement(qwen72, "bf16", "cuda:3", gpus=[H100])
    old = GpuInfo(0, "Tesla V100", 31 * GB, 32 * GB, (7, 0))
    with pytest.raises(UnsupportedCombination, match="Ampere.*--precision fp16"):
        plan_placement(_ckpt(1.8e9, "Qwen-1_8B-Chat"), "bf16", "cuda", gpus=[old])
    assert plan_placement(_ckpt(1.8e9, "Qwen-1_8B-Chat"), "auto", "cuda", gpus=[old]).precision == "fp16"


def test_gptq_refusals(monkeypatch):
    import qwen_core.placement as placement

    int4 = _ckpt(7.7e9, "Qwen-7B-Chat-Int4", stored="fp16", bits=4)
    with pytest.raises(UnsupportedCombination, match="GPTQ Int4.*Qwen/Qwen-7B-Chat for bf16"):
        plan_placement(int4, "bf16", "cuda", model_id="Qwen/Qwen-7B-Chat-Int4", gpus=[H100])
    monkeypatch.setattr(placement, "gptq_backend_available", lambda: False)
    with pytest.raises(UnsupportedCombination, match="gptqmodel and optimum.*Qwen/Qwen-7B-Chat"):
        plan_placement(int4, "auto", "cuda", model_id="Qwen/Qwen-7B-Chat-Int4", gpus=[H100])


def test_placement_choices():
    two = [H100, GpuInfo(1, "NVIDIA H100", 79 * GB, 80 * GB, (9, 0))]
    p = plan_placement(_ckpt(72.3e9, "Qwen-72B-Chat"), "auto", "auto", gpus=two)
    assert p.precision == "bf16" and p.device_map == "balanced"
    p = plan_placement(_ckpt(1.8e9, "Qwen-1_8B-Chat"), "auto", "cuda:0", gpus=[H100])
    assert p.device_map == {"": 0} and p.precision == "bf16"


def test_planner():
    assert recommend([]).variant.name == "Qwen-1_8B-Chat" and recommend([]).device == "cpu"
    rec = recommend([H100])
    assert rec.variant.name == "Qwen-72B-Chat-Int4" and "48.9 GB" in rec.reason
    assert "Qwen-72B-Chat-Int8" in rec.reason  # says what did not fit
    two = [H100, GpuInfo(1, "NVIDIA H100", 79 * GB, 80 * GB, (9, 0))]
    assert recommend(two).variant.name == "Qwen-72B-Chat"  # 144.69 GB over 2 GPUs, as published
    small = [GpuInfo(0, "RTX 3060", 11 * GB, 12 * GB, (8, 6))]
    assert recommend(small).variant.name == "Qwen-7B-Chat-Int4"
    tiny = [GpuInfo(0, "GT 1030", 1 * GB, 2 * GB, (6, 1))]
    assert recommend(tiny).device == "cpu"


def test_catalogue():
    v = find_variant("qwen/Qwen-14B-Chat-Int8")
    assert v and v.hf_id == "Qwen/Qwen-14B-Chat-Int8" and v.peak_gb == 18.81 and v.seq_length == 2048
    assert find_variant("Qwen/Qwen-1_8B-Chat").peak_gb == 4.23
    assert find_variant("Qwen/Qwen-7B-Chat").peak_gb == 16.99
    assert find_variant("Qwen/Qwen-72B-Chat").min_gpus == 2
    assert find_variant("meta-llama/Llama-2-7b") is None


def test_auto_precision_on_cpu(bf16_ckpt_dir, ckpt_dir):
    from qwen_core.placement import cpu_has_fast_bf16

    eng = load_engine(str(bf16_ckpt_dir), device="cpu")
    assert eng.info.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert load_engine(str(ckpt_dir), device="cpu").info.precision == "fp32"


def test_unsharded_bf16_checkpoint(tmp_path):
    folder = write_checkpoint(tmp_path / "b", Shape(), "bfloat16", shards=1)
    assert load_engine(str(folder), precision="bf16", device="cpu").info.dtype == "bfloat16"
