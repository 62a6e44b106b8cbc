"""The report: README tables and results/REPORT.md rendered from results files alone (reproduce/report.py)."""

import pytest

import pipeline_spec  # noqa: F401
from reproduce import config, report, results


def _record(output_dir, profile="cpu", ours=0.5):
    params = config.resolve("pipeline", profile)
    run = results.Run(params)
    run.claim("fit", artifact="Eq. (1)", section="1. Fit", text="the loss falls", ours=ours, relation="<", target=1.0, paper="falls")
    run.claim("order", artifact="Eq. (1)", section="1. Fit", text="a < b", ours={"a": 2.0, "b": 1.0}, relation="ordering",
              target=["a", "b"], note="b won at our scale")
    return run.save()


def test_table_rows_come_from_records_and_missing_artifacts_say_so(output_dir):
    _record(output_dir)
    records = report.best_records()
    text = report.table(records)
    assert "| pipeline | Eq. (1) | 1. Fit | the loss falls | falls | 0.5 | < 1 | pass |" in text
    assert "**fail** (b won at our scale)" in text and "order a < b" in text
    assert "| pipeline | Figure 1 | 1. Fit |" in text and "not run yet" in text  # declared artifact, no claim
    assert "`python -m reproduce run pipeline --profile cpu`" in text
    ko = report.table(records, "ko")
    assert "통과" in ko and "**실패**" in ko and "아직 실행 안 됨" in ko


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
