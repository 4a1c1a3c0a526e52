"""Pieces of the `mtrouter` commands: argument checks (argparse ``type=`` functions, ``--out``,
empty logs), the coverage table of the training logs, the simulator-vocabulary check of a
checkpoint, and the light commands (`inspect`, `pool`, `route`, `compare-arms`, `serve`'s error handling)."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from mtrouter_jax.core.errors import UsageError


# --- the parser's errors and the libraries' chatter ----------------------------------------------

_TYPE_NAMES = {"int": "an integer", "float": "a number"}


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line (no usage block): what was wrong, and where the help is."""

    def error(self, message):
        # argparse names a failing ``type=`` function ("invalid _budget value: 'abc'"): say what was expected
        message = re.sub(r"invalid (\w+) value: (.*)$",
                         lambda m: f"invalid value {m[2]}" + (f" (expected {_TYPE_NAMES[m[1]]})"
                                                             if m[1] in _TYPE_NAMES else ""), message)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def plain_warnings(cmd: str) -> None:
    """Our own warnings (``mtrouter_jax``'s ``UserWarning`` kinds) print as one line, ``mtrouter CMD:
    warning: ...``, not with the source line that called the library (noise to a CLI user)."""
    import warnings

    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if getattr(category, "__module__", "").startswith("mtrouter_jax"):
            return f"mtrouter {cmd}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def quiet_libraries() -> None:
    """Hush start-up chatter nobody acted on: jax's "Unable to initialize backend 'tpu'" and orbax's
    absl INFO lines (``serve`` logs at INFO). Only loggers the user left unset (NOTSET) are touched."""
    import logging

    lg = logging.getLogger("jax._src.xla_bridge")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
    except ImportError:  # absl comes with orbax; without it there is nothing to hush
        return
    if absl_logging.get_absl_logger().level == logging.NOTSET:
        absl_logging.set_verbosity(absl_logging.WARNING)


# --- argument checks (argparse ``type=``: a bad value is one line naming the option, exit 2) ----

def _typed(kind, test, expected: str):
    def check(text: str):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not test(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v

    check.__name__ = expected
    return check


positive_int = _typed(int, lambda v: v > 0, "an integer > 0")
non_negative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a number > 0")
non_negative_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
finite_float = _typed(float, math.isfinite, "a finite number")
probability = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def check_fresh_dir(path, option: str = "--out") -> None:
    """Refuse an output directory that exists and is not empty (or is a file) before any work."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        what = "is a file" if not p.is_dir() else "exists and is not empty"
        raise UsageError(f"{option} {p} {what}: give a new directory (nothing was trained)")


def empty_logs(paths) -> list[str]:
    """The files of ``paths`` that exist and hold no record (only blank lines, or nothing)."""
    out = []
    for p in map(Path, paths):
        if p.is_file():
            with p.open("rb") as f:
                if not any(line.strip() for line in f):
                    out.append(str(p))
    return out


def empty_logs_error(paths) -> UsageError:
    names = ", ".join(paths)
    one = paths[0]
    return UsageError(f"{names} {'is' if len(paths) == 1 else 'are'} empty (no episodes): make a log with "
                      f"`mtrouter simulate --n 1000 --out {one}` or `mtrouter serve --log {one}` "
                      "(then report outcomes with `mtrouter route`), or train on `--simulate N`")


def _console():
    from rich.console import Console

    # wide tables even when stdout is a pipe or a CI log
    return Console(width=None if sys.stdout.isatty() else 160)


def print_coverage(episodes, pool) -> None:
    """Per-model turns, exploration and effective sample size of the training logs; warnings."""
    from rich.table import Table

    from mtrouter_jax.logs.coverage import coverage_warnings, exploration_report

    rep = exploration_report(episodes, pool.names)
    sources: dict[str, int] = {}
    for e in episodes:
        sources[e.source or "?"] = sources.get(e.source or "?", 0) + 1
    t = Table(title=f"training logs: {len(episodes)} episodes ("
                    + ", ".join(f"{n} {s}" for s, n in sorted(sources.items())) + ")")
    for col in ("model", "turns", "share", "with propensity", "explored (p<1)", "ESS of 1/p"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for c in rep:
        t.add_row(c.model, f"{c.turns:,}", f"{100 * c.share:.1f}%", f"{c.with_propensity:,}", f"{c.explored:,}",
                  f"{c.ess:,.0f}")
    console = _console()
    console.print(t)
    for w in coverage_warnings(rep):
        console.print(f"[yellow]warning:[/yellow] {w}")
    if len(episodes) < FEW_EPISODES:
        console.print(f"[yellow]warning:[/yellow] only {len(episodes)} episodes: far too few to tell the models "
                      f"apart (the measurements in docs/benchmarks.md use 500-1,500); the router will lean on "
                      "its reference policy")


FEW_EPISODES = 100  # below this, per-model outcome estimates are mostly noise (docs/benchmarks.md)


def fit_line(out, n_episodes: int, res) -> str:
    """The one-line summary of a fit (no 'baseline nan' when the log was too small for a validation split)."""
    import math

    base = (f"per-model-mean baseline {res.baseline_val_loss:.4f}" if math.isfinite(res.baseline_val_loss)
            else "no validation split: too few episodes, so this is the training loss")
    return (f"checkpoint {out}: {n_episodes} episodes, best epoch {res.best_epoch}, val loss {res.val_loss:.4f} "
            f"({base}), {res.turns_per_second:,.0f} turns/s")


def sim_incompatibility(est, world) -> str | None:
    """Why a checkpoint's layout cannot be evaluated in the simulator (None when it can): the
    simulator's task and tool types must all be in its vocabularies, else its features mean
    something else (e.g. a checkpoint trained on ScienceWorld logs)."""
    L = est.layout
    sim_tasks = [t.name for t in world.tasks]
    missing = {"task types": [t for t in sim_tasks if t not in L.task_types],
               "tool types": [t for t in world.tools if t not in L.tools]}
    missing = {k: v for k, v in missing.items() if v}
    if not missing:
        return None
    what = "; ".join(f"{k} {v} (it knows {list(L.task_types if k == 'task types' else L.tools)})"
                     for k, v in missing.items())
    sources = ", ".join((est.meta.get("data") or {}).get("sources") or ["unknown"])
    return (f"{est.path} was not trained on the simulator's vocabulary: it lacks the simulator's {what}. "
            f"Its logs came from: {sources}. A sweep here would route on features that mean something else. "
            f"Evaluate it where its logs came from, e.g. `mtrouter eval scienceworld --checkpoint {est.path}`, "
            "or retrain with simulated episodes (mtrouter train --simulate N).")


def print_routing_summary(meta: dict) -> None:
    """After ``mtrouter train``: what the safe router keeps to per budget and, for logs with per-turn
    progress, which model each action type needs (``mtrouter inspect`` shows the details)."""
    ref = meta.get("reference")
    if ref:
        from mtrouter_jax.routing.reference import Reference

        r = Reference.from_meta(ref)
        tiers = "; ".join(f"from ${t['from_usd']:g}: {t['reference']}" for t in r.by_budget())
        print(f"reference policy (safe router): {tiers}")
        if r.draft_fit:
            tiers = "; ".join(f"from ${t['from_usd']:g}: {t['reference']}" for t in r.by_budget(r.draft_fit))
            print(f"reference policy when drafting (priced with re-served turns): {tiers}")
    outcomes = turn_outcomes_summary(meta)
    if outcomes is not None:
        details = outcomes if isinstance(outcomes, dict) else {}  # a sentence: no per-turn progress
        best = details.get("best_when_due")
        if best:
            print("best when due (mean gain a turn, % of the score range): " + "; ".join(
                f"{k} {v['model']} {v['gain_pct']:.2f}" + (f" (then {v['runner_up']['model']} "
                                                           f"{v['runner_up']['gain_pct']:.2f})"
                                                           if "runner_up" in v else "")
                for k, v in best.items()))
        esc = details.get("draft_escalations")
        print(f"draft escalations: {esc}" if esc else "draft escalations: none (no type another model is "
              "significantly better at)")


def turn_outcomes_summary(meta: dict) -> dict | str | None:
    """What a checkpoint's per-turn outcomes say (``mtrouter inspect``'s ``turn_outcomes``, the end of
    ``mtrouter train``): the draft escalations and, per action type, the model best when it was due;
    a sentence when the logs had no per-turn progress; None for checkpoints without the table."""
    if not meta.get("type_outcomes"):
        return None
    from mtrouter_jax.routing.draft import TypeOutcomes
    from mtrouter_jax.routing.due import best_when_due

    to = TypeOutcomes.from_meta(meta["type_outcomes"])
    if to.empty:
        return "none: the logs have no per-turn progress"
    return {"draft_escalations": to.escalations(),
            "best_when_due": best_when_due(to.due, to.tools, to.models) if to.due is not None else None}


def cmd_inspect(a) -> int:
    from mtrouter_jax.estimator.checkpoint import read_meta

    meta = read_meta(a.ckpt)
    short = {k: meta[k] for k in ("schema", "feature_code_version", "cost_scale", "text_dim", "data") if k in meta}
    short["models"] = [m["name"] for m in meta["pool"]["model"]]
    short["layout"] = meta["layout"]
    t = meta.get("training", {})
    short["training"] = {k: t.get(k) for k in ("best_epoch", "val_loss", "baseline_val_loss", "turns_per_second")}
    short["ensemble_size"] = int((meta.get("ensemble") or {}).get("k", 1))
    fits = (meta.get("targets") or {}).get("fits") or []
    if fits and fits[-1].get("snapshot_of"):  # the members are several fits' (--snapshot-fits)
        short["ensemble_of_fits"] = fits[-1]["snapshot_of"]
    ref = meta.get("reference") or {}
    short["reference_policy"] = ref.get("name")
    short["reference_candidates"] = ref.get("candidates")
    if ref:
        from mtrouter_jax.routing.reference import Reference

        r = Reference.from_meta(ref)
        short["reference_by_budget"] = r.by_budget()
        if r.draft_fit:
            short["reference_by_budget_drafting"] = r.by_budget(r.draft_fit)
    outcomes = turn_outcomes_summary(meta)
    if outcomes is not None:
        short["turn_outcomes"] = outcomes
    from mtrouter_jax.routing.meta import DEFAULT_LAM

    tables = meta.get("lam_tables") or {}
    short["lam_tables"] = tables or f"none: the learned router uses λ = {DEFAULT_LAM:g} unless --lam is given"
    print(json.dumps(short, indent=2))
    return 0


def cmd_pool(a) -> int:
    """Print the embedded default pool file, or write it to ``--out`` (a starting point to edit)."""
    from mtrouter_jax.core.pool import default_pool_text

    text = default_pool_text()
    if a.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(a.out)
    if out.exists() and not a.force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote the default pool ({text.count('[[model]]')} models) to {out}: keep the models you have keys "
          f"for, export the api_key_env variables it names, then pass --pool {out}", file=sys.stderr)
    return 0


def _server_error(r) -> str:
    try:
        detail = r.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - any body: show it as text
        detail = r.text.strip()[:300]
    hint = " (pass the server's --token)" if r.status_code == 401 else ""
    return f"server answered {r.status_code}: {detail}{hint}"


def cmd_route(a) -> int:
    """Send a terminal score for a conversation to a running `mtrouter serve`."""
    import httpx

    body = {"score": a.score}
    if a.score_range:
        body["score_range"] = a.score_range
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    url = a.url.rstrip("/")
    try:
        r = httpx.post(f"{url}/v1/mtrouter/conversations/{a.conversation}/finish", json=body, headers=headers,
                       timeout=a.timeout)
    except httpx.ConnectError:
        raise UsageError(f"cannot connect to {url}: is `mtrouter serve` running there? "
                         "(start it, or pass --url)") from None
    except httpx.TimeoutException:
        raise UsageError(f"{url} did not answer within {a.timeout:g} s (--timeout)") from None
    except httpx.HTTPError as e:
        raise UsageError(f"cannot reach {url}: {e}") from None
    if r.status_code >= 400:
        raise UsageError(_server_error(r))
    print(json.dumps(r.json(), indent=2))
    return 0


def cmd_compare_arms(a) -> int:
    """Canary vs control and the shadow's paired view, from live logs (``reporting/arms.py``)."""
    from mtrouter_jax.core.jsonable import to_jsonable
    from mtrouter_jax.logs.io import read_episodes
    from mtrouter_jax.reporting.arms import arms_tables, compare_arms

    missing = [p for p in a.logs if not Path(p).is_file()]
    if missing:
        raise UsageError(f"no log file {', '.join(missing)}")
    empty = empty_logs(a.logs)
    if len(empty) == len(a.logs):
        raise UsageError(f"{', '.join(empty)}: no episodes (finish some conversations of `mtrouter serve --log ...`)")
    report = compare_arms(read_episodes(a.logs), ", ".join(a.logs))
    if a.json:
        print(json.dumps(to_jsonable(report), indent=2))
        return 0
    tables, notes = arms_tables(report)
    console = _console()
    for t in tables:
        console.print(t)
    for n in notes:
        console.print(f"note: {n}")
    return 0


def cmd_serve(a) -> int:
    import logging

    from mtrouter_jax.live.backends import BackendConfigError
    from mtrouter_jax.live.server.app import serve

    logging.basicConfig(level=logging.INFO)
    kw = {k: v for k, v in vars(a).items() if k not in ("cmd", "fn")}
    try:
        serve(**kw)
    except BackendConfigError as e:  # missing keys etc.: one line, the problems joined
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        items = [x for x in lines[1:] if not x.startswith("(")]
        notes = [x for x in lines[1:] if x.startswith("(")]
        raise UsageError(" ".join([lines[0], "; ".join(items), *notes]).strip()) from None
    return 0


__all__ = ["OneLineParser", "quiet_libraries", "plain_warnings", "print_routing_summary", "turn_outcomes_summary", "print_coverage", "sim_incompatibility", "cmd_inspect", "cmd_pool", "cmd_route", "cmd_serve",
           "cmd_compare_arms",
           "check_fresh_dir", "empty_logs", "empty_logs_error", "positive_int", "non_negative_int",
           "positive_float", "non_negative_float", "finite_float", "probability"]
