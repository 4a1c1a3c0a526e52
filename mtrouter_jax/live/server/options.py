"""Command-line options of ``mtrouter serve`` (a light module: the CLI builds its parser without
importing the server, JAX or FastAPI)."""

from __future__ import annotations

import argparse


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Options of ``mtrouter serve`` (also used by ``python -m mtrouter_jax.live.server.app``)."""
    from mtrouter_jax.routing.draft import DEFAULT_DRAFT_TEST, DRAFT_MODES

    p.add_argument("--router", default=None,
                   help="routing policy: safe or learned (need --checkpoint; safe is the default with an "
                        "ensemble checkpoint, learned with a single estimator), tool-heuristic (the default "
                        "without), fixed:MODEL, cheapest, error-escalation[:M1,M2,..], uniform, sticky:RHO")
    p.add_argument("--checkpoint", default=None, help="trained estimator checkpoint (for --router safe/learned)")
    p.add_argument("--explore", default=None,
                   help="exploration for 'mtrouter-explore' requests: eps:E, beta:B (the paper's stage B) or "
                        "sticky:RHO[:E]; propensities are logged")
    p.add_argument("--tool-map", default=None,
                   help="tool type -> model map of the tool heuristic (TOML with [tools]/[classes], or a pool file "
                        "with [tool_heuristic])")
    p.add_argument("--pool", default=None, help="pool file with endpoints (default: the checkpoint's, else the "
                                                "embedded six-model pool)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--lam", type=float, default=None,
                   help="cost weight λ of the learned rule (default: the checkpoint's budget->λ table, else 0.1)")
    p.add_argument("--lam-table", default=None, help="which of the checkpoint's λ tables (scienceworld, sim, ...)")
    p.add_argument("--seed", type=int, default=0, help="base of the per-conversation seeds (each is logged)")
    p.add_argument("--log", dest="log_path", default=None, help="JSONL file for routed episodes")
    p.add_argument("--log-text", action="store_true", help="also log observations/actions")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (one admin key)")
    p.add_argument("--keys", default=None,
                   help="API keys with owners: TOML/JSON file of key -> {tenant, admin, budget_cap, max_open} (also "
                        "env MTROUTER_KEYS, inline JSON); a conversation belongs to the tenant that started it")
    p.add_argument("--public-metrics", action="store_true",
                   help="serve /metrics and the docs pages without a key (with keys configured)")
    p.add_argument("--allow-missing-keys", action="store_true", help="use 'EMPTY' for unset key variables")
    p.add_argument("--timeout", type=float, default=120.0, help="upstream timeout (s)")
    p.add_argument("--max-retries", type=int, default=2, help="upstream retries per model")
    p.add_argument("--strict-cache", action="store_true",
                   help="do not assume prompt-cache hits in the worst-case cost")
    p.add_argument("--keep-alive", type=float, default=75.0,
                   help="seconds an idle client connection is kept open (longer than clients keep theirs)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted (413 above)")
    p.add_argument("--max-open", type=int, default=10_000,
                   help="open conversations at most; a new one beyond is refused with 429 (none is evicted)")
    p.add_argument("--tenant-max-open", type=int, default=None,
                   help="open conversations per tenant at most (default: --max-open; a key's max_open wins)")
    p.add_argument("--max-turns", type=int, default=1000, help="turns per conversation at most (409 beyond)")
    p.add_argument("--turn-deadline", type=float, default=45.0,
                   help="seconds a turn may take upstream, every model, retry and fallback together (504 beyond; "
                        "0: none; raise it for slow non-streamed reasoning models)")
    p.add_argument("--idle-timeout", type=float, default=3600.0,
                   help="seconds after which an idle conversation is logged unscored and dropped (0: never)")
    p.add_argument("--score-range", default=None,
                   help="LO:HI of finish scores when a finish sends no score_range (default: a scored finish must "
                        "send its own)")
    p.add_argument("--draft", nargs="?", const=DEFAULT_DRAFT_TEST, default="auto", choices=DRAFT_MODES, metavar="MODE",
                   help="draft-and-escalate: a turn whose reply calls a tool type the checkpoint's logs show another "
                        "model significantly better at is re-served by that model (the draft is billed; a streamed "
                        "turn that could be re-served is held back and sent whole; docs/live.md, 'Draft routing'). "
                        "MODE: auto (the default: on where the checkpoint's per-turn outcomes show a type another "
                        "model is significantly better at), off, or the escalation test, "
                        f"overlap, difference, or due / due-difference (the alternative valued by hindsight due types; "
                        f"measured, not the default) (--draft alone: {DEFAULT_DRAFT_TEST}; needs the outcomes)")
    p.add_argument("--state", default=None,
                   help="where conversations, budgets and finishes live: memory (default: this process) or "
                        "redis://HOST:PORT/DB, shared by every replica on it (docs/live.md, 'Replicas')")
    p.add_argument("--canary", default=None, metavar="CKPT:FRACTION",
                   help="route FRACTION (in (0, 1)) of new conversations with the candidate checkpoint CKPT (same "
                        "pool, verified on load); the arm is a hash of the episode id and --seed, logged as meta.arm "
                        "(docs/live.md, 'Canary and shadow'; mtrouter compare-arms LOG)")
    p.add_argument("--shadow", default=None, metavar="CKPT",
                   help="on every routed turn also log the decision of the candidate checkpoint CKPT on the same "
                        "history (meta.shadow), never served nor billed")
