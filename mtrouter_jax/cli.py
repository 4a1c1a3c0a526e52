"""`mtrouter` command line: run | simulate | train | sweep | serve | collect | eval | route | compare-arms | inspect | pool.

A thin shell: parse arguments, call ``workflow``/library functions, print, exit with a clear
message (and status 2) on bad input instead of a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mtrouter_jax.cli_commands import (OneLineParser, check_fresh_dir, cmd_compare_arms, cmd_inspect, cmd_pool,
                                       cmd_route, cmd_serve, empty_logs, empty_logs_error, finite_float, fit_line,
                                       non_negative_float, non_negative_int, positive_float, positive_int,
                                       print_coverage, print_routing_summary, probability, plain_warnings,
                                       quiet_libraries, sim_incompatibility)
from mtrouter_jax.core.errors import UsageError  # bad input: one line, exit status 2

DEFAULT_OUT = "runs/default"
def _pool(path):
    from mtrouter_jax.core.pool import load_pool

    return load_pool(path)


def _console():
    from rich.console import Console

    # wide tables even when stdout is a pipe or a CI log
    return Console(width=None if sys.stdout.isatty() else 160)


def _train_cfg(a):
    from mtrouter_jax.estimator.train import TrainConfig

    return TrainConfig(max_epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, learning_rate=a.lr,
                       patience=a.patience, max_seconds=a.max_train_seconds,
                       pair_weight=getattr(a, "pair_weight", 1.0))


def cmd_simulate(a) -> int:
    from mtrouter_jax.sim.collect import behaviour_policy
    from mtrouter_jax.routing.specs import RouterSpecError
    from mtrouter_jax.sim.params import WorldConfig
    from mtrouter_jax.jobs import simulate_dataset

    pool = _pool(a.pool)
    router, explore = a.router, a.explore
    if a.behaviour is not None:  # the older single-flag form: uniform | sticky[:RHO] | BASELINE[:EPS]
        kind, _, arg = a.behaviour.partition(":")
        if kind == "sticky":
            router, explore = f"sticky:{arg or 0.9}", None
        elif kind == "uniform":
            router, explore = "uniform", None
        else:
            router, explore = kind, f"eps:{arg or 0.3}"
    try:
        behaviour = behaviour_policy(router, pool, WorldConfig(), explore)
    except RouterSpecError as e:
        raise UsageError(str(e)) from None
    out = Path(a.out)
    if out.exists() and not a.append:
        raise UsageError(f"{out} exists; pass --append to add episodes to it")
    start = 0
    if out.exists():
        from mtrouter_jax.logs.io import iter_episodes

        start = sum(1 for _ in iter_episodes(out))  # appended episodes get fresh ids
    eps = simulate_dataset(a.seed, a.n, pool, WorldConfig(), behaviour=behaviour, out=out,
                           budget_range=None if a.no_budgets else "auto", with_features=not a.no_features,
                           start_id=start, id_prefix=_sim_id_prefix(router, explore, a.seed))
    print(f"wrote {len(eps)} episodes ({sum(len(e.turns) for e in eps)} turns) to {out}")
    return 0


def _sim_id_prefix(router: str, explore: str | None, seed: int) -> str:
    """Episode ids name the behaviour policy (the default roulette: plain ``sim-sSEED``), so two logs
    simulated with the same seed and different policies do not collide when trained on together."""
    policy = "" if router == "uniform" and not explore else router + (f"+{explore}" if explore else "")
    return f"sim-{re.sub(r'[^A-Za-z0-9_.:+-]', '_', policy) + '-' if policy else ''}s{seed}"


def _load_training_episodes(a, pool):
    from mtrouter_jax.logs.io import drop_unscored, read_episodes

    episodes = []
    if a.data:
        empty = empty_logs(a.data)
        if empty:
            raise empty_logs_error(empty)
        episodes, n_unscored = drop_unscored(read_episodes(a.data, pool_models=set(pool.names), strict=a.strict))
        if n_unscored:
            print(f"dropped {n_unscored} unscored episode(s) (score null: no terminal score was reported)")
        if not episodes and n_unscored:
            raise UsageError(f"every episode of {', '.join(map(str, a.data))} is unscored: report outcomes with "
                             "`mtrouter route --conversation ID --score S` (or add `score` to the records)")
    if a.import_official:
        from mtrouter_jax.logs.importers import import_official_trajectories

        imported, report = import_official_trajectories(a.import_official, models=list(pool.names))
        print(report.summary())
        episodes += imported
    if a.simulate:
        from mtrouter_jax.sim.params import WorldConfig
        from mtrouter_jax.jobs import simulate_dataset

        from mtrouter_jax.sim.collect import sticky_behaviour

        episodes += simulate_dataset(a.seed, a.simulate, pool, WorldConfig(), with_features=False,
                                     behaviour=sticky_behaviour(a.rho) if a.rho > 0 else None)
    if not episodes:
        raise UsageError("no training data: give --data FILE.jsonl, --import-official DIR or --simulate N")
    return episodes


def cmd_train(a) -> int:
    from mtrouter_jax.jobs import train_checkpoint

    check_fresh_dir(a.out)  # before reading, simulating or training anything
    pool = _pool(a.pool)
    episodes = _load_training_episodes(a, pool)
    text = None
    if a.text:
        from mtrouter_jax.estimator.text import HashedNgramEncoder

        text = HashedNgramEncoder(dim=a.text_dim)
    tcfg = _target_cfg(a, propensity_weighting=a.propensity_weighting, dense_progress=a.dense_progress,
                       immediate=a.immediate)
    print_coverage(episodes, pool)
    est, res = train_checkpoint(episodes, pool, a.out, _train_cfg(a), tcfg, text_encoder=text, ensemble=a.ensemble,
                                aggregate=a.bootstrap_aggregate, snapshot=a.snapshot_fits)
    print(fit_line(a.out, len(episodes), res))
    print_routing_summary(getattr(est, "meta", None) or {})
    return 0


def cmd_sweep(a) -> int:
    import numpy as np

    from mtrouter_jax.estimator.checkpoint import load_checkpoint
    from mtrouter_jax.reporting.tables import print_results, write_results
    from mtrouter_jax.sim.params import WorldConfig
    from mtrouter_jax.jobs import UnknownRouterError, default_budgets, sim_lam_table, sweep

    est = load_checkpoint(a.ckpt)
    pool = _pool(a.pool) if a.pool else est.pool
    world = WorldConfig()
    problem = sim_incompatibility(est, world)
    if problem:
        raise UsageError(problem)
    budgets = np.asarray(a.budgets, np.float32) if a.budgets else default_budgets(pool, world, a.n_budgets, a.seed)
    if (budgets <= 0).any():
        raise UsageError(f"--budgets must be > 0 USD, got {budgets.tolist()}")
    try:
        results = sweep(est, pool, world, budgets, a.episodes, a.seed, include=a.routers)
    except UnknownRouterError as e:  # refused before any rollout
        raise UsageError(f"--routers: {e}") from None
    print_results(results, console=_console())
    table = sim_lam_table(results)
    serving = results["meta"]["serving_router"]
    if not table and not a.no_lam_table and serving not in results["routers"]:
        print(f"no budget->λ table written: --routers left out {serving}, the router `mtrouter serve` uses "
              "with this checkpoint")
    if table and not a.no_lam_table:
        from mtrouter_jax.estimator.checkpoint import write_lam_table

        write_lam_table(a.ckpt, "sim", table)
        print(f"wrote the calibrated budget->λ table ({len(table)} budgets) into {a.ckpt} (lam_tables.sim)")
    paths = write_results(results, a.out)
    print("\n".join(f"wrote {k}: {v}" for k, v in paths.items()))
    return 0


def cmd_run(a) -> int:
    """The main job: simulate -> train (-> beta-mixed rounds) -> sweep -> table + plot."""
    from mtrouter_jax.reporting.fmt import duration
    from mtrouter_jax.reporting.tables import print_results, summary_markdown
    from mtrouter_jax.jobs import run_main_job

    results, paths = run_main_job(a.out, n_episodes=a.episodes, rounds=a.rounds, sweep_episodes=a.sweep_episodes,
                                  n_budgets=a.n_budgets, seed=a.seed, train_cfg=_train_cfg(a),
                                  pool=_pool(a.pool), beta=a.beta, rho=a.rho,
                                  target_cfg=_target_cfg(a), ensemble=a.ensemble,
                                  target_ensemble=a.target_ensemble, snapshot=a.snapshot_fits)
    console = _console()
    print_results(results, console=console)
    console.print(summary_markdown(results))
    print("\n".join(f"wrote {k}: {v}" for k, v in paths.items()))
    phases = results["meta"]["phase_seconds"]
    print(f"took {duration(sum(phases.values()))}: " + ", ".join(f"{k} {duration(v)}" for k, v in phases.items()))
    return 0


def _aec(scale: float):
    """The paper's AEC constants with every penalty multiplied by ``scale`` (0 = no penalties)."""
    from mtrouter_jax.estimator.targets import AECConfig

    d = AECConfig()
    return AECConfig(severity_multipliers=tuple(scale * m for m in d.severity_multipliers),
                     min_penalty_frac=scale * d.min_penalty_frac)


def _target_cfg(a, **kw):
    from mtrouter_jax.estimator.dataset import TargetConfig

    # one-turn (--immediate) targets take no bootstrapping
    iters = a.bootstrap_iterations if a.bootstrap_steps and not kw.get("immediate") else 0
    return TargetConfig(aec=_aec(a.aec_scale), bootstrap_steps=a.bootstrap_steps if iters else 0,
                        bootstrap_iterations=iters, **kw)


def _add_train_args(p, snapshot_fits: int = 1):
    p.add_argument("--aec-scale", type=non_negative_float, default=1.0,
                   help="multiply the annealed error penalties (1 = the paper's; 0 = plain terminal score)")
    # Measured on the simulator (docs/benchmarks.md): Monte-Carlo targets carry the whole logged
    # future's noise; refitting on n-step bootstrapped targets is the largest single gain.
    p.add_argument("--bootstrap-steps", type=non_negative_int, default=10,
                   help="n of the n-step bootstrapped score targets (0 = the paper's Monte-Carlo targets)")
    p.add_argument("--bootstrap-iterations", type=non_negative_int, default=2,
                   help="refits on bootstrapped targets after the Monte-Carlo fit (0 = none)")
    p.add_argument("--snapshot-fits", type=positive_int, default=snapshot_fits,
                   help="the checkpoint's ensemble pools the members of the last N fits (no extra training)")
    # Defaults measured on the simulator (docs/benchmarks.md): a full cosine schedule over 8-10 epochs
    # with large batches beats the paper's up-to-100 epochs / patience 3 / batch 64, whose early
    # stops keep a high learning rate and noisy per-model differences. The best epoch is kept.
    p.add_argument("--epochs", type=positive_int, default=8, help="epochs per fit (cosine schedule over them; best kept)")
    p.add_argument("--patience", type=positive_int, default=8, help="early-stopping patience in epochs")
    p.add_argument("--batch-size", type=positive_int, default=1024)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--max-train-seconds", type=positive_float, default=None, help="stop training after this long (best kept)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="mtrouter", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="main job: simulate -> train -> sweep, print a table, write a plot")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--episodes", type=positive_int, default=16384, help="simulated episodes per data round")
    p.add_argument("--rounds", type=positive_int, default=1, help="data rounds (2+ adds the paper's beta-mixed rounds)")
    p.add_argument("--beta", type=probability, default=0.5, help="greedy share of the beta-mixed rounds")
    p.add_argument("--rho", type=probability, default=0.9,
                   help="stickiness of the logging roulette (0 = the paper's uniform per turn)")
    p.add_argument("--sweep-episodes", type=positive_int, default=192, help="evaluation episodes per budget")
    p.add_argument("--n-budgets", type=positive_int, default=8, help="budgets of the sweep")
    p.add_argument("--pool", default=None, help="pool file (default: embedded six-model pool)")
    p.add_argument("--ensemble", type=positive_int, default=1,
                   help="estimators trained together (one vmapped step) in the last fit; with --snapshot-fits "
                        "the checkpoint also pools the fits before it (2+ members: the safe router serves)")
    p.add_argument("--target-ensemble", type=positive_int, default=None,
                   help="members of the bootstrap fits before the last, which only make its targets "
                        "(default: --ensemble)")
    _add_train_args(p, snapshot_fits=2)  # measured on 3 seeds (docs/benchmarks.md, "Main job")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("simulate", help="generate logged episodes (JSONL) with a behaviour policy")
    p.add_argument("--n", type=positive_int, required=True, help="episodes to simulate")
    p.add_argument("--out", required=True)
    p.add_argument("--append", action="store_true")
    p.add_argument("--router", default="uniform",
                   help="behaviour policy: uniform (the paper's roulette), sticky:RHO, tool-heuristic, fixed:MODEL, "
                        "cheapest, error-escalation[:M1,M2,..]")
    p.add_argument("--explore", default=None, help="exploration around --router: eps:E, beta:B or sticky:RHO[:E]")
    p.add_argument("--behaviour", default=None, help=argparse.SUPPRESS)  # older form, kept working
    p.add_argument("--no-budgets", action="store_true", help="log episodes without per-episode budgets")
    p.add_argument("--no-features", action="store_true", help="omit per-turn feature vectors")
    p.add_argument("--pool", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("train", help="train the outcome estimator and write an orbax checkpoint")
    p.add_argument("--data", nargs="*", default=[],
                   help="trajectory JSONL files, or directories of them (every *.jsonl, by name: per-replica logs)")
    p.add_argument("--import-official", nargs="*", default=[], help="official *.traj.json files or dirs")
    p.add_argument("--simulate", type=non_negative_int, default=0, metavar="N",
                   help="also simulate N episodes (sticky roulette, --rho)")
    p.add_argument("--rho", type=probability, default=0.9,
                   help="stickiness of the simulated logging roulette (0 = the paper's uniform per turn)")
    p.add_argument("--pool", default=None)
    p.add_argument("--out", required=True, help="checkpoint directory (new, or empty)")
    p.add_argument("--text", action="store_true", help="add the hashed n-gram embedding of observation text")
    p.add_argument("--text-dim", type=positive_int, default=64)
    p.add_argument("--propensity-weighting", action="store_true")
    p.add_argument("--dense-progress", action="store_true",
                   help="score targets from each turn on (needs per-turn `progress` in the logs, e.g. ScienceWorld)")
    p.add_argument("--immediate", action="store_true",
                   help="one-turn score targets: what each turn itself gained minus its own error penalty (needs "
                        "per-turn `progress`); no bootstrapping; route with --router learned at λ 0 (greedy per turn)")
    p.add_argument("--pair-weight", type=non_negative_float, default=1.0,
                   help="weight of the executed-counterfactual pair loss where the logs hold linked branches "
                        "(collect scienceworld --branch K); 0 = branches train as ordinary episodes")
    p.add_argument("--ensemble", type=positive_int, default=5,
                   help="estimators trained together (one vmapped step) for the safe router's uncertainty (1 = one)")
    p.add_argument("--bootstrap-aggregate", choices=["mean", "min", "lcb"], default="mean",
                   help="how ensemble members make a bootstrap value (min: ensemble-min / clipped double-Q)")
    p.add_argument("--strict", action="store_true",
                   help="unknown fields in the logs are errors (default: kept, one warning per file)")
    _add_train_args(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("sweep", help="evaluate every router over a grid of budgets")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--pool", default=None, help="default: the checkpoint's pool")
    p.add_argument("--budgets", type=positive_float, nargs="*", default=None, help="USD per episode")
    p.add_argument("--n-budgets", type=positive_int, default=8, help="budgets (without --budgets)")
    p.add_argument("--episodes", type=positive_int, default=256, help="evaluation episodes per budget")
    p.add_argument("--no-lam-table", action="store_true",
                   help="do not write the calibrated budget->λ table into the checkpoint")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--routers", nargs="+", default=None, metavar="NAME",
                   help="sweep only these rows (e.g. mtrouter mtrouter-safe gpt-5; default: every router); "
                        "AIQ's cost range is then the largest cost among them")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("serve", help="OpenAI-compatible routing proxy (needs the [live] extra)")
    from mtrouter_jax.live.server.options import add_serve_args

    add_serve_args(p)
    p.set_defaults(fn=cmd_serve)

    from mtrouter_jax.scienceworld.commands import add_collect_args, add_eval_args, cmd_collect, cmd_eval

    p = sub.add_parser("collect", help="collect routed episodes of a real benchmark (scienceworld) into a log")
    add_collect_args(p)
    p.set_defaults(fn=cmd_collect)

    p = sub.add_parser("eval", help="evaluate routers on a real benchmark (scienceworld): table, plots, summary")
    add_eval_args(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("route", help="report an episode's terminal score to a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    p.add_argument("--conversation", required=True, metavar="ID",
                   help="the conversation id the agent sent (X-MTRouter-Conversation header)")
    p.add_argument("--score", type=finite_float, required=True, help="the episode's terminal score")
    p.add_argument("--score-range", type=finite_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="the range of possible scores (default: the server's)")
    p.add_argument("--token", default=None, help="the server's --token (sent as 'Authorization: Bearer TOKEN')")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to wait for the server")
    p.set_defaults(fn=cmd_route)

    p = sub.add_parser("compare-arms", help="canary vs control (and the shadow, paired) from live logs: scores, "
                                            "costs, CIs")
    p.add_argument("logs", nargs="+", metavar="LOG", help="episode logs of `mtrouter serve --canary/--shadow --log`")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.set_defaults(fn=cmd_compare_arms)

    p = sub.add_parser("inspect", help="print a checkpoint's metadata")
    p.add_argument("ckpt", help="checkpoint directory")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("pool", help="print the default pool file (prices, endpoints, key variables) or write it")
    p.add_argument("--out", default=None, metavar="FILE", help="write it here instead of printing it")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(fn=cmd_pool)
    return ap


def _usage_error_types() -> tuple[type, ...]:
    """Exceptions that mean bad input (one line, exit 2). Imported only when something failed, so a
    light command (route, --help) never pays for JAX/orbax imports."""
    from mtrouter_jax.estimator.checkpoint import CheckpointError
    from mtrouter_jax.logs.io import LogFormatError
    from mtrouter_jax.core.pool import PoolError
    from mtrouter_jax.routing.specs import RouterSpecError
    from mtrouter_jax.scienceworld.engine import ScienceWorldArgumentError, ScienceWorldUnavailable
    from mtrouter_jax.scienceworld.scripted import ProfileError

    return (UsageError, LogFormatError, PoolError, CheckpointError, FileNotFoundError, FileExistsError,
            RouterSpecError, ScienceWorldArgumentError, ScienceWorldUnavailable, ProfileError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    plain_warnings(args.cmd)
    try:
        return args.fn(args)
    except Exception as e:  # noqa: BLE001 - narrowed right below
        if not isinstance(e, (UsageError, FileNotFoundError, FileExistsError)) and not isinstance(e, _usage_error_types()):
            raise
        print(f"mtrouter {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
