"""``python -m reproduce post <paper|all> --lang ko|en [--out DIR] [--html]``: a blog post per paper.

Everything in a post comes from the committed record (``results/<paper>/<profile>.json``), its
figures, the claims ledger and the package's own text; no number is typed anywhere. A post has:
front matter; what the paper claims; how it was reproduced (scale, data, model, hardware, wall time,
the exact command); the paper-vs-ours table, paper relations first (paper value, ours with its
interval, verdict, kind); the figures (PNG, relative links, alt text); the deviations from the paper;
what did not reproduce and why; provenance (commit, date). Korean terms come from the project's
glossary (:mod:`reproduce.glossary`); the claims' own wording stays as the ledger writes it.

A record that is incomplete, made from a dirty tree, or stale (its code changed since it ran or was
last verified: ``python -m reproduce verify``) is refused with a one-line reason.
"""

from __future__ import annotations

import ast
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import claims, config, glossary, report, results
from .paths import REPO_ROOT, figures_dir

PROFILES = ("gpu", "cpu")  # the post is about the largest-scale record there is
DEFAULT_OUT = REPO_ROOT / "posts"

TEXT = {
    "en": {"claims": "What the paper claims", "how": "How it was reproduced", "table": "The paper and our run",
           "figures": "Figures", "deviations": "Deviations from the paper", "failed": "What did not reproduce, and why",
           "provenance": "Provenance", "command": "Command", "hardware": "Hardware", "wall": "Wall time",
           "minutes": "min", "scale": "Scale", "threads": "{threads} thread(s), {processes} process(es)", "params": "Every parameter of the run", "artifact": "Artifact",
           "paper_value": "Paper", "ours": "Ours [95 % interval]", "relation": "Relation", "reason": "Why",
           "commit": "Commit", "date": "Run ended", "verified": "Verified current at", "packages": "Packages",
           "all_hold": "Every paper relation of this run holds.", "headline": "Paper relations that hold",
           "rule": "Only claims of kind *paper* count as reproduction; controls and checks test the set-up.",
           "glossary_note": "", "no_deviation": "None listed."},
    "ko": {"claims": "논문의 주장", "how": "재현 방법", "table": "논문과 우리 결과",
           "figures": "그림", "deviations": "논문과 다른 점", "failed": "재현되지 않은 것과 그 이유",
           "provenance": "출처", "command": "명령", "hardware": "하드웨어", "wall": "소요 시간",
           "minutes": "분", "scale": "규모", "threads": "스레드 {threads}개, 프로세스 {processes}개", "params": "실행의 모든 파라미터", "artifact": "대상",
           "paper_value": "논문", "ours": "우리 결과 [95 % 구간]", "relation": "관계", "reason": "이유",
           "commit": "커밋", "date": "실행 종료", "verified": "현재 코드로 검증된 커밋", "packages": "패키지",
           "all_hold": "이 실행에서 논문의 관계는 모두 성립합니다.", "headline": "성립한 논문의 관계",
           "rule": "종류가 *논문*인 주장만 재현으로 셉니다. 대조군과 검사는 실험 설정을 확인합니다.",
           "glossary_note": "주장의 문구와 논문과 다른 점은 원문(영어) 그대로 옮깁니다.", "no_deviation": "없음."},
}


class PostError(ValueError):
    """A post cannot be written from this record; the message is one line."""


def summaries() -> dict[str, dict[str, str]]:
    """What each paper claims, in a few sentences per language (``reproduce/posts.toml``; no numbers)."""
    with (Path(__file__).with_name("posts.toml")).open("rb") as f:
        return tomllib.load(f)


def record_for(paper: str, root: Path | None = None) -> dict[str, Any]:
    """The record a post is made from, or :class:`PostError` naming why none can be used."""
    config.get_spec(paper)
    record = results.load_first(paper, PROFILES, root)
    if record is None:
        raise PostError(f"{paper}: no committed record (results/{paper}/cpu.json); run "
                        f"`python -m reproduce run {paper} --profile cpu` first")
    where = f"results/{paper}/{record['profile']}.json"
    if not record.get("complete"):
        raise PostError(f"{paper}: {where} is incomplete (the run stopped before its last section); rerun it")
    if record["provenance"].get("git_dirty"):
        raise PostError(f"{paper}: {where} was made from a tree with uncommitted changes; rerun it from a clean tree")
    stale = results.stale_paths(record)
    if stale:
        raise PostError(f"{paper}: {where} is stale: {len(stale)} of its files changed since it ran "
                        f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); rerun it, or "
                        f"`python -m reproduce verify {paper}` if the numbers cannot have moved")
    return record


def deviations(paper: str) -> list[str]:
    """The package's declared deviations: its docstring's "Deviations from the paper" list, then every
    ``Deviation:`` sentence of its modules (in file order)."""
    package = REPO_ROOT / "reproduce" / paper
    found: list[str] = []
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
    if m := re.search(r"Deviations from the paper[^:\n]*:\s*\n?(.*?)(?:\n\s*\n|\Z)", doc, re.S):
        found += [" ".join(item.split()) for item in re.split(r"\n\s*-\s+", "\n" + m.group(1)) if item.strip()]
    for path in sorted(package.glob("*.py")):
        for m in re.finditer(r"Deviation(?: from [^:]{0,40})?:\s*(.+?)(?:\.\s|\.$|\n\s*\n|\"\"\")", path.read_text(encoding="utf-8"), re.S):
            text = " ".join(re.sub(r"^\s*#\s?", "", line) for line in m.group(1).splitlines()).strip()
            text = " ".join(text.split())
            if text and text not in found and len(text) > 15:
                found.append(f"{text}. (`reproduce/{paper}/{path.name}`)")
    return found


def _md(value: Any) -> str:
    return report.fmt(value)


def _verdict(c: Mapping[str, Any], lang: str) -> str:
    word = glossary.term(c["verdict"], lang)
    return f"**{word}**" if c["verdict"] == "contradicted" else word


def _reason(c: Mapping[str, Any]) -> str:
    ours, relation = claims.estimate_text(c["ours"]), claims.relation_text(c)
    parts = {"inconclusive": [f"the interval of ours, {ours}, reaches across {relation}"],
             "contradicted": [f"ours, {ours}, is on the other side of {relation}"]}.get(c["verdict"], [])
    pre = c.get("precondition")
    if pre and not pre["holds"]:
        parts.append(f"{pre['text']} = {claims.short_text(pre['value'])} (needs {pre['relation']} {claims.short_text(pre['threshold'])})")
    if c.get("rule"):
        parts.append(c["rule"])
    if c.get("note"):
        parts.append(str(c["note"]))
    return "; ".join(parts) or "–"


def figure_captions(paper: str) -> dict[str, str]:
    """``{figure name: the first line of its plot function's docstring}``, in the paper's ``FIGURES``
    order, read from the plots module's source (importing it would import the paper's package)."""
    module = config.get_spec(paper).plots
    tree = ast.parse((REPO_ROOT / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8"))
    docs = {f.name: (ast.get_docstring(f) or "").strip() for f in tree.body if isinstance(f, ast.FunctionDef)}
    table = next(node.value for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 and any(getattr(t, "id", None) == "FIGURES" for t in getattr(node, "targets", [getattr(node, "target", None)])))
    return {ast.literal_eval(k): (docs.get(getattr(v, "id", ""), "") or ast.literal_eval(k).replace("_", " ")).splitlines()[0].rstrip(".")
            for k, v in zip(table.keys, table.values)}


def _figures(paper: str, lang: str, out_dir: Path) -> list[tuple[str, str]]:
    """``(alt text, relative link)`` of every figure of the paper in ``lang`` that exists."""
    base = figures_dir() / paper / ("ko" if lang == "ko" else "")
    return [(alt, Path(os.path.relpath(base / f"{name}.png", out_dir)).as_posix())
            for name, alt in figure_captions(paper).items() if (base / f"{name}.png").is_file()]


def markdown(paper: str, lang: str = "en", out_dir: Path = DEFAULT_OUT, root: Path | None = None) -> str:
    """The post of ``paper`` in ``lang``, with links relative to ``out_dir`` (where it is written)."""
    if lang not in glossary.LANGS:
        raise PostError(f"lang {lang!r} is not one of {glossary.LANGS}")
    record = record_for(paper, root)
    spec, t, prov = config.get_spec(paper), TEXT[lang], record["provenance"]
    judged = [c for c in report.judged(record) if c["status"] != "withdrawn"]
    tally = report.tally(record)["paper"]
    summary = summaries()[paper][lang]
    minutes = record["wall_time_s"] / 60
    lines = ["---", f"title: \"{spec.title}\"", f"paper: {paper}", f"lang: {lang}", f"profile: {record['profile']}",
             f"date: {record['ended'][:10]}", f"commit: {prov['git_commit'][:10]}", "---", "",
             f"# {spec.title}", "", f"*{spec.description}*", "",
             f"## {t['claims']}", "", summary.strip(), "",
             f"{t['headline']}: **{tally['holds']} / {sum(tally.values())}**. {t['rule']}", ""]
    lines += [f"## {t['how']}", "",
              f"- {t['command']}: `{record['command']}`",
              f"- {t['hardware']}: {prov.get('device', '?')}, " + t["threads"].format(threads=prov.get("threads", "?"),
                                                                                    processes=prov.get("processes", 1)),
              f"- {t['wall']}: {minutes:.1f} {t['minutes']}"]
    scale = sorted({c["note"] for c in judged if str(c.get("note", "")).startswith("our scale")})
    lines += [f"- {t['scale']}: {s}" for s in scale]
    lines += ["", f"<details><summary>{t['params']}</summary>", "", "| parameter | value |", "|---|---|"]
    lines += [f"| `{k}` | {_md(v)} |" for k, v in record["params"].items()]
    lines += ["", "</details>", ""]
    head = [glossary.term("claim", lang), t["artifact"], t["paper_value"], t["ours"], t["relation"],
            glossary.term("verdict", lang), glossary.term("kind", lang)]
    lines += [f"## {t['table']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in judged:
        lines.append("| " + " | ".join([_md(c["text"]), _md(c["artifact"]), _md(c.get("paper")), _md(claims.estimate_text(c["ours"])),
                                        _md(claims.relation_text(c)), _verdict(c, lang),
                                        glossary.term(c["kind"], lang) + (f" ({glossary.term('exploratory', lang)})"
                                                                          if c["status"] == "exploratory" else "")]) + " |")
    if t["glossary_note"]:
        lines += ["", f"*{t['glossary_note']}*"]
    lines += ["", f"## {t['figures']}", ""]
    for alt, link in _figures(paper, lang, out_dir):
        lines += [f"![{alt}]({link})", ""]
    lines += [f"## {t['deviations']}", ""]
    lines += [f"- {d}" for d in deviations(paper)] or [t["no_deviation"]]
    failed = [c for c in judged if c["kind"] == "paper" and c["verdict"] != "holds"]
    lines += ["", f"## {t['failed']}", ""]
    if not failed:
        lines.append(t["all_hold"])
    else:
        lines += [f"| {glossary.term('claim', lang)} | {glossary.term('verdict', lang)} | {t['reason']} |", "|---|---|---|"]
        lines += [f"| {_md(c['text'])} | {_verdict(c, lang)} | {_md(_reason(c))} |" for c in failed]
    verified = results.verified_at(record)
    lines += ["", f"## {t['provenance']}", "",
              f"- {t['commit']}: `{prov['git_commit']}`", f"- {t['date']}: {record['ended']}"]
    if verified:
        lines.append(f"- {t['verified']}: `{verified}`")
    lines.append(f"- {t['packages']}: " + ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items()))
    return "\n".join(lines) + "\n"


def _korean_font(out_dir: Path) -> str:
    """A @font-face of the Nanum Gothic the figures use (koreanize-matplotlib ships it), copied beside the
    preview, so that it shows Korean where the browser has no Korean font of its own."""
    import importlib.util

    found = importlib.util.find_spec("koreanize_matplotlib")  # not imported: importing it changes matplotlib's fonts
    if found is None or found.origin is None:
        return ""
    font = Path(found.origin).parent / "fonts" / "NanumGothic.ttf"
    if not font.is_file():
        return ""
    if not (out_dir / font.name).is_file():  # without the VTT source tables, which browsers refuse (OTS)
        from fontTools.ttLib import TTFont

        face = TTFont(font)
        for table in [t for t in face.keys() if t.startswith("TSI")]:
            del face[table]
        face.save(out_dir / font.name)
    return f"@font-face{{font-family:'Nanum Gothic';src:local('NanumGothic'),url('{font.name}')}}"


def html(text: str, title: str, out_dir: Path) -> str:
    """The post as an HTML page in ``out_dir`` (python-markdown; the front matter left out)."""
    import markdown as md

    body = md.markdown(re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S), extensions=["tables", "md_in_html"])
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_korean_font(out_dir)}"
            "body{max-width:52rem;margin:2rem auto;font-family:'Nanum Gothic',sans-serif;line-height:1.5}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .4rem;font-size:.9rem}"
            "td:nth-last-child(-n+3),th:nth-last-child(-n+3){white-space:nowrap}"
            "img{max-width:100%}</style></head>\n<body>\n" + body + "\n</body></html>\n")


def write(papers: list[str], lang: str, out: Path | None = None, as_html: bool = False) -> list[Path]:
    """Write ``<out>/<lang>/<paper>.md`` (and ``.html``) for each paper; returns the paths written.
    Every record is checked before anything is written: one refused record writes nothing."""
    out_dir = (out or DEFAULT_OUT) / lang
    texts = {paper: markdown(paper, lang, out_dir) for paper in papers}  # raises PostError before any write
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for paper, text in texts.items():
        path = out_dir / f"{paper}.md"
        path.write_text(text, encoding="utf-8")
        written.append(path)
        if as_html:
            page = out_dir / f"{paper}.html"
            page.write_text(html(text, config.get_spec(paper).title, out_dir), encoding="utf-8")
            written.append(page)
    return written
