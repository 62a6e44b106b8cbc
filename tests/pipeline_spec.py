"""The runner's own test paper: a small deterministic computation that exercises the pipeline
(parameters, validation, runtime, result record with claims, a figure) without a real paper."""

from pathlib import Path

from reproduce.config import Param, PaperSpec, register

SPEC = register(
    PaperSpec(
        name="pipeline",
        notebook=str(Path(__file__).resolve().parent / "pipeline.ipynb"),
        ledger=str(Path(__file__).resolve().parent / "pipeline_claims.toml"),
        title="Pipeline self-test (least squares by gradient descent)",
        params={
            "steps": Param("int", 200, "gradient-descent steps", min=1, max=100_000),
            "n": Param("int", 64, "number of samples", min=2),
            "lr": Param("float", 0.1, "learning rate", min=0.0, max=10.0),
            "fail": Param("bool", False, "raise in the fit cell (tests the runner's error report)"),
            "hub_dataset": Param("str", "", "a hub dataset the run declares (checked before the kernel starts; "
                                 "the notebook does not read it): tests the preflight"),
        },
        hub_datasets=lambda v: [{"param": "hub_dataset", "id": v["hub_dataset"], "split": "train",
                                 "columns": ["text"]}] if v["hub_dataset"] else [],
        profiles={"smoke": {"steps": 50}, "cpu": {}, "gpu": {"steps": 1000}},
        artifacts={"Eq. (1)": "1. Fit", "Figure 1": "1. Fit"},
    )
)
