"""Predict the cpu record's wall time from its jobs (amendment 1 of ``t3_levers.md``): a job-by-job simulation.

The record runs two processes (``reproduce.pool``, ``t3_workers`` 1): the worker first trains Table 2's
source-blind control, then takes Table 3 jobs from the front of the queue (rows in ``t3_rows`` order, seeds
inside); the main process trains and decodes Table 2, then takes Table 3 jobs from the back. Seconds per
Table 3 job: the training seconds that ``t3_power.py`` measured with the record's own code (mean over its
seeds) x 1.08 (the record at 690c170 trained its rows 1.08x slower than that calibration), plus what a job
does after training: 8 s at the old design (beam decode and scoring of 300 dev verses), 13 s at design D3
(400 dev verses, + 1,200 held-out verses; ``t3_levers.py``: ``wall_time_s - train_s`` less its three extra
scorings). Table 2 (main) and its control (worker) scale with their steps. The model is checked on the record
at 690c170 and its error there (+1.3 min) is added to every prediction.

    .venv/bin/python calibration/transformer/t3_schedule.py

Second part (``t3_heldout.md``, "The budget"): the same simulation with the record at cacd146 as its only input,
the one that missed the budget (every part 5-11 % slower than the first part's inputs). Its Table 3 runs train
``wall_time_s / seeds`` of its ``t3.table``; the minutes below are from its logs' times (the worker's Table 2
control ended 857 s after the start with its decoding, the main process joined Table 3 at 1,155 s, the last job's
training ended at 2,717 s, the run at 2,737 s): a job's after-training part (beam decode of the dev verses,
scoring) fits 9.9 s on the worker's 17 jobs and 10.0 s on the main process's 11, so 10 s. The record's pool left
the main process idle for its last 5.6 minutes (``reproduce/pool.py``: the worker's last two jobs had both been
handed to it); this simulation is the fixed pool, in which a free process takes the next job.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "runs"
ROOT = Path(__file__).resolve().parents[2]
RECORD_COMMIT = "ffc15ab"  # the commit of the record at 690c170
SLOWER, AFTER_OLD, AFTER_D3 = 1.08, 8.0, 13.0
# the record at 690c170 (3,400 steps; its notebook's cell durations and its logs' times): the worker's control
# ended 892 s after the start, the main process joined Table 3 after 1,290 s, the run ended after 2,236 s
CONTROL_END, MAIN_JOINS, STEPS, CONTROL_S, TABLE2_S, MEASURED = 892.0, 1290.0, 3400, 877.0, 1173.0, 2236.0
END = 10.0  # figures and the record's save after the last job


def makespan(jobs: list[float], worker_free: float, main_free: float) -> float:
    i, j = 0, len(jobs) - 1
    while i <= j:
        if worker_free <= main_free:
            worker_free, i = worker_free + jobs[i], i + 1
        else:
            main_free, j = main_free + jobs[j], j - 1
    return max(worker_free, main_free) + END


def jobs(rows: list[str], seconds: dict[str, float], seeds: int, bigger_seeds: int = 0) -> list[float]:
    bigger = ("C: N+", "C: d_model*2", "C: d_ff*2")
    return [seconds[r] for r in rows for _ in range(bigger_seeds if bigger_seeds and r in bigger else seeds)]


def starts(steps: int) -> tuple[float, float]:
    """When the worker and the main process are free for Table 3 with Table 2 at ``steps`` steps."""
    f = steps / STEPS
    return CONTROL_END - CONTROL_S * (1 - f), MAIN_JOINS - TABLE2_S * (1 - f)


CACD146 = "6703f18"  # the commit of the record at cacd146
CONTROL_FREE, MAIN_FREE, STEPS_NOW, CONTROL_PER_STEP, TABLE2_PER_STEP = 857.0, 1155.0, 2800, 800.0 / 2800, 1029.0 / 2800
AFTER, HELD_1200 = 10.0, 2.0  # a job after its training; scoring 1,200 more held-out verses (t3_levers.md)


def after_cacd146(budget_s: float = 45 * 60) -> None:
    shown = subprocess.run(["git", "show", f"{CACD146}:results/transformer/cpu.json"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    record = json.loads(shown)
    table = record["measured"]["t3.table"]
    train = {r: v["wall_time_s"] / len(v["seeds"]) for r, v in table.items()}
    rows = list(table)
    print(f"\nrecord at cacd146: {record['wall_time_s'] / 60:.1f} min measured; Table 3 seconds per run "
          f"{ {r: round(s, 1) for r, s in train.items()} }")
    for held in (1200, 2400):
        job = {r: s + AFTER + HELD_1200 * (held - 1200) / 1200 for r, s in train.items()}
        for steps in (2800, 2600, 2500, 2400):
            worker = CONTROL_FREE - CONTROL_PER_STEP * (STEPS_NOW - steps)
            main_ = MAIN_FREE - TABLE2_PER_STEP * (STEPS_NOW - steps)
            w = makespan([job[r] for r in rows for _ in table[r]["seeds"]], worker, main_)
            print(f"  held-out {held}, Table 2 {steps} steps: {w / 60:.1f} min ({(budget_s - w) / 60:+.1f} min to the budget)")


def main() -> None:
    power = [json.loads(line) for line in (RUNS / "t3_power.jsonl").read_text().splitlines()]
    train = {r: statistics.fmean(d["wall_time_s"] for d in power if d["row"] == r and d["tag"] in ("new_rows", "more_seeds", "same_data"))
             for r in {d["row"] for d in power}}
    # check: the record at 690c170 from its own training seconds
    shown = subprocess.run(["git", "show", f"{RECORD_COMMIT}:results/transformer/cpu.json"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    table = json.loads(shown)["measured"]["t3.table"]
    own = {r: v["wall_time_s"] / len(v["seeds"]) + AFTER_OLD for r, v in table.items()}
    predicted = makespan(jobs(list(table), own, 5), CONTROL_END, MAIN_JOINS)
    error = MEASURED - predicted
    print(f"check, record at 690c170: predicted {predicted / 60:.1f} min, measured {MEASURED / 60:.1f} min "
          f"(error {error / 60:+.1f} min, added below)")
    d3 = {r: SLOWER * s + AFTER_D3 for r, s in train.items()}
    rows = ["base", "A: h=1", "C: N-", "C: d_ff*2", "E: learned", "source-blind"]
    print("seconds per job at D3:", {r: round(d3[r]) for r in rows})
    for steps in (3400, 3000, 2800):
        for bigger_seeds in (3, 0):
            w = makespan(jobs(rows, d3, 5, bigger_seeds), *starts(steps)) + error
            print(f"Table 2 {steps} steps, d_ff*2 on {bigger_seeds or 5} seeds: {w / 60:.1f} min")
    after_cacd146()


if __name__ == "__main__":
    main()
