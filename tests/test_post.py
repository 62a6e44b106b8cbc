"""`python -m reproduce post`: Markdown posts (and an HTML preview) from the committed records only."""

from __future__ import annotations

import re
import time

import pytest

from reproduce import __main__ as cli
from reproduce import config, post, results


@pytest.fixture
def current(monkeypatch):
    """The committed records, taken as current (whether they are is tested below and by `verify`)."""
    monkeypatch.setattr(results, "stale_paths", lambda record: [])


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_every_paper_gets_a_post_from_its_record_in_seconds(current, tmp_path, lang, capsys):
    t0 = time.perf_counter()
    assert cli.main(["post", "all", "--lang", lang, "--out", str(tmp_path)]) == 0
    assert time.perf_counter() - t0 < 10  # the four posts (the issue asks < 10 s for both languages on an idle machine)
    assert cli.main(["post", "all", "--lang", lang, "--out", str(tmp_path), "--html"]) == 0
    for paper in config.available_papers():
        text = (tmp_path / lang / f"{paper}.md").read_text(encoding="utf-8")
        record = results.load_first(paper, post.PROFILES)
        assert text.startswith("---\n") and f"paper: {paper}" in text and record["provenance"]["git_commit"] in text
        assert f"`{record['command']}`" in text
        heading = post.TEXT[lang]
        for section in ("claims", "how", "table", "figures", "deviations", "failed", "provenance"):
            assert f"## {heading[section]}" in text, section
        # every claim of the record is in the table, with its estimate as the record stores it
        for c in record["claims"]:
            assert post._md(c["text"]) in text
        # figures: relative links that exist, with alt text
        links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", text)
        assert links and all(alt and (tmp_path / lang / link).resolve().is_file() for alt, link in links)
        assert (tmp_path / lang / f"{paper}.html").is_file()
    if lang == "ko":
        assert "성립" in (tmp_path / "ko" / "tova.md").read_text(encoding="utf-8")


def test_summaries_type_no_number():
    """What a post says the paper claims is words; every number comes from the record."""
    for paper, langs in post.summaries().items():
        for lang, text in langs.items():
            stripped = re.sub(r"(Table|Tables|Figure|Section|표|그림)\s*\d+(\s*(and|,)\s*\d+)?|\d+절|H2O", "", text)
            assert not re.search(r"\d", stripped), (paper, lang, stripped)


def test_stale_incomplete_or_dirty_records_are_refused_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(results, "stale_paths", lambda record: ["reproduce/tova/policies.py"])
    assert cli.main(["post", "tova", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stale" in err and "verify tova" in err
    assert not (tmp_path / "en").exists()  # nothing half-written
    monkeypatch.setattr(results, "stale_paths", lambda record: [])
    real = results.load_first
    monkeypatch.setattr(results, "load_first", lambda *a, **k: {**real(*a, **k), "complete": False})
    with pytest.raises(post.PostError, match="incomplete"):
        post.markdown("tova", "en", tmp_path)
    assert cli.main(["post", "nosuchpaper", "--out", str(tmp_path)]) == 2
