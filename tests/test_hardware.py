"""Devices and precisions: option validation, auto resolution, caches that know their compute precision, bf16."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import embrecycle
from embrecycle import BuildConfig, CacheMismatchError, ConfigError, SplitEncoder, build_cache, open_cache
from embrecycle import hardware as hw
from embrecycle.cache.settings import KEY_FIELDS
from embrecycle.training import TrainConfig, train
from test_split import _inputs
from tiny_models import tiny_configs

BF16_TOLERANCE = 0.05
"""Recycled last hidden states vs the unsplit model, both under bf16 autocast, on the tiny models (|h| <= 4):
about three bf16 ulps at that scale. Measured worst case 3.0e-2 (ELECTRA), 7.7e-3 to 8.8e-3 for the other
families: the difference is the rounding of the stored layer-k states to bf16 (the unsplit model passes them
on in float32, since layer norms run in float32 under autocast)."""


def test_bad_options_name_the_value_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"device='tpu' \(choose auto, cpu, cuda, cuda:N or mps\)"):
        hw.resolve_hardware("tpu")
    with pytest.raises(ConfigError, match=r"device='cuda:x'"):
        hw.resolve_hardware("cuda:x")
    with pytest.raises(ConfigError, match=r"precision='fp64' \(choose one of auto, fp32, bf16, fp16\)"):
        hw.resolve_hardware("cpu", "fp64")
    with pytest.raises(ConfigError, match=r"fp16 needs a CUDA device \(use --precision bf16 or fp32\)"):
        hw.resolve_hardware("cpu", "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device='cuda' but CUDA is not available here \(use --device cpu"):
            hw.resolve_hardware("cuda")
    monkeypatch.setenv("EMBRECYCLE_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="EMBRECYCLE_PRECISION='fp8'"):
        hw.resolve_hardware("cpu")
    with pytest.raises(ConfigError, match=r"precision='half'"):
        TrainConfig(task="ner", model="m", layer=1, train="t", dev="d", out="o", precision="half")
    with pytest.raises(ConfigError, match=r"precision='x'"):
        BuildConfig(model="m", layer=1, precision="x")


def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBRECYCLE_PRECISION")
    monkeypatch.setattr(hw, "cpu_bf16_units", lambda: ("avx512_bf16",))
    got = hw.resolve_hardware("cpu")
    assert got.precision == "bf16" and got.dtype == torch.bfloat16 and "avx512_bf16" in got.describe()
    monkeypatch.setattr(hw, "cpu_bf16_units", lambda: ())
    assert hw.resolve_hardware("cpu").precision == "fp32"
    assert hw.resolve_hardware("cpu", "bf16").precision == "bf16"  # asked for: emulated, but allowed


def test_bf16_on_a_cpu_without_bf16_units_warns_once_and_says_emulated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("EMBRECYCLE_PRECISION")
    monkeypatch.setattr(hw, "cpu_bf16_units", lambda: ())
    monkeypatch.setattr(hw, "_cpu_flags_known", lambda: True)
    hw._warn_emulated_bf16.cache_clear()
    with caplog.at_level("WARNING", logger="embrecycle.hardware"):
        assert hw.resolve_hardware("cpu").precision == "fp32"  # auto never picks emulated bf16
        assert not caplog.records
        got = hw.resolve_hardware("cpu", "bf16")
        hw.resolve_hardware("cpu", "bf16")
    assert got.precision == "bf16" and "bf16 (emulated: no native bf16 units)" in got.describe()
    (record,) = caplog.records  # once per process
    assert "without native bf16" in record.getMessage() and "--precision auto" in record.getMessage()
    monkeypatch.setattr(hw, "cpu_bf16_units", lambda: ("amx_bf16",))
    assert not hw.emulated_bf16(torch.device("cpu"), "bf16") and "(amx_bf16)" in got.describe()
    monkeypatch.setattr(hw, "cpu_bf16_units", lambda: ())
    monkeypatch.setattr(hw, "_cpu_flags_known", lambda: False)  # not Linux: flags unknown, nothing claimed
    assert not hw.emulated_bf16(torch.device("cpu"), "bf16") and "emulated" not in got.describe()
    hw._warn_emulated_bf16.cache_clear()


def test_threads_follow_the_cores_this_process_may_use() -> None:
    import os

    assert hw.resolve_hardware("cpu").threads == len(os.sched_getaffinity(0)) == torch.get_num_threads()


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert ("avx512_bf16" in text) == ("avx512_bf16" in hw.cpu_bf16_units())


def test_a_cache_knows_the_precision_that_computed_it(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    cfg = BuildConfig(model=tiny_bert_dir, layer=2, dtype="float32", device="cpu")
    fp32 = build_cache(texts[:8], tmp_path / "fp32", cfg, progress=False)
    bf16 = build_cache(
        texts[:8], tmp_path / "bf16", BuildConfig(**{**cfg.__dict__, "precision": "bf16"}), progress=False
    )
    s32, s16 = open_cache(tmp_path / "fp32").settings, open_cache(tmp_path / "bf16").settings
    assert (s32.precision, s16.precision) == ("fp32", "bf16") and s32.fingerprint() != s16.fingerprint()
    # an fp32 cache keeps the key it had before the precision was recorded
    old = {k: getattr(s32, k) for k in KEY_FIELDS if k != "precision"}
    assert s32.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    a = open_cache(tmp_path / "fp32").get(texts[0]).hidden
    b = open_cache(tmp_path / "bf16").get(texts[0]).hidden
    assert 0 < abs(a - b).max() < BF16_TOLERANCE  # bf16 states differ from fp32 ones, slightly
    assert fp32.computed == bf16.computed == len(set(texts[:8]))
    with pytest.raises(
        CacheMismatchError, match=r"(?s)--precision bf16 to use it.*precision: cache has 'bf16', requested 'fp32'"
    ):
        build_cache(texts[8:12], tmp_path / "bf16", cfg, progress=False)  # not silently extended in fp32


@pytest.mark.parametrize("name", list(tiny_configs()))
def test_bf16_recycling_stays_within_the_measured_tolerance(name: str) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_configs()[name], attn_implementation="eager").eval()
    ids, mask = _inputs(1)
    for k in range(SplitEncoder(model, 0).num_layers + 1):
        split = SplitEncoder(model, k)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            out = split.upper(split.lower(ids, mask).to(torch.bfloat16), mask).float()
        diff = ((out - ref).abs() * mask[..., None]).max().item()
        assert diff <= BF16_TOLERANCE, f"{name} k={k}: {diff}"


def test_bf16_run_trains_saves_loads_and_predicts(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    config = TrainConfig(
        task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
        dev=str(toy_classification["dev"]), out=str(tmp_path / "run"), cache=str(tmp_path / "cache"), epochs=3,
        lr=1e-3, batch_size=8, precision="bf16",
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.precision == "bf16" and "(cpu, bf16" in result.summary()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == "bf16"
    record = embrecycle.load(result.run_dir, precision="fp32").record
    assert record.precision == "bf16" and record.states.precision == "bf16"
    assert open_cache(tmp_path / "cache").settings.precision == "bf16"
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "run" / "model.safetensors")).values())
    docs = ["the protein of a study", "disease in the patients with"]
    bf16 = embrecycle.load(result.run_dir, precision="bf16")
    first, again = bf16.predict(docs), bf16.predict(docs)
    assert [p["probabilities"] for p in first.items] == [p["probabilities"] for p in again.items]
    fp32 = embrecycle.load(result.run_dir, precision="fp32").predict(docs, cache=None)
    for a, b in zip(first.items, fp32.items, strict=True):
        assert a is not None and b is not None
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 0.02
    scores = bf16.evaluate(bf16.read(toy_classification["dev"]))
    assert scores["cache_hits"] == scores["documents"]  # the bf16 cache feeds a bf16 run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_and_prediction_on_cuda(
    precision: str, tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    config = TrainConfig(
        task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
        dev=str(toy_classification["dev"]), out=str(tmp_path / "run"), cache=str(tmp_path / "cache"), epochs=2,
        lr=1e-3, batch_size=8, device="cuda", precision=precision,
    )  # fmt: skip
    result = train(config, progress=False)
    assert result.device.startswith("cuda") and result.precision == precision and result.losses[-1] < result.losses[0]
    model = embrecycle.load(result.run_dir, device="cuda", precision=precision)
    preds = model.predict(["the protein of a study"])
    assert preds.items[0] is not None and preds.hits == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_refuses_a_device_it_does_not_have(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from embrecycle.cli import app

    args = ["train", "--task", "classification", "--model", tiny_bert_dir, "--layer", "2"]
    args += ["--train", str(toy_classification["train"]), "--dev", str(toy_classification["dev"])]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert r.exit_code == 2 and "CUDA is not available here (use --device cpu" in r.output
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--precision", "fp16"])
    assert r.exit_code == 2 and "fp16 needs a CUDA device" in r.output
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("baseline", [None, "full-finetune"])
def test_bf16_training_really_computes_in_bf16(
    baseline: str | None, tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(
            task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
            dev=str(toy_classification["dev"]), out=str(tmp_path / precision), cache=str(tmp_path / f"c-{precision}"),
            epochs=1, lr=1e-3, batch_size=8, precision=precision, baseline=baseline,
        )  # fmt: skip
        losses[precision] = train(config, progress=False).losses
    diffs = [abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"], strict=True)]
    assert 0 < max(diffs) < 0.05, diffs  # the same steps, computed in another precision
