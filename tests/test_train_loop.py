"""The training loop: learning, exact resume, interruption, reproducibility, DDP, run folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train_helpers import TINY, emt_cells, write

from tacegen.train import checkpoint
from tacegen.train.config import TrainConfig
from tacegen.train.loop import Interrupted, RunFolderError, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write(folder / "train.xyz", emt_cells(10, seed=11)), write(folder / "test.xyz", emt_cells(4, seed=12))


def config(data, out, **changes):
    values = dict(TINY, train=data[0], out=str(out), epochs=3)
    values.update(changes)
    return TrainConfig.from_sources(**values)


def weights(path):
    payload = checkpoint.read(path)
    return payload["model"], payload["ema"]["shadow"] if payload["ema"] else {}


def assert_same_weights(a, b, exact=True, tol=0.0):
    for (ma, ea), (mb, eb) in [(weights(a), weights(b))]:
        assert ma.keys() == mb.keys() and ea.keys() == eb.keys()
        for name in ma:
            if exact:
                assert torch.equal(ma[name], mb[name]), name
            else:
                torch.testing.assert_close(ma[name], mb[name], rtol=0, atol=tol)
        for name in ea:
            if exact:
                assert torch.equal(ea[name], eb[name]), name


def test_training_lowers_the_validation_error_and_writes_the_run_folder(data, tmp_path):
    out = train(config(data, tmp_path / "run", epochs=6, test=[data[1]]))
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 7 and header[0] == "epoch"
    forces = [float(r.split(",")[header.index("valid_forces_mae")]) for r in rows[1:]]
    assert forces[-1] < 0.7 * forces[0], forces
    for name in ("config.toml", "train.log", "last.pt", "best.pt", "test.json"):
        assert (out / name).is_file(), name
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["epoch"] == 6 and payload["format"] == checkpoint.FORMAT
    # the written configuration reproduces the run's options
    again = TrainConfig.from_sources(str(out / "config.toml"))
    assert again.to_dict() == config(data, tmp_path / "run", epochs=6, test=[data[1]]).to_dict()


def test_resume_at_an_epoch_boundary_is_bit_identical(data, tmp_path):
    train(config(data, tmp_path / "once", epochs=4))
    train(config(data, tmp_path / "twice", epochs=2))
    train(config(data, tmp_path / "twice", epochs=4, resume=True))
    assert_same_weights(tmp_path / "once" / "last.pt", tmp_path / "twice" / "last.pt")
    once = (tmp_path / "once" / "metrics.csv").read_text().splitlines()
    twice = (tmp_path / "twice" / "metrics.csv").read_text().splitlines()
    strip = [",".join(r.split(",")[:-1]) for r in once], [",".join(r.split(",")[:-1]) for r in twice]
    assert strip[0] == strip[1]  # all but the seconds column


def test_resume_from_the_middle_of_an_epoch_is_bit_identical(data, tmp_path, monkeypatch):
    from tacegen.train import loop

    train(config(data, tmp_path / "once", epochs=3))
    calls = {"n": 0}
    real = loop.distributed.broadcast_flag

    def stop_after_five(ctx, flag):
        calls["n"] += 1
        if calls["n"] == 4:  # SIGINT arrives during step 5 (epoch 2); the loop sees it after that step
            os.kill(os.getpid(), signal.SIGINT)
        return real(ctx, flag)

    monkeypatch.setattr(loop.distributed, "broadcast_flag", stop_after_five)
    with pytest.raises(Interrupted, match="epoch 1 step 2"):
        train(config(data, tmp_path / "cut", epochs=3))
    monkeypatch.setattr(loop.distributed, "broadcast_flag", real)
    payload = checkpoint.read(tmp_path / "cut" / "last.pt")
    assert (payload["epoch"], payload["step"]) == (1, 2)
    train(config(data, tmp_path / "cut", epochs=3, resume=True))
    assert_same_weights(tmp_path / "once" / "last.pt", tmp_path / "cut" / "last.pt")


def test_seed_makes_a_run_reproducible(data, tmp_path):
    train(config(data, tmp_path / "a", epochs=1))
    train(config(data, tmp_path / "b", epochs=1))
    train(config(data, tmp_path / "c", epochs=1, seed=1))
    assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "c" / "last.pt")


def test_existing_run_folder_is_refused_and_resume_options_are_checked(data, tmp_path):
    train(config(data, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a run .*--resume .*--force"):
        train(config(data, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    with pytest.raises(RunFolderError, match=r"option channels=8 differs from the run's 4"):
        train(config(data, tmp_path / "run", epochs=2, resume=True, channels=8))
    with pytest.raises(RunFolderError, match="cannot resume"):
        train(config(data, tmp_path / "fresh", epochs=1, resume=True))
    train(config(data, tmp_path / "run", epochs=1, force=True))


def test_bad_input_writes_nothing(data, tmp_path):
    """A run that fails on its input leaves no folder behind, and --force keeps the old run until it can start."""
    from tacegen.train.labels import DataError

    cells = emt_cells(3, seed=13)
    cells[1].info["REF_energy"] = float("inf")
    bad = write(tmp_path / "bad.xyz", cells)
    with pytest.raises(DataError, match=r"bad\.xyz: structure 1: label 'REF_energy' holds NaN or infinite"):
        train(config((bad,), tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    train(config(data, tmp_path / "old", epochs=1))
    before = (tmp_path / "old" / "last.pt").read_bytes()
    with pytest.raises(DataError):
        train(config((bad,), tmp_path / "old", force=True))
    assert (tmp_path / "old" / "last.pt").read_bytes() == before


def test_stage_two_switches_weights_and_learning_rate(data, tmp_path):
    out = train(config(data, tmp_path / "run", epochs=4, stage_two_start=0.5, stage_two_lr=1e-4,
                       scheduler="none"))
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == ["1", "1", "2", "2"]
    assert [float(r[2]) for r in rows] == [0.01, 0.01, 1e-4, 1e-4]


def test_max_atoms_per_batch_and_huber_loss_train(data, tmp_path):
    out = train(config(data, tmp_path / "run", epochs=1, max_atoms_per_batch=5, loss="huber", huber_delta=0.1))
    assert checkpoint.read(out / "last.pt")["step"] == 0


# ------------------------------------------------------------------------------- checkpoints

KILL_WHILE_WRITING = r"""
import os, sys, torch
from tacegen.train import checkpoint
path = sys.argv[1]
checkpoint.save(path, {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "w": torch.arange(5.0)})
def dies_half_way(obj, fh):
    fh.write(b"PK\x03\x04" + b"\0" * 1000)
    fh.flush()
    os._exit(9)            # killed while writing
torch.save = dies_half_way
checkpoint.save(path, {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "w": torch.zeros(5)})
"""


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    result = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(path)], capture_output=True)
    assert result.returncode == 9, result.stderr
    assert torch.equal(checkpoint.read(path)["w"], torch.arange(5.0))


def test_corrupt_truncated_and_foreign_checkpoints_are_refused(data, tmp_path):
    out = train(config(data, tmp_path / "run", epochs=1))
    blob = (out / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match=r"cut\.pt is truncated or corrupt"):
        checkpoint.load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a tacegen training checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "other.pt")
    # a checkpoint whose build differs from the generated source it was trained with
    payload = checkpoint.read(out / "last.pt")
    payload["source_hash"] = "0" * 64
    payload["build_dir"] = "/nonexistent"
    checkpoint.save(tmp_path / "foreign.pt", payload)
    with pytest.raises(checkpoint.CheckpointError, match=r"trained with generated source 000000000000"):
        checkpoint.load_checkpoint(tmp_path / "foreign.pt")


def _run_cli(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tacegen", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _cli_args(data, out, epochs):
    args = ["train", "--train", data[0], "--out", str(out), "--epochs", str(epochs)]
    for key, value in TINY.items():
        flag = "--correlation" if key == "nu" else "--" + key.replace("_", "-")  # torchrun takes --nu as its own
        if value is True:
            args.append(flag)
        else:
            args += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return args


def test_sigint_saves_a_consistent_checkpoint_and_resume_finishes(data, tmp_path):
    out = tmp_path / "run"
    proc = _run_cli(_cli_args(data, out, 200))
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err
    payload = checkpoint.read(out / "last.pt")
    assert 1 <= payload["epoch"] < 200
    done = _run_cli(_cli_args(data, out, payload["epoch"] + 1) + ["--resume"])
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert checkpoint.read(out / "last.pt")["epoch"] == payload["epoch"] + 1


def test_two_processes_give_the_weights_of_one(data, tmp_path):
    """torchrun with 2 gloo processes and global batch B equals 1 process with batch B (float64)."""
    one = _run_cli(_cli_args(data, tmp_path / "one", 2) + ["--batch-size", "4"])
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29500 + os.getpid() % 1000), "-m", "tacegen", *_cli_args(data, tmp_path / "two", 2),
                          "--batch-size", "4"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_weights(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt", exact=False, tol=1e-10)
    # the runs did move the weights (a run that never stepped would also "agree")
    torch.manual_seed(TINY.get("seed", 0))
    first = checkpoint.read(tmp_path / "one" / "last.pt")["model"]
    fresh = checkpoint.construct(checkpoint.read(tmp_path / "one" / "last.pt")["build_dir"],
                                 checkpoint.read(tmp_path / "one" / "last.pt")["model_kwargs"]).state_dict()
    assert max(float((first[k] - fresh[k]).abs().max()) for k in fresh) > 1e-4
