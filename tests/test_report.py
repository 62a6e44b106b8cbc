"""The report: README tables and results/REPORT.md rendered from results files alone (reproduce/report.py)."""

import json

import pytest

import pipeline_spec  # noqa: F401
from reproduce import claims, config, report, results


def _record(output_dir, profile="cpu", ours=0.5):
    params = config.resolve("pipeline", profile)
    run = results.Run(params)
    run.claim("fit", artifact="Eq. (1)", section="1. Fit", text="the loss falls", ours=ours, relation="<", threshold=1.0,
              source="paper: eq. (1)", paper="falls")
    run.claim("gap", artifact="Eq. (1)", section="1. Fit", text="a beats b (paired)", relation=">", threshold=0.0,
              ours=claims.Estimate(0.2, -0.1, 0.5, "paired t over 3 seeds", 3), source="ours: any gain", note="small scale")
    run.claim("bleu", artifact="Eq. (1)", section="1. Fit", text="BLEU gain", ours=1.0, relation=">", threshold=0.0,
              source="paper: §5", precondition=claims.Precondition("BLEU", 0.8, ">=", 5.0, "ours: signal"))
    return run.save()


def test_table_rows_come_from_records_and_missing_artifacts_say_so(output_dir):
    _record(output_dir)
    records = report.best_records()
    text = report.table(records)
    assert "| pipeline | paper | Eq. (1) | 1. Fit | the loss falls | falls | 0.5 | < 1 | paper: eq. (1) | holds |" in text
    assert "| 0.2 [-0.1, 0.5] | > 0 | ours: any gain | inconclusive (small scale) |" in text
    assert "not testable (BLEU = 0.8, needs >= 5)" in text
    # the headline: the paper relations counted per paper, controls / checks / exploratory apart
    assert "| pipeline | cpu | **1 / 3, 1 inconclusive, 1 not testable** | 0 / 0 | 0 / 0 | 0 / 0 |" in text
    assert "| pipeline | – | Figure 1 | 1. Fit |" in text and "not run yet" in text  # declared artifact, no claim
    assert "`python -m reproduce run pipeline --profile cpu`" in text
    ko = report.table(records, "ko")
    assert "성립" in ko and "판정 불가" in ko and "검증 불가" in ko and "아직 실행 안 됨" in ko


def test_a_record_is_stale_when_the_papers_code_changed_after_its_commit(output_dir):
    path = _record(output_dir)
    record = json.loads(path.read_text())
    assert results.stale_paths(record) == results.stale_paths(record)  # deterministic
    record["provenance"]["git_commit"] = "0" * 40  # a commit this repository does not have
    assert results.stale_paths(record) == ["<unknown commit>"]
    assert "**stale**" in report.report_markdown([record], "t") and "(stale)" in report.table([record])
    first = results._git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]  # before any paper code existed
    record["provenance"]["git_commit"] = first
    record["paper"] = "tova"
    assert any(p.startswith(("reproduce/tova", "notebooks/04_tova", "reproduce/configs/tova")) for p in results.stale_paths(record))


def test_smoke_records_stay_out_of_the_committed_report(output_dir):
    _record(output_dir, profile="smoke", ours=0.25)
    written = report.write_all()
    assert (output_dir / "results" / "REPORT.md").read_text().count("0.25") == 0
    assert "0.25" in (output_dir / "runs" / "REPORT.smoke.md").read_text()
    assert all("README" not in p.name for p in written)  # a redirected output never touches the READMEs


def test_gpu_record_wins_over_cpu(output_dir):
    _record(output_dir, profile="cpu", ours=0.5)
    _record(output_dir, profile="gpu", ours=0.125)
    (chosen,) = report.best_records()
    assert chosen["profile"] == "gpu"


def test_readme_markers_are_replaced_and_required():
    text = f"intro\n{report.START}\nold\n{report.END}\noutro\n"
    assert report.replace_between_markers(text, "new\n") == f"intro\n{report.START}\nnew\n{report.END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        report.replace_between_markers("no markers", "x")


@pytest.mark.parametrize("readme", list(report.READMES.values()), ids=list(report.READMES))
def test_committed_readmes_are_in_sync_with_committed_results(readme):
    """The READMEs' tables equal what `python -m reproduce report` renders from results/ now."""
    lang = next(k for k, v in report.READMES.items() if v == readme)
    text = readme.read_text(encoding="utf-8")
    expected = report.replace_between_markers(text, report.table(report.best_records(root=report.REPO_ROOT / "results"), lang))
    assert text == expected, "run `python -m reproduce report` and commit the READMEs"


def test_the_hardware_line_names_the_host_and_its_speed_where_the_record_has_them(output_dir):
    import torch  # noqa: F401 - provenance measures the host only in a process that has torch (a record's)

    record = json.loads(_record(output_dir).read_text())  # a cpu-profile record: it measured its host
    speed = record["provenance"]["cpu_speed"]["matmul_gflops_1thread"]
    line = next(s for s in report.report_markdown([record], "t").splitlines() if s.startswith("- hardware:"))
    assert f"{speed} GFLOP/s on one thread (fp32 matmul)" in line and "wall time" in line
    for key in ("cpu_speed", "cpu_id"):  # the records written before either existed
        record["provenance"].pop(key, None)
    line = next(s for s in report.report_markdown([record], "t").splitlines() if s.startswith("- hardware:"))
    assert "GFLOP/s" not in line and "family" not in line and "wall time" in line
