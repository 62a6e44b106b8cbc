"""reproduce.train: learning, checkpoint/resume, gradient accumulation, 2 CPU processes == 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_worker import GLOBAL_BATCH, lm_loss, make_batches, make_model
from _train_worker import main as worker_main
from reproduce import train as tr
from reproduce.train import TrainConfig, make_accelerator, train

WORKER = Path(__file__).resolve().parent / "_train_worker.py"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_optimizer(model, kind="adamw"):
    if kind == "sgd":  # not scale-invariant (Adam nearly is): exposes a wrong gradient scale
        return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-2)


def run(steps, *, dropout=0.1, batch_size=GLOBAL_BATCH, grad_accum=1, checkpoint_dir=None, checkpoint_every=0,
        eval_fn=None, max_grad_norm=1.0, total_steps=None, optimizer="adamw"):
    """Train a fresh seeded TinyLM with a linear-decay schedule over ``total_steps``."""
    model = make_model(dropout)
    optimizer = make_optimizer(model, optimizer)
    total = total_steps or steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / (total + 1))
    cfg = TrainConfig(steps=steps, grad_accum=grad_accum, max_grad_norm=max_grad_norm, log_every=2,
                      eval_every=2 if eval_fn else 0, checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir)
    torch.manual_seed(123)  # dropout draws
    result = train(model, optimizer, make_batches(batch_size), lm_loss, cfg, scheduler=scheduler, eval_fn=eval_fn, tokens_in="tokens")
    return model, result


def test_loss_decreases_and_history_is_kept():
    probe = next(make_batches(64, seed=99))

    def evaluate(model):
        assert not model.training and not torch.is_grad_enabled()  # eval mode, no gradients
        return {"valid_loss": lm_loss(model, probe).item(), "loss": -1.0}  # "loss" would clash with the training loss

    model, result = run(30, eval_fn=evaluate)
    assert result.steps == 30 and len(result.losses) == 30
    assert result.final_loss < 0.5 * result.losses[0], result.losses
    assert [h["step"] for h in result.history] == list(range(2, 31, 2))
    assert all("valid_loss" in h for h in result.history)  # eval_every=2 == log_every
    assert result.history[-1]["valid_loss"] < result.history[0]["valid_loss"]
    assert result.history[-1]["lr"] < result.history[0]["lr"]  # the scheduler stepped
    assert result.tokens_per_s > 0 and result.wall_time_s > 0
    assert all(h["eval_loss"] == -1.0 and h["loss"] > 0 for h in result.history)
    assert result.eval == {"valid_loss": result.history[-1]["valid_loss"], "loss": -1.0}
    assert model.training  # back in train mode after each evaluation


def test_same_seed_same_numbers():
    first, result_a = run(4)
    second, result_b = run(4)
    assert result_a.losses == result_b.losses
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    """Stop after 4 of 6 steps (checkpoints at 2 and 4), resume in a fresh process state: same weights."""
    full, full_result = run(6)
    run(4, checkpoint_dir=tmp_path, checkpoint_every=2, total_steps=6)  # the "interrupted" run
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000002", "step_000004"]
    assert (tmp_path / "step_000004" / "model.safetensors").is_file()
    (tmp_path / "step_000005").mkdir()  # a checkpoint killed mid-write has no trainer_state.json: ignored
    assert tr.latest_checkpoint(tmp_path) == tmp_path / "step_000004"

    torch.manual_seed(999)  # the restored RNG state, not this seed, must drive the remaining dropout draws
    model = make_model(0.1, seed=7)  # other initial weights: the checkpoint must replace them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / 7)
    cfg = TrainConfig(steps=6, log_every=2, checkpoint_every=2, checkpoint_dir=tmp_path)
    resumed = train(model, optimizer, make_batches(GLOBAL_BATCH), lm_loss, cfg, scheduler=scheduler)

    assert resumed.resumed_from == 4
    assert resumed.losses == full_result.losses
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - 6 / 7))
    for (name, a), b in zip(full.named_parameters(), model.parameters()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "step_000006" / tr.STATE_FILE).read_text())["step"] == 6


def test_resume_refuses_a_checkpoint_past_the_requested_steps(tmp_path):
    run(4, checkpoint_dir=tmp_path, checkpoint_every=4)
    with pytest.raises(ValueError, match="past steps=2"):
        run(2, checkpoint_dir=tmp_path, checkpoint_every=1)


def test_a_fresh_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path):
    run(4, checkpoint_dir=tmp_path, checkpoint_every=4)
    model = make_model()
    cfg = TrainConfig(steps=2, checkpoint_every=1, checkpoint_dir=tmp_path, resume=False)
    with pytest.raises(ValueError, match="holds another run's checkpoints \\(step_000004\\)"):
        train(model, make_optimizer(model), make_batches(GLOBAL_BATCH), lm_loss, cfg)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05], ids=["no-clipping", "clipping"])
def test_grad_accum_of_half_batches_equals_full_batches(max_grad_norm):
    """grad_accum=2 on half batches == grad_accum=1 on full batches (clipping acts on the accumulated gradient)."""
    def half_batches():
        for batch in make_batches(GLOBAL_BATCH):
            yield {k: v[: GLOBAL_BATCH // 2] for k, v in batch.items()}
            yield {k: v[GLOBAL_BATCH // 2:] for k, v in batch.items()}

    full, full_result = run(5, dropout=0.0, max_grad_norm=max_grad_norm, optimizer="sgd")
    model = make_model(0.0)
    optimizer = make_optimizer(model, "sgd")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / 6)
    cfg = TrainConfig(steps=5, grad_accum=2, max_grad_norm=max_grad_norm)
    accumulated = train(model, optimizer, half_batches(), lm_loss, cfg, scheduler=scheduler)

    assert full_result.final_loss < full_result.losses[0]
    torch.testing.assert_close(torch.tensor(accumulated.losses), torch.tensor(full_result.losses), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(full.named_parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_configs_and_batches_are_refused():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint_dir"):
        TrainConfig(steps=3, checkpoint_every=1)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        TrainConfig(steps=3, mixed_precision="fp8")
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        TrainConfig(steps=3, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="device must be"):
        make_accelerator("tpu")
    with pytest.raises(ValueError, match="a global batch of 0 rows"):
        tr.shard({"tokens": torch.zeros(0, 2)}, 0, 3)
    assert tr.shard({"tokens": torch.arange(2)}, 2, 3)["tokens"].tolist() == [0]  # no row of its own: row 0, weight 0
    with pytest.raises(ValueError, match="disagree on the batch size"):
        tr.shard({"tokens": torch.zeros(8, 2), "targets": torch.zeros(4, 2)}, 0, 2)
    model = make_model()
    batches = iter([next(make_batches(4))])
    with pytest.raises(ValueError, match="batches ran out at step 2 of 3"):
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, lm_loss, TrainConfig(steps=3))


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process: reset it around a test that changes it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_mixed_precision_trains_on_cpu(fresh_accelerator_state):
    model = make_model(0.0)
    cfg = TrainConfig(steps=20, mixed_precision="bf16")
    result = train(model, make_optimizer(model), make_batches(GLOBAL_BATCH), lm_loss, cfg)
    assert result.final_loss < 0.5 * result.losses[0]
    assert next(model.parameters()).dtype == torch.float32  # autocast: weights stay float32
    # the settings are declared once, in the config: the accelerator is made from it
    assert result.accelerator.mixed_precision == "bf16" and result.accelerator.device.type == "cpu"


def test_shard_splits_rows_contiguously():
    batch = {"tokens": torch.arange(8).view(4, 2), "note": "kept"}
    assert tr.shard(batch, 1, 2)["tokens"].tolist() == [[4, 5], [6, 7]]
    assert tr.shard(batch, 1, 2)["note"] == "kept"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_shards_cover_any_batch_size_once():
    for rows in range(3, 12):
        parts = [tr.shard({"tokens": torch.arange(rows)}, i, 3)["tokens"] for i in range(3)]
        assert torch.equal(torch.cat(parts), torch.arange(rows))
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("global_batch", [GLOBAL_BATCH, GLOBAL_BATCH + 1], ids=["even", "odd"])
def test_two_cpu_processes_equal_one_process(tmp_path, global_batch):
    """Data parallel (gloo, 2 processes, each its share of every global batch, 5 + 4 rows when odd) ==
    1 process on the whole batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(WORKER.parent), str(WORKER.parent.parent)])}
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                             str(WORKER), str(tmp_path / "two"), str(global_batch)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert double.returncode == 0, double.stderr[-3000:]
    worker_main(tmp_path / "one", global_batch)  # one process: here

    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    steps, micro = 5, 2
    assert one["rows_per_process"] == [steps * micro * global_batch]
    first, second = (global_batch + 1) // 2, global_batch // 2
    assert two["rows_per_process"] == [steps * micro * first, steps * micro * second]
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    assert one["losses"][-1] < one["losses"][0]
    weights_one = load_file(tmp_path / "one" / "weights.safetensors")
    weights_two = load_file(tmp_path / "two" / "weights.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-5, atol=1e-6, msg=name)
