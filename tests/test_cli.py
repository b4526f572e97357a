"""The command line: build, info, verify, and errors with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from embrecycle.cache.shard import shard_paths
from embrecycle.cli import app

runner = CliRunner()


def _data(tmp_path: Path, texts: list[str]) -> Path:
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) + json.dumps({"text": ""}) + "\n")
    return p


def test_build_info_verify(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    data, out = _data(tmp_path, texts[:20]), tmp_path / "cache"
    args = ["cache", "build", "--model", tiny_bert_dir, "--layer", "2", "--data", str(data), "--out", str(out), "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"{len(set(texts[:20]))} computed" in r.output and "1 skipped (empty)" in r.output
    r = runner.invoke(app, args)
    assert "0 computed" in r.output

    r = runner.invoke(app, ["cache", "info", str(out), "--json"])
    info = json.loads(r.stdout)
    assert info["settings"]["layer"] == 2 and info["stats"]["documents"] == len(set(texts[:20]))
    assert "layer       2 of 4" in runner.invoke(app, ["cache", "info", str(out)]).output

    assert runner.invoke(app, ["cache", "verify", str(out)]).exit_code == 0
    hidden = shard_paths(out, "local-00000")["hidden"]
    raw = bytearray(hidden.read_bytes())
    raw[10] ^= 0xFF
    hidden.write_bytes(bytes(raw))
    r = runner.invoke(app, ["cache", "verify", str(out)])
    assert r.exit_code == 1 and "local-00000" in r.output


def test_errors_exit_2_with_a_message(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    data = _data(tmp_path, texts[:3])
    r = runner.invoke(
        app,
        [
            "cache",
            "build",
            "--model",
            str(tmp_path / "nope"),
            "--layer",
            "1",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 2 and "cannot load model" in r.output
    r = runner.invoke(
        app,
        ["cache", "build", "--model", tiny_bert_dir, "--layer", "9", "--data", str(data), "--out", str(tmp_path / "c")],
    )
    assert r.exit_code == 2 and "layer=9 is out of range" in r.output
    r = runner.invoke(app, ["cache", "info", str(tmp_path)])
    assert r.exit_code == 2 and "manifest.json is missing" in r.output
