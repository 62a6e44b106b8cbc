"""The claims ledger: every claim a notebook judges, declared as data before the run, with its history.

Each paper keeps one committed file, ``reproduce/<paper>/claims.toml``:

- ``[[claim]]`` entries register a claim before any run judges it: ``id`` (``{C}``-style fields in an
  id stand for numbers: one entry covers ``fig3_tova_le_h2o_C64``, ``..._C128``, ...), ``kind``,
  ``artifact``, ``relation``, ``threshold`` (a number, or ``"derived"`` for a ``check`` whose bound
  the code derives, e.g. from the dtype), ``tol``/``rel``, ``source`` (``paper: ...`` or
  ``ours: ...``), an optional ``precondition`` (``{text, relation, threshold}``), ``status``
  (``registered``, or ``exploratory`` for a claim written after the numbers it judges had been
  seen) and ``same_comparison_as`` (a second view of another claim's comparison, e.g. the best
  epoch beside the last: counted once); ``profiles`` lists the profiles that judge it (all when absent).
- ``[[amendment]]`` entries are the claims' history: a claim that a committed record has judged
  changes only through one (``date``, ``change``, ``old`` and ``new`` terms, ``reason`` and ``seen``:
  the record commits whose numbers had been seen). The original keeps the verdict its records gave.

Kinds (``design.md``): ``paper`` (a relation the paper states that the experiment could
contradict; only these count as reproduction), ``control`` (the experiment can detect anything:
trained beats untrained / lookup / no-mixer), ``check`` (an implementation check: equalities,
counts, formulas, anything true by construction).

Enforced twice: :meth:`Ledger.check` runs inside ``Run.claim`` (a claim the code judges on other
terms than its registration stops the run), and :func:`audit` (``tests/test_ledger.py``) reads
every committed version of every record in git history: each judged claim must match its
registration now, or an amendment whose ``old`` terms are the ones it was judged on.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT

KINDS = ("paper", "control", "check")
STATUSES = ("registered", "exploratory")
CHANGES = ("changed", "withdrawn", "added after results", "restored")
TERMS = ("relation", "threshold", "tol", "rel", "source_kind", "precondition")  # what a registration fixes
_FIELD = re.compile(r"\{[a-zA-Z_]+\}")  # {C}: digits; {row}: a word


class LedgerError(ValueError):
    """A claim that does not match its registration, or a malformed ledger file (one line)."""


def ledger_path(paper: str) -> Path:
    return REPO_ROOT / "reproduce" / paper / "claims.toml"


# --------------------------------------------------------------------------------------------- terms
def terms(claim: Mapping[str, Any]) -> dict[str, Any]:
    """The registered terms of a claim (a record's claim dict or a ledger entry's table)."""
    pre = claim.get("precondition")
    threshold = claim.get("threshold")
    return {
        "relation": claim.get("relation"),
        "threshold": threshold if threshold == "derived" or threshold is None else float(threshold),
        "tol": float(claim.get("tol", 0.0) or 0.0),
        "rel": bool(claim.get("rel", False)),
        "source_kind": str(claim.get("source", "")).split(":", 1)[0].strip(),
        "precondition": None if not pre else {"text": pre["text"], "relation": pre["relation"],
                                              "threshold": float(pre["threshold"])},
    }


def same_terms(judged: Mapping[str, Any], registered: Mapping[str, Any]) -> bool:
    """Whether terms a claim was judged on equal registered ones (a ``derived`` threshold matches any)."""
    for key in TERMS:
        a, b = judged.get(key), registered.get(key)
        if key == "threshold" and "derived" in (a, b):
            continue
        if isinstance(a, float) and isinstance(b, float):
            if not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0):
                return False
        elif a != b:
            return False
    return True


def describe(t: Mapping[str, Any] | None) -> str:
    """``> 0 (paper:), precondition >= 5`` for messages and the report."""
    if t is None:
        return "–"
    thr = t.get("threshold")
    text = f"{t.get('relation')} {thr:g}" if isinstance(thr, float) else f"{t.get('relation')} {thr}"
    if t.get("relation") == "~=":
        text += f" ± {t.get('tol'):g}{' (relative)' if t.get('rel') else ''}"
    text += f" ({t.get('source_kind')}:)"
    pre = t.get("precondition")
    if pre:
        text += f", precondition {pre['relation']} {pre['threshold']:g}"
    return text


def id_matches(registered: str, claim_id: str) -> bool:
    """Whether ``claim_id`` is the registered id, or one of its family (``fig3_tova_le_h2o_C{C}``)."""
    if claim_id == registered:
        return True
    text = re.escape(registered).replace(r"\{", "{").replace(r"\}", "}")
    pattern = "^" + _FIELD.sub(lambda m: r"\d+" if m.group(0) == "{C}" else r"\w+", text) + "$"
    return bool(re.match(pattern, claim_id))


# ------------------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Entry:
    """One registered claim (a ``[[claim]]`` table)."""

    id: str
    kind: str
    artifact: str
    relation: str
    threshold: float | str
    source: str
    tol: float = 0.0
    rel: bool = False
    precondition: Mapping[str, Any] | None = None
    status: str = "registered"
    same_comparison_as: str | None = None
    why: str = ""  # why this kind (e.g. what makes a claim true by construction)
    profiles: tuple[str, ...] = ()  # the profiles that judge it (empty: every profile)

    def matches(self, claim_id: str) -> bool:
        return id_matches(self.id, claim_id)

    def terms(self) -> dict[str, Any]:
        return terms({"relation": self.relation, "threshold": self.threshold, "tol": self.tol, "rel": self.rel,
                      "source": self.source, "precondition": self.precondition})


@dataclass(frozen=True)
class Amendment:
    """One change to a claim after a committed record had judged it (an ``[[amendment]]`` table)."""

    id: str
    date: str
    change: str
    reason: str
    seen: tuple[str, ...]
    old: Mapping[str, Any] | None = None
    new: Mapping[str, Any] | None = None

    def old_terms(self) -> dict[str, Any] | None:
        return None if self.old is None else terms(self.old)

    def new_terms(self) -> dict[str, Any] | None:
        return None if self.new is None else terms(self.new)


@dataclass
class Ledger:
    paper: str
    entries: list[Entry]
    amendments: list[Amendment] = field(default_factory=list)
    path: Path | None = None

    def entry(self, claim_id: str) -> Entry | None:
        exact = [e for e in self.entries if e.id == claim_id]
        return exact[0] if exact else next((e for e in self.entries if e.matches(claim_id)), None)

    def check(self, claim: Mapping[str, Any], profile: str | None = None) -> Entry:
        """The registration of a claim about to be judged; ``LedgerError`` when its terms differ, or
        when ``profile`` is not one its registration names."""
        entry = self.entry(claim["id"])
        where = self.path.relative_to(REPO_ROOT) if self.path and self.path.is_relative_to(REPO_ROOT) else self.path
        if entry is None:
            raise LedgerError(f"claim {claim['id']!r} is not registered in {where}: declare it there (kind, relation, "
                              "threshold, source) before a run judges it")
        if profile is not None and entry.profiles and profile not in entry.profiles:
            raise LedgerError(f"claim {claim['id']!r} is registered in {where} for the {', '.join(entry.profiles)} "
                              f"profile(s) only, not {profile!r}")
        judged, registered = terms(claim), entry.terms()
        if not same_terms(judged, registered):
            raise LedgerError(f"claim {claim['id']!r} is judged as {describe(judged)} but registered in {where} as "
                              f"{describe(registered)}: change it there, with an [[amendment]] if a committed record "
                              "has judged it")
        return entry

    def kind_of(self, claim: Mapping[str, Any]) -> str | None:
        """A stored claim's kind: its own, or its registration's (records from before kinds existed)."""
        if claim.get("kind"):
            return claim["kind"]
        entry = self.entry(claim["id"])
        if entry is not None:
            return entry.kind
        withdrawn = [a for a in self.amendments if a.id == claim["id"] and a.old is not None and a.old.get("kind")]
        return withdrawn[-1].old["kind"] if withdrawn else None


def _entry(table: Mapping[str, Any], where: str) -> Entry:
    known = set(Entry.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise LedgerError(f"{where}: unknown key(s) {sorted(unknown)} in claim {table.get('id')!r}")
    missing = {"id", "kind", "artifact", "relation", "threshold", "source"} - set(table)
    if missing:
        raise LedgerError(f"{where}: claim {table.get('id')!r} lacks {sorted(missing)}")
    e = Entry(**{k: tuple(v) if k == "profiles" else v for k, v in table.items()})
    if e.kind not in KINDS:
        raise LedgerError(f"{where}: claim {e.id!r} has kind {e.kind!r}; one of {KINDS}")
    if e.status not in STATUSES:
        raise LedgerError(f"{where}: claim {e.id!r} has status {e.status!r}; one of {STATUSES}")
    if not str(e.source).startswith(("paper:", "ours:")):
        raise LedgerError(f"{where}: claim {e.id!r}: source must start with 'paper:' or 'ours:'")
    if e.threshold == "derived" and e.kind != "check":
        raise LedgerError(f"{where}: claim {e.id!r}: only a check may have a derived threshold")
    if e.precondition is not None and not {"text", "relation", "threshold"} <= set(e.precondition):
        raise LedgerError(f"{where}: claim {e.id!r}: a precondition needs text, relation and threshold")
    return e


def _amendment(table: Mapping[str, Any], where: str) -> Amendment:
    missing = {"id", "date", "change", "reason", "seen"} - set(table)
    if missing:
        raise LedgerError(f"{where}: amendment of {table.get('id')!r} lacks {sorted(missing)}")
    a = Amendment(id=table["id"], date=str(table["date"]), change=table["change"], reason=table["reason"],
                  seen=tuple(table["seen"]), old=table.get("old"), new=table.get("new"))
    if a.change not in CHANGES:
        raise LedgerError(f"{where}: amendment of {a.id!r} has change {a.change!r}; one of {CHANGES}")
    if a.change in ("changed", "withdrawn") and a.old is None:
        raise LedgerError(f"{where}: amendment of {a.id!r} ({a.change}) needs the old terms")
    return a


def parse(text: str, paper: str, path: Path | None = None) -> Ledger:
    where = str(path or f"{paper} ledger")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LedgerError(f"{where} is not valid TOML ({e})") from e
    entries = [_entry(t, where) for t in data.get("claim", [])]
    ids = [e.id for e in entries]
    if len(ids) != len(set(ids)):
        raise LedgerError(f"{where}: a claim id is registered twice")
    for e in entries:
        if e.same_comparison_as and e.same_comparison_as not in ids:
            raise LedgerError(f"{where}: claim {e.id!r}: same_comparison_as {e.same_comparison_as!r} is not registered")
    return Ledger(paper, entries, [_amendment(t, where) for t in data.get("amendment", [])], path)


@functools.cache
def load(path: Path, paper: str) -> Ledger:
    if not path.is_file():
        raise LedgerError(f"{paper} has no claims ledger ({path})")
    return parse(path.read_text(encoding="utf-8"), paper, path)


def for_paper(paper: str) -> Ledger:
    """The committed ledger of ``paper``: ``reproduce/<paper>/claims.toml``, or its spec's ``ledger``."""
    from . import config

    spec = config.get_spec(paper)
    return load(Path(spec.ledger) if spec.ledger else ledger_path(paper), paper)


# --------------------------------------------------------------------------------------------- audit
def audit(ledger: Ledger, records: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Problems of ``records`` (``(label, record)`` pairs) against ``ledger``; empty: all registered.

    A claim a record judged must match its registration now, or an amendment's old terms (the claim
    was judged before that change); a claim with no registration must have been withdrawn by an
    amendment with those old terms.
    """
    problems = []
    for entry in ledger.entries:  # the history ends where the registration is now
        changes = sorted((a for a in ledger.amendments if a.id == entry.id and a.new is not None), key=lambda a: a.date)
        if changes and not same_terms(changes[-1].new_terms(), entry.terms()):
            problems.append(f"claim {entry.id!r} is registered as {describe(entry.terms())}, but its last amendment "
                            f"made it {describe(changes[-1].new_terms())}: a change without an amendment")
    for label, record in records:
        for claim in record.get("claims", []):
            judged = terms(claim)
            entry = ledger.entry(claim["id"])
            if entry is not None and same_terms(judged, entry.terms()):
                continue
            olds = [a for a in ledger.amendments if (a.id == claim["id"] or (entry and a.id == entry.id))
                    and a.old is not None and same_terms(judged, a.old_terms())]
            if olds:
                continue
            now = describe(entry.terms()) if entry else "not registered"
            problems.append(f"{label}: claim {claim['id']!r} was judged as {describe(judged)}, registered now as {now}, "
                            "with no amendment whose old terms are those")
    return problems


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def record_history(paper: str, profile: str = "cpu") -> list[tuple[str, dict[str, Any]]] | None:
    """Every committed version of ``results/<paper>/<profile>.json`` with registered terms (schema >= 2),
    newest first, as ``(commit, record)``; None outside a git checkout with history."""
    log = _git("log", "--format=%h", "--", f"results/{paper}/{profile}.json")
    if log is None:
        return None
    out = []
    for commit in log.split():
        text = _git("show", f"{commit}:results/{paper}/{profile}.json")
        if not text:
            continue  # the commit deleted the file
        record = json.loads(text)
        if record.get("schema", 1) >= 2:
            out.append((commit, record))
    return out


def original_verdicts(paper: str, amendment: Amendment, profile: str = "cpu") -> list[dict[str, Any]]:
    """What the records named in ``amendment.seen`` judged for the claim before it changed."""
    from .claims import estimate_text

    out = []
    for commit in amendment.seen:
        text = _git("show", f"{commit}:results/{paper}/{profile}.json")
        if not text:
            continue
        record = json.loads(text)
        for c in record.get("claims", []):
            if id_matches(amendment.id, c["id"]):
                out.append({"record": commit, "ran_at": str(record["provenance"].get("git_commit"))[:7],
                            "id": c["id"], "ours": estimate_text(c["ours"]), "verdict": c["verdict"]})
    return out
