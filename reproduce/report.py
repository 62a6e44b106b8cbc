"""Render the saved results into ``results/REPORT.md`` and the README's reproduction tables.

Nothing here is typed by hand: every row comes from a ``results/<paper>/<profile>.json`` record.
Real runs (cpu and gpu profiles) go into the committed report and the READMEs; smoke runs (CI,
``make reproduce``) only into ``runs/REPORT.smoke.md``, so they never change committed files.
Key artifacts that no run has produced yet get a row that says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import claims, config, ledger, results
from .paths import REPO_ROOT, results_dir, runs_dir

START, END = "<!-- reproduction-table:start -->", "<!-- reproduction-table:end -->"
REAL_PROFILES = ("gpu", "cpu")
READMES = {"en": REPO_ROOT / "README.md", "ko": REPO_ROOT / "README.ko.md"}

_HEADERS = {
    "en": ["Paper", "Kind", "Artifact", "Notebook section", "Claim", "Paper value", "Ours [95 % CI]", "Relation", "Threshold source",
           "Verdict", "Hardware", "Runtime", "Command"],
    "ko": ["논문", "종류", "표/그림", "노트북 절", "주장", "논문 값", "우리 값 [95 % 신뢰구간]", "관계", "기준의 출처",
           "판정", "하드웨어", "실행 시간", "명령"],
}
_WORDS = {
    "en": {"holds": "holds", "contradicted": "**contradicted**", "inconclusive": "inconclusive",
           "not testable": "not testable", "missing": "not run yet", "none": "No run has produced results yet.",
           "stale": "stale"},
    "ko": {"holds": "성립", "contradicted": "**반증**", "inconclusive": "판정 불가", "not testable": "검증 불가",
           "missing": "아직 실행 안 됨", "none": "아직 결과를 만든 실행이 없습니다.", "stale": "오래됨"},
}


def fmt(value: Any) -> str:
    """A compact, table-safe rendering of a value."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " < ".join(map(str, value)) if all(isinstance(v, str) for v in value) else ", ".join(map(fmt, value))
    return str(value).replace("|", "\\|").replace("\n", " ")


def rows(records: Iterable[Mapping[str, Any]], lang: str = "en") -> list[list[str]]:
    """One row per claim; one 'not run yet' row per declared artifact without a record."""
    words = _WORDS[lang]
    out = []
    records = list(records)
    papers = config.available_papers()
    papers += [r["paper"] for r in records if r["paper"] not in papers]
    for paper in papers:
        spec = config.get_spec(paper)
        paper_records = [r for r in records if r["paper"] == paper]
        covered = set()
        for r in paper_records:
            device = r["provenance"].get("device", "?")
            runtime = f"{r['wall_time_s'] / 60:.1f} min"
            command = f"`{r['command']}`"
            if results.stale_paths(r):
                runtime += f" ({words['stale']})"
            for c in judged(r):
                covered.add(c["artifact"])
                verdict = words[c["verdict"]]
                if c["verdict"] != c["recorded_verdict"]:
                    verdict += f" ({c['rule']})"
                if c["status"] == "withdrawn":
                    verdict += " (withdrawn since: see the ledger's history; not counted)"
                elif c["amended"]:
                    verdict += " (judged on terms amended since: see the ledger's history; rerun pending)"
                if c.get("status") == "exploratory":
                    verdict += " (exploratory: " + ("written after its numbers were seen" if lang == "en" else "수치를 본 뒤 작성") + ")"
                pre = c.get("precondition")
                if pre and not pre["holds"]:
                    verdict += f" ({fmt(pre['text'])} = {fmt(pre['value'])}, needs {pre['relation']} {fmt(pre['threshold'])})"
                if c.get("note"):
                    verdict += f" ({fmt(c['note'])})"
                out.append([paper, c["kind"], c["artifact"], fmt(c["section"]), fmt(c["text"]), fmt(c.get("paper")),
                            fmt(results.estimate_text(c["ours"])), fmt(claims.relation_text(c)), fmt(c["source"]), verdict,
                            fmt(device), runtime, command])
        for artifact, section in spec.artifacts.items():
            if artifact not in covered:
                out.append([paper, "–", artifact, section, "–", "–", "–", "–", "–", words["missing"], "–", "–",
                            f"`python -m reproduce run {paper} --profile cpu`"])
    return out


KIND_ORDER = {"paper": 0, "control": 1, "check": 2}


def judged(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A record's claims with their kind and status from the ledger, the verdict the rules at HEAD give
    on the stored numbers (``recorded_verdict``: the one the run wrote), paper relations first."""
    book = ledger.for_paper(record["paper"])
    out = []
    for c in record["claims"]:
        entry = book.entry(c["id"])
        verdict = results.verdict_of(c)
        amended = entry is None or not ledger.same_terms(ledger.terms(c), entry.terms())
        withdrawn = amended and any(a.change == "withdrawn" and a.id == c["id"] and ledger.same_terms(ledger.terms(c), a.old_terms())
                                    for a in book.amendments)
        status = "withdrawn" if withdrawn else c.get("status") or (entry.status if entry else "registered")
        kind = next((a.old["kind"] for a in book.amendments if withdrawn and a.id == c["id"] and a.old), None)
        out.append({**c, "kind": kind or book.kind_of(c) or "?", "status": status,
                    "same_comparison_as": entry.same_comparison_as if entry else None, "recorded_verdict": c["verdict"],
                    "verdict": verdict, "rule": f"recorded {c['verdict']}; fewer than {claims.MIN_SEEDS} seeds: "
                                                "inconclusive by rule" if verdict != c["verdict"] else "",
                    "amended": amended})
    return sorted(out, key=lambda c: KIND_ORDER.get(c["kind"], 3))


def tally(record: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Verdicts per kind. ``paper`` counts the registered paper relations once each (a second view of
    the same comparison, e.g. the best epoch beside the last, is left out); ``exploratory`` the paper
    relations written after their numbers were seen."""
    out = {k: dict.fromkeys(claims.VERDICTS, 0) for k in ("paper", "exploratory", "control", "check")}
    for c in judged(record):
        if c["status"] == "withdrawn":
            continue
        if c["kind"] == "paper":
            if c["same_comparison_as"]:
                continue
            out["exploratory" if c["status"] == "exploratory" else "paper"][c["verdict"]] += 1
        elif c["kind"] in out:
            out[c["kind"]][c["verdict"]] += 1
    return out


def _counts(n: Mapping[str, int], lang: str) -> str:
    words = {"en": ("hold", "contradicted", "inconclusive", "not testable"), "ko": ("성립", "반증", "판정 불가", "검증 불가")}[lang]
    total = sum(n.values())
    return f"{n['holds']} / {total}" + "".join(f", {n[v]} {w}" for v, w in zip(claims.VERDICTS[1:], words[1:]) if n[v])


_HEADLINE = {"en": ["Paper", "Profile", "Paper relations hold", "Exploratory", "Controls hold", "Checks hold"],
             "ko": ["논문", "프로필", "논문의 관계 성립", "탐색적", "대조군 성립", "검사 성립"]}


def headline(records: Iterable[Mapping[str, Any]], lang: str = "en") -> str:
    """Per notebook: the paper relations first (the only claims that count as reproduction), then the
    exploratory relations, the controls and the implementation checks, apart."""
    lines = ["| " + " | ".join(_HEADLINE[lang]) + " |", "|" + "---|" * len(_HEADLINE[lang])]
    for r in records:
        n = tally(r)
        lines.append(f"| {r['paper']} | {r['profile']} | **{_counts(n['paper'], lang)}** | "
                     + " | ".join(_counts(n[k], lang) for k in ("exploratory", "control", "check")) + " |")
    return "\n".join(lines) + "\n"


def unjudged(record: Mapping[str, Any]) -> list[ledger.Entry]:
    """Registered claims of the record's profile that it did not judge (registered after it ran)."""
    ids = [c["id"] for c in record["claims"]]
    book = ledger.for_paper(record["paper"])
    return [e for e in book.entries if not any(e.matches(i) for i in ids) and (not e.profiles or record["profile"] in e.profiles)]


def amendments_markdown(paper: str) -> str:
    """The ledger's history of ``paper``: each amendment, with what the records it names had judged."""
    book = ledger.for_paper(paper)
    if not book.amendments:
        return ""
    lines = ["| Claim | Date | Change | Before → after | Reason | What the records had judged |", "|---|---|---|---|---|---|"]
    for a in book.amendments:
        seen = "; ".join(f"{o['verdict']} ({o['ours']}) in the record at {o['ran_at']}" for o in ledger.original_verdicts(paper, a))
        lines.append(f"| `{a.id}` | {a.date} | {a.change} | {ledger.describe(a.old_terms())} → {ledger.describe(a.new_terms())} "
                     f"| {fmt(a.reason)} | {fmt(seen or ', '.join(a.seen) or '–')} |")
    return "\n".join(lines) + "\n"


def table(records: Iterable[Mapping[str, Any]], lang: str = "en") -> str:
    records = list(records)
    body = rows(records, lang)
    if not body:
        return _WORDS[lang]["none"] + "\n"
    lines = [headline(records, lang), "| " + " | ".join(_HEADERS[lang]) + " |", "|" + "---|" * len(_HEADERS[lang])]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def best_records(profiles: tuple[str, ...] = REAL_PROFILES, root: Path | None = None) -> list[dict[str, Any]]:
    """For each paper with results, the record of the first profile in ``profiles`` that has one."""
    chosen = []
    root = root or results_dir()
    papers = sorted({p.name for p in root.iterdir() if p.is_dir() and _registered(p.name)}) if root.exists() else []
    for paper in papers:
        if (record := results.load_first(paper, profiles, root)) is not None:
            chosen.append(record)
    return chosen


def _registered(paper: str) -> bool:
    """Whether a folder of results belongs to a registered paper (a stray test record does not)."""
    try:
        config.get_spec(paper)
    except config.ParamError:
        return False
    return True


def replace_between_markers(text: str, new: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"the markers {START} and {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{new}{END}{tail}"


def _host(prov: dict) -> str:
    """The CPU's id and single-thread speed (``runtime.reference_speed``), where the record has them."""
    speed = results.cpu_speed(prov)
    return "".join([f"; {prov['cpu_id']}" if prov.get("cpu_id") else "",
                    f", {speed} GFLOP/s on one thread (fp32 matmul)" if speed else ""])


def report_markdown(records: list[dict[str, Any]], title: str) -> str:
    parts = [f"# {title}\n", "Rendered by `python -m reproduce report` from `results/<paper>/<profile>.json`; do not edit by hand.\n"]
    for r in records:
        prov = r["provenance"]
        stale = results.stale_paths(r)
        verified = results.verified_at(r)
        parts.append(
            f"\n## {r['paper']} ({r['profile']} profile)\n\n"
            f"- paper relations: {_counts(tally(r)['paper'], 'en')}; exploratory: {_counts(tally(r)['exploratory'], 'en')}; "
            f"controls: {_counts(tally(r)['control'], 'en')}; checks: {_counts(tally(r)['check'], 'en')} "
            f"({len(r['claims'])} claims; kinds from reproduce/{r['paper']}/claims.toml)\n"
            + (f"- **stale**: the paper's code changed after this run's commit ({', '.join(stale)}); re-run it\n" if stale else "")
            + (f"- verified at {verified[:10]}: the smoke profile gives the same stable numbers there as at the record's "
               "commit (`python -m reproduce verify`)\n" if verified else "")
            +
            f"- hardware: {prov.get('device', '?')}{_host(prov)}, {prov.get('threads', '?')} threads; wall time "
            f"{r['wall_time_s'] / 60:.1f} min\n"
            f"- git commit {str(prov.get('git_commit'))[:10]}{' (dirty)' if prov.get('git_dirty') else ''}; torch {prov['packages'].get('torch')}, "
            f"transformers {prov['packages'].get('transformers')}; seed {r['params'].get('seed')}\n"
            f"- command: `{r['command']}`\n"
        )
    for r in records:
        pending = unjudged(r)
        if pending:
            parts.append(f"\n## Registered, not judged by the {r['paper']} record (rerun pending)\n\n"
                         + "".join(f"- `{e.id}` ({e.kind}): {e.relation} {e.threshold}, {e.source}\n" for e in pending))
        history = amendments_markdown(r["paper"])
        if history:
            parts.append(f"\n## Amended claims: {r['paper']}\n\nFrom `reproduce/{r['paper']}/claims.toml`; an amended claim's "
                         "original keeps the verdict its records gave.\n\n" + history)
    parts.append("\n## All claims\n\n" + table(records))
    return "".join(parts)


def write_all(output_dir: str | Path | None = None) -> list[Path]:
    """Write the report(s) and update the README tables; returns the paths written."""
    root = results_dir(output_dir)
    written = []
    real = best_records(REAL_PROFILES, root)
    report = root / "REPORT.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(report_markdown(real, "Reproduction report"), encoding="utf-8")
    written.append(report)
    smoke = best_records(("smoke",), root)
    if smoke:
        path = runs_dir(output_dir) / "REPORT.smoke.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report_markdown(smoke, "Smoke-run report (numbers not meaningful)"), encoding="utf-8")
        written.append(path)
    if root == REPO_ROOT / "results":  # only the repository's own results update its READMEs
        for lang, readme in READMES.items():
            if readme.exists():
                readme.write_text(replace_between_markers(readme.read_text(encoding="utf-8"), table(real, lang)), encoding="utf-8")
                written.append(readme)
    return written
