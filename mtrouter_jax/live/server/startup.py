"""What ``mtrouter serve`` says when it starts: policy, λ, exploration, tool mapping, keys and limits,
one short line each (the full mappings are at ``GET /v1/mtrouter/router``)."""

from __future__ import annotations

from collections import Counter

from mtrouter_jax.live.router import Router
from mtrouter_jax.live.server.api import EXPLORE, ROUTED
from mtrouter_jax.live.server.limits import Limits
from mtrouter_jax.live.server.tenancy import KeyRing

SHOW = 6  # mapping entries shown in the start-up log


def _few(items: list[str], n: int = SHOW) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def startup_lines(router: Router, keys: KeyRing | None = None, limits: Limits | None = None,
                  public_metrics: bool = False) -> list[str]:
    """The start-up log lines (each well under 300 characters)."""
    info = router.describe()
    lines = [f"routing with {info['policy']} over {', '.join(info['pool'])}"]
    lines.append(f"λ: {info['lam']}" if info["lam"] is not None else f"λ: {info['lam_note']}")
    if router.explore_policy is not None:
        lines.append(f"exploring ({info['explore']}) requests with model \"{ROUTED}-{EXPLORE}\" (or "
                     f"\"{ROUTED}-{EXPLORE}-<USD budget>\") or header X-MTRouter-Explore: 1 with model \"{ROUTED}\"; "
                     "every other request routes greedily")
    else:
        lines.append(f"no exploration (--explore not given): model \"{ROUTED}-{EXPLORE}\" and X-MTRouter-Explore: 1 "
                     "are refused with 400")
    mapping = info["tool_mapping"]
    landed = Counter(mapping.values())
    moved = [f"{k}->{v}" for k, v in mapping.items() if k != v]
    lines.append(f"tool-name mapping: {len(mapping)} known names -> {len(landed)} vocabulary entries "
                 f"({_few([f'{v}: {n}' for v, n in landed.most_common()])}); e.g. {_few(moved)} "
                 "(all: GET /v1/mtrouter/router)")
    if "tool_models" in info:
        tm = info["tool_models"]
        by_model: dict[str, list[str]] = {}
        for t, m in tm.items():
            by_model.setdefault(m, []).append(t)
        lines.append(f"tool heuristic: {len(tm)} tool types -> {len(by_model)} models ("
                     + "; ".join(f"{m} after {_few(ts, 4)}" for m, ts in by_model.items()) + ")")
    if keys is not None:
        if keys.enabled:
            ts = keys.tenants()
            lines.append(f"API keys: {len(keys.keys)} for {len(ts)} tenant(s) ({_few([t.name for t in ts])}); "
                         f"admin: {_few([t.name for t in ts if t.admin]) or 'none'}; /metrics and docs "
                         + ("public (--public-metrics)" if public_metrics else "need a key (/metrics an admin one)"))
        else:
            lines.append("no API keys (--keys / MTROUTER_KEYS / --token): every client may read, add to and finish "
                         "every conversation")
    if limits is not None:
        lines.append(f"limits: --max-open {limits.max_open}, --tenant-max-open {limits.tenant_max_open or 'none'}, "
                     f"--max-turns {limits.max_turns}, --turn-deadline {limits.turn_deadline:g} s, "
                     f"--idle-timeout {limits.idle_timeout:g} s, --max-body-mb {limits.max_body_bytes / 2**20:g}, "
                     f"--score-range {'%g:%g' % limits.score_range if limits.score_range else 'none (sent per finish)'}")
    return lines


def arms_lines(arms, served: Router) -> list[str]:
    """What ``--canary`` / ``--shadow`` do, one line each (none without them)."""
    lines = []
    if arms.canary is not None:
        c = arms.canary
        lines.append(f"canary: {arms.fraction:.1%} of new conversations route with checkpoint {c.digest} "
                     f"({c.checkpoint_path}, {c.policy.spec}), the others with {getattr(served, 'digest', None)}; "
                     "the log's meta.arm says which (mtrouter compare-arms LOG)")
        if c.digest == getattr(served, "digest", None):
            lines.append("canary: the candidate is the served checkpoint itself (same digest): both arms route alike")
    if arms.shadow is not None:
        sh = arms.shadow
        lines.append(f"shadow: checkpoint {sh.digest} ({sh.checkpoint_path}, {sh.policy.spec}) decides every routed "
                     "turn beside the served one, logged in the turn's meta.shadow, never served")
    return lines


__all__ = ["startup_lines", "arms_lines"]
