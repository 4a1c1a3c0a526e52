"""What executed counterfactuals are worth (issue 17): pair statistics of a branched log and how
well checkpoints predict held-out pairs.

    python scripts/bench_branch_pairs.py --log runs/w17/spec_branch.jsonl \
        --heldout runs/w17/spec_dev_branch.jsonl --checkpoints runs/w17/ckpt_branch runs/w17/ckpt_plain

For ``--log``: how many pairs, the variance of a pair's advantage label against that of one
Monte-Carlo target (the information a pair adds over two unpaired roulette turns), the share of
pairs with equal outcomes, and what a labelled turn costs next to a roulette episode. For each
checkpoint on ``--heldout`` pairs (a branched log none of them was trained on): how often the
sign of the predicted difference Q(h, b) - Q(h, a) matches the pair's (pairs with a nonzero
label), and the correlation of predicted and observed differences.
"""

from __future__ import annotations

import argparse
import warnings


def pair_stats(path: str) -> dict:
    import numpy as np

    from mtrouter_jax.core.pool import default_pool
    from mtrouter_jax.estimator.dataset import build_training_data
    from mtrouter_jax.estimator.pairs import paired_advantages
    from mtrouter_jax.logs.io import iter_episodes

    eps = list(iter_episodes(path))
    data = build_training_data(eps, default_pool())
    d = np.asarray(paired_advantages(data.score_target, data.pairs))
    base = [e for e in eps if "branch_of" not in (e.meta or {})]
    br = [e for e in eps if "branch_of" in (e.meta or {})]
    by_id = {e.episode_id: e for e in eps}
    terminal = np.array([e.score - by_id[e.meta["branch_of"]].score for e in br if e.meta["branch_of"] in by_id])
    return {"episodes": len(eps), "base": len(base), "pairs": int(len(d)),
            "var_pair_label": float(d.var()), "var_target": float(data.score_target.var()),
            "unpaired_over_paired_variance": float(2 * data.score_target.var() / max(d.var(), 1e-12)),
            "equal_terminal_share": float(np.mean(terminal == 0)), "equal_label_share": float(np.mean(np.abs(d) < 1e-6)),
            "base_episode_cost": float(np.mean([e.total_cost for e in base])),
            "branch_cost": float(np.mean([e.meta["branch_cost"] for e in br])),
            "base_turns": float(np.mean([len(e.turns) for e in base]))}


def heldout_accuracy(ckpt_path: str, path: str) -> dict:
    import numpy as np

    from mtrouter_jax.estimator.checkpoint import load_checkpoint
    from mtrouter_jax.estimator.dataset import build_training_data
    from mtrouter_jax.estimator.pairs import paired_advantages
    from mtrouter_jax.estimator.text import make_text_encoder
    from mtrouter_jax.logs.io import iter_episodes

    est = load_checkpoint(ckpt_path)
    enc = make_text_encoder(est.text_encoder_config) if est.text_encoder_config else None
    data = build_training_data(list(iter_episodes(path)), est.pool, layout=est.layout, text_encoder=enc)
    d = np.asarray(paired_advantages(data.score_target, data.pairs))
    i, j = data.pairs[:, 0], data.pairs[:, 1]
    score, _ = est.predict(data.features[i])
    pred = score[np.arange(len(i)), data.model[j]] - score[np.arange(len(i)), data.model[i]]
    nz = np.abs(d) > 1e-6
    return {"checkpoint": ckpt_path, "pairs": int(len(d)), "nonzero": int(nz.sum()),
            "sign_accuracy": float(np.mean(np.sign(pred[nz]) == np.sign(d[nz]))) if nz.any() else float("nan"),
            "corr": float(np.corrcoef(pred, d)[0, 1]) if len(d) > 2 else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", required=True, help="a branched log (collect scienceworld --branch K)")
    ap.add_argument("--heldout", default=None, help="another branched log for the checkpoints' pair accuracy")
    ap.add_argument("--checkpoints", nargs="*", default=[])
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    s = pair_stats(a.log)
    print(f"{a.log}: {s['episodes']} episodes ({s['base']} base), {s['pairs']} pairs; "
          f"var(pair label) {s['var_pair_label']:.4f} vs var(one target) {s['var_target']:.4f}: "
          f"a pair is worth {s['unpaired_over_paired_variance']:.2f}x two unpaired turns; "
          f"equal terminal scores {s['equal_terminal_share']:.0%}, zero labels {s['equal_label_share']:.0%}; "
          f"a branch costs ${s['branch_cost']:.4f} (a base episode ${s['base_episode_cost']:.4f}, "
          f"{s['base_turns']:.1f} turns)")
    for c in a.checkpoints:
        r = heldout_accuracy(c, a.heldout or a.log)
        print(f"{c}: {r['pairs']} held-out pairs ({r['nonzero']} nonzero): sign accuracy {r['sign_accuracy']:.3f}, "
              f"corr(predicted, observed difference) {r['corr']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
