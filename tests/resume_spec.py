"""A test paper for kill-and-resume: two small trainings (rows), each a ``run.state.row`` that
checkpoints every few steps, run through the same machinery as the paper notebooks (papermill,
``reproduce.train.train``, ``runs/<paper>/<profile>/``). ``step_sleep`` slows each step so that a
test can kill the run in the middle of the second training."""

from pathlib import Path

from reproduce.config import Param, PaperSpec, register

SPEC = register(
    PaperSpec(
        name="resumable",
        notebook=str(Path(__file__).resolve().parent / "resume.ipynb"),
        ledger=str(Path(__file__).resolve().parent / "resume_claims.toml"),
        title="Kill-and-resume self-test (two tiny language models)",
        params={
            "steps": Param("int", 24, "optimizer steps per row", min=1),
            "rows": Param("list[str]", ["a", "b"], "rows to train (each its own seed)", min_len=1),
            "checkpoint_every": Param("int", 4, "steps between checkpoints", min=1),
            "step_sleep": Param("float", 0.0, "seconds of sleep per step (so a test can kill mid-training)", min=0.0),
        },
        profiles={"smoke": {}, "cpu": {}, "gpu": {}},
        artifacts={"Training": "1. Train"},
    )
)
