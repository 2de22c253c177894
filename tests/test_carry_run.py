"""tools/carry_run.py: a training state split into < 9 MB safetensors shards comes back identical, and the ledger adds up."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def carry(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("carry_run", ROOT / "tools" / "carry_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "LEDGER", tmp_path / "ledger.csv")
    monkeypatch.setattr(module, "SHARD_BYTES", 200 * 1024)  # force several shards
    return module


def fake_run(folder: Path, step: int) -> dict:
    torch.manual_seed(step)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.Conv2d(64, 64, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(1, 3, 8, 8)).sum().backward()
    opt.step()
    state = {
        "step": step,
        "best": -math.inf,
        "config": json.dumps({"model": "student-nano", "batch": 4, "size": 64}),
        "modules": {"model": net.state_dict()},
        "optims": {"model": opt.state_dict()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "state.pt")
    (folder / "last.json").write_text(json.dumps({"git_commit": "abc"}))
    return state


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, dict):
        assert list(a) == list(b)  # key types too (Adam's state uses int keys)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isinf(a):
        assert a == b
    else:
        assert a == b


def test_pack_unpack_round_trip_and_ledger(carry, tmp_path, capsys):
    state = fake_run(tmp_path / "run", 40)
    carry.pack(tmp_path / "run", tmp_path / "res", "test cpu", 12.0, "")
    shards = sorted((tmp_path / "res").glob("state-*.safetensors"))
    assert len(shards) > 1 and all(s.stat().st_size < 210 * 1024 for s in shards)
    carry.unpack(tmp_path / "res", tmp_path / "again")
    assert_same(state, torch.load(tmp_path / "again" / "state.pt", weights_only=True))
    with pytest.raises(SystemExit, match="already exists"):
        carry.unpack(tmp_path / "res", tmp_path / "again")
    fake_run(tmp_path / "run", 100)
    carry.pack(tmp_path / "run", tmp_path / "res", "test cpu", 30.0, "")
    rows = carry.read_ledger()
    assert [(r["step_from"], r["step_to"], r["samples"]) for r in rows] == [("0", "40", "160"), ("40", "100", "240")]
    carry.summary()
    assert "student-nano" in capsys.readouterr().out.splitlines()[-1]


def test_pack_without_state_names_the_file(carry, tmp_path):
    with pytest.raises(SystemExit, match="no training state"):
        carry.pack(tmp_path, tmp_path / "res", "cpu", None, "")


@pytest.mark.parametrize("keep", ["weights", "logs"])
def test_pack_a_finished_run_without_its_state(carry, tmp_path, keep):
    """A finished fine-tune keeps its best weights and logs, an ablation arm its logs: no optimiser
    shards, nothing to resume, but the ledger row all the same."""
    fake_run(tmp_path / "run", 30)
    (tmp_path / "run" / "best.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "val.csv").write_text("step,selection_ssim\n30,0.8\n")
    carry.pack(tmp_path / "run", tmp_path / "res", "test cpu", 5.0, "", keep)
    held = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert held == (["best.safetensors"] if keep == "weights" else []) + ["last.json", "val.csv"]
    assert [r["step_to"] for r in carry.read_ledger()] == ["30"]
    with pytest.raises(SystemExit, match="state"):
        carry.unpack(tmp_path / "res", tmp_path / "again")
