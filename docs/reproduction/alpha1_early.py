"""MT-net at alpha = 1 (issue 16, part 1): what the masks, T and the ReLUs do in the first meta-steps,
per seed, and which seeds end up at the zero predictor. Trains each seed alone (the same
configuration as the bundled `mtnet-alpha1-seeds` run of FINDINGS.md: 10-shot sine, meta-batch 4,
beta 0.001, c = 1, one inner step) and logs, at the listed meta-steps:

- loss: the meta-training loss (query loss after the inner step) averaged since the previous log;
- val: the validation loss after one inner step (100 fixed meta-validation tasks);
- p_update: P(m = 1) = sigmoid(zeta) per layer (the mask's expected fraction of updated rows);
- T: the spectral norm and the smallest singular value of each layer's T;
- dead0 / dead1: the fraction of hidden units of layers 1 and 2 that are 0 for every x of a grid
  over [-5, 5] in the meta-learned (pre-update) net;
- post_dead1, post_std: after one inner step on 20 validation tasks (threshold masks, i.e. rows with
  P(m = 1) >= 1/2, for a noise-free probe): the fraction of dead units of layer 2 and the standard
  deviation of the adapted net's output over the grid (0 = a constant predictor);
- step_norm: the norm of alpha * M * grad of the inner step on those tasks (mean over tasks), and
  grad_norm: of the raw inner gradient.

    python docs/reproduction/alpha1_early.py --seeds 0-31 --steps 2000 > alpha1_early.jsonl
    python docs/reproduction/alpha1_early.py --seeds 0-31 --steps 2000 --adam-eps tf >> alpha1_early.jsonl
    python docs/reproduction/alpha1_early.py --seeds 0-31 --steps 2000 --variant maml >> alpha1_early.jsonl
    python docs/reproduction/alpha1_early.py --seeds 0-31 --steps 2000 --variant t-net >> alpha1_early.jsonl
    python docs/reproduction/alpha1_early.py --summary alpha1_early.jsonl --plot alpha1-dead-units.png

(docs/reproduction/alpha1/ holds the rows and the figure of the runs FINDINGS.md reports.)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metasweep.core.adapt import adapt, adapted_names, mask_logits_name
from metasweep.core.meta import outer_step
from metasweep.core.state import init_state
from metasweep.core.train import validation_loss
from metasweep.sweeps.plan import Cell, trial_config
from metasweep.sweeps.spec import parse_spec
from metasweep.sweeps.trial import build_setup

SPEC = """
experiment: mtnet-alpha1-early
mode: grid
task: {family: sine, queries: 10}
variants: [maml, t-net, m-net, mt-net]
train_shots: [10]
budget: {meta_steps: 60000, report_every: 2000, meta_batch: 4, inner_steps: 1}
eval: {shots: [10], inner_steps: [1], tasks: 600, val_tasks: 100, mask_eval: sample}
defaults: {beta: 0.001, temperature: 1.0}
grid: {alpha: [1.0]}
"""
LOG_AT = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def probe(setup, params, grid: torch.Tensor, tasks) -> dict:
    model, variant = setup.model, setup.variant
    out = {}
    with torch.no_grad():
        h = grid.unsqueeze(-1)
        for layer in range(model.n_cells - 1):
            act = model.forward(params, h, upto=layer + 1)
            out[f"dead{layer}"] = round(float((act.amax(0) <= 0).float().mean()), 3)
        for c in model.cell_names():
            z = params.get(f"{c}.zeta")
            if z is not None:
                out.setdefault("p_update", []).append(round(float(torch.sigmoid(z).mean()), 3))
            T = params.get(f"{c}.T")
            if T is not None:
                s = torch.linalg.svdvals(T)
                out.setdefault("T", []).append([round(float(s.max()), 3), round(float(s.min()), 3)])
    # one inner step on the probe tasks with threshold masks (no noise), second order not needed here
    n = tasks.x_support.shape[0]
    p = {k: v.detach() for k, v in params.items()}
    fast = adapt(p, tasks.x_support, tasks.y_support, model=model, variant=variant, alpha=setup.hp.alpha,
                 temperature=setup.hp.temperature, steps=1, loss_fn=setup.family.loss, mask_mode="threshold",
                 batched=True)
    names = adapted_names(model, variant)
    with torch.no_grad():
        step = torch.sqrt(sum(((fast[k] - p[k].expand_as(fast[k])) ** 2).flatten(1).sum(1) for k in names))
        gx = grid.view(1, -1, 1).expand(n, -1, -1)
        y = model.forward(fast, gx)
        act = model.forward(fast, gx, upto=model.n_cells - 1)
    out["post_dead1"] = round(float((act.amax(1) <= 0).float().mean()), 3)
    out["post_std"] = float(f"{float(y.squeeze(-1).std(1).mean()):.3g}")
    out["step_norm"] = float(f"{float(step.mean()):.3g}")
    masks = {mask_logits_name(k, variant) for k in names} - {None}
    out["masked_layers"] = len(masks)
    return out


def summarize(paths: list[str], plot: str | None) -> None:
    """Per (variant, Adam eps convention): how many seeds have every layer-2 unit dead at each logged
    step (the zero predictor) and their validation loss; optionally a figure of dead1 per seed."""
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r["adam_eps"]), []).append(r)
    print("| variant | Adam eps | seeds | all layer-2 units dead at step 20 / 100 / 500 / 2000 "
          "| val loss at 2000: dead | alive |")
    print("|---|---|---|---|---|---|")
    for (variant, eps), rs in sorted(groups.items()):
        seeds = sorted({r["seed"] for r in rs})
        at = {s: {r["seed"]: r for r in rs if r["step"] == s} for s in (20, 100, 500, 2000)}
        dead = [sum(r["dead1"] == 1.0 for r in at[s].values()) for s in (20, 100, 500, 2000)]
        end = at[2000].values()
        dv = [r["val"] for r in end if r["dead1"] == 1.0]
        av = [r["val"] for r in end if r["dead1"] < 1.0]

        def rng(v):
            return f"{min(v):.2f}-{max(v):.2f} ({len(v)})" if v else "-"
        print(f"| {variant} | {eps} | {len(seeds)} | {' / '.join(map(str, dead))} | {rng(dv)} | {rng(av)} |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted(groups)
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), sharey=True)
        for ax, key in zip(axes, keys):
            by_seed: dict = {}
            for r in groups[key]:
                by_seed.setdefault(r["seed"], []).append((max(r["step"], 0.5), r["dead1"]))
            for pts in by_seed.values():
                pts.sort()
                alive = pts[-1][1] < 1.0
                ax.plot(*zip(*pts), color="tab:blue" if alive else "tab:red", alpha=0.6, lw=1)
            ax.set_xscale("log")
            ax.set_title(f"{key[0]} (Adam eps: {key[1]})", fontsize=9)
            ax.set_xlabel("meta-step")
        axes[0].set_ylabel("dead fraction of layer-2 ReLUs")
        fig.suptitle("alpha = 1: red = every layer-2 unit dead at step 2000 (the constant predictor)", fontsize=9)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--variant", default="mt-net")
    ap.add_argument("--adam-eps", choices=("torch", "tf"), default="torch",
                    help="tf: TensorFlow 1's AdamOptimizer convention (the authors' code), epsilon added to "
                         "sqrt(v) before bias correction: torch's eps = 1e-8 / sqrt(1 - beta2^t) at step t")
    ap.add_argument("--summary", nargs="+", help="JSONL files written by this script: print the table instead")
    ap.add_argument("--plot", help="with --summary: write the figure to this PNG")
    args = ap.parse_args()
    if args.summary:
        summarize(args.summary, args.plot)
        return
    torch.set_num_threads(1)
    spec = parse_spec(SPEC, "alpha1_early.yaml")[0]
    grid = torch.linspace(-5, 5, 501)
    for seed in seeds(args.seeds):
        cfg = trial_config(spec, Cell(args.variant, 10), split="val", seed=seed, alpha=args.alpha)
        setup = build_setup(cfg)
        tasks = setup.family.eval_tasks("val", 0, range(20), 10, 10).to(setup.device, setup.dtype)
        state = init_state(setup, seed)
        window, t0 = [], time.perf_counter()
        while True:
            if state.step in LOG_AT or state.step == args.steps:
                val, _ = validation_loss(setup, state.params, 100, 0)
                row = {"variant": args.variant, "seed": seed, "alpha": args.alpha, "adam_eps": args.adam_eps,
                       "step": state.step,
                       "loss": None if not window else round(sum(window) / len(window), 4), "val": round(val, 4)}
                row.update(probe(setup, state.params, grid, tasks))
                row["wall_s"] = round(time.perf_counter() - t0, 1)
                print(json.dumps(row), flush=True)
                window = []
            if state.step >= args.steps:
                break
            if args.adam_eps == "tf":
                b2 = state.optimizer.param_groups[0]["betas"][1]
                for group in state.optimizer.param_groups:
                    group["eps"] = 1e-8 / (1 - b2 ** (state.step + 1)) ** 0.5
            window.append(float(outer_step(setup, state)))


if __name__ == "__main__":
    main()
