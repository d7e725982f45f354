"""Meta-RL speed: environment steps/s of rollout collection (one trajectory at a time vs every
trajectory of a meta-batch in one batch), and the share of a MAML-TRPO / ANIL-TRPO meta-iteration
spent sampling vs computing the TRPO step.

- rollouts: the policy (Gaussian MLP 100-100, as the papers) rolled out for a full horizon; "single":
  one task, one trajectory per call (a policy call and an environment step per time step, the way a
  per-environment loop collects); "vectorised": `--tasks` x `--trajectories` trajectories in one call
  (one batched policy call per time step; 2D navigation batched in torch, HalfCheetah as one gymnasium
  SyncVectorEnv). Steps/s = trajectories x horizon / seconds.
- meta-iteration: one `outer_step` split into `collect` (tasks, support rollouts, advantages, the
  graph-free inner step, query rollouts) and the TRPO step (the surrogate's gradient through the inner
  step, 10 conjugate-gradient Fisher products, the line search), at the paper's sizes on navigation
  (40 tasks x 20 + 20 trajectories x 100 steps) and on HalfCheetah-Direction with `--cheetah-tasks`.

Rounds interleave the cases (the machine is shared and noisy); medians over rounds, ratios measured in
the same run. One thread by default. HalfCheetah is skipped (with the reason) where MuJoCo cannot load.

    python bench/bench_rl.py [--rounds 3] [--tasks 40] [--trajectories 20] [--cheetah-tasks 10]
        [--single-trajectories 20] [--threads 1] [--no-cheetah] [--no-rollouts]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metasweep.core import HParams, registry
from metasweep.core.rl.cheetah import mujoco_problem
from metasweep.core.rl.outer import collect, kl_metric, mean_kl, query_dist, surrogate
from metasweep.core.rl.policy import GaussianMLP, sample
from metasweep.core.rl.sampling import draw_noise
from metasweep.core.rl.trpo import trpo_step
from metasweep.core.setup import Setup
from metasweep.core.state import init_state


def policy_for(family):
    model = GaussianMLP((family.obs_dim, 100, 100, family.act_dim))
    return model, model.init(torch.Generator().manual_seed(0))


def rollout_seconds(family, model, params, n_tasks: int, n: int, calls: int) -> float:
    """Seconds for `calls` rollout calls of n trajectories in each of n_tasks tasks."""
    g = torch.Generator().manual_seed(1)
    tasks = family.draw_tasks(g, n_tasks).float()
    eps, seeds = draw_noise(family, g, n_tasks, n, torch.float32)
    act = lambda obs, t: sample(model.forward(params, obs), eps[:, :, t])
    family.rollout(act, tasks, seeds)  # warm-up (HalfCheetah: makes the vector environment once)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(calls):
            family.rollout(act, tasks, seeds)
    return time.perf_counter() - t0


def bench_rollouts(families, args) -> dict:
    rows = {}
    for _ in range(args.rounds):
        for name, family in families.items():
            model, params = policy_for(family)
            single = rollout_seconds(family, model, params, 1, 1, args.single_trajectories)
            n_tasks = args.tasks if name == "navigation2d" else args.cheetah_tasks
            vec = rollout_seconds(family, model, params, n_tasks, args.trajectories, 1)
            r = rows.setdefault(name, {"single": [], "vectorised": [], "envs": n_tasks * args.trajectories})
            r["single"].append(args.single_trajectories * family.horizon / single)
            r["vectorised"].append(n_tasks * args.trajectories * family.horizon / vec)
    out = {}
    for name, r in rows.items():
        s, v = statistics.median(r["single"]), statistics.median(r["vectorised"])
        out[name] = {"single_steps_per_s": s, "vectorised_steps_per_s": v, "speedup": v / s,
                     "vectorised_trajectories": r["envs"]}
        print(f"{name:13s} rollouts: single {s:10.0f} steps/s   vectorised ({r['envs']} trajectories) "
              f"{v:10.0f} steps/s   x{v / s:.1f}", flush=True)
    return out


def iteration_split(setup) -> tuple[float, float, float, float]:
    """(wall s sampling, wall s TRPO step, CPU s sampling, CPU s TRPO step) of one meta-iteration
    (CPU time: what a core-hour projection needs on a shared machine)."""
    state = init_state(setup, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    mb = collect(setup, state.params, state.generator)
    t1, c1 = time.perf_counter(), time.process_time()
    q = mb.query
    trpo_step(state.params, lambda p: query_dist(setup, p, mb), lambda out: -surrogate(out, q.y).mean(),
              lambda out: mean_kl(q.dist, out, q.y).mean(), kl_metric(q.dist, q.y, q.x.shape[0]),
              max_kl=setup.hp.get("max_kl"))
    return t1 - t0, time.perf_counter() - t1, c1 - c0, time.process_time() - c1


def bench_iterations(families, args) -> dict:
    cases = {}
    for name, family in families.items():
        n_tasks = args.tasks if name == "navigation2d" else args.cheetah_tasks
        for preset in ("maml-trpo", "anil-trpo"):
            learner = registry.make_learner(preset)
            setup = Setup(family, learner, HParams(alpha=0.1, meta_batch=n_tasks), learner.make_model(family, (100, 100)),
                          train_shots=args.trajectories, queries=args.trajectories)
            cases[(name, preset)] = setup
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, setup in cases.items():
            times[k].append(iteration_split(setup))
    out = {}
    for (name, preset), ts in times.items():
        sampling, step, cpu_sampling, cpu_step = (statistics.median(t[i] for t in ts) for i in range(4))
        share = sampling / (sampling + step)
        n_tasks = cases[(name, preset)].hp.meta_batch
        out[f"{name}/{preset}"] = {"sampling_s": sampling, "trpo_step_s": step, "sampling_share": share,
                                   "cpu_sampling_s": cpu_sampling, "cpu_trpo_step_s": cpu_step, "tasks": n_tasks}
        print(f"{name:13s} {preset:10s} meta-iteration ({n_tasks} tasks): sampling {sampling:6.2f} s, "
              f"TRPO step {step:6.2f} s -> sampling {100 * share:4.1f} % (CPU: {cpu_sampling:.2f} s + "
              f"{cpu_step:.2f} s)", flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="meta-RL rollouts and meta-iteration split")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--trajectories", type=int, default=20)
    ap.add_argument("--cheetah-tasks", type=int, default=10)
    ap.add_argument("--single-trajectories", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-cheetah", action="store_true")
    ap.add_argument("--no-rollouts", action="store_true", help="only the meta-iteration split")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    families = {"navigation2d": registry.make_family("navigation2d")}
    problem = "--no-cheetah" if args.no_cheetah else mujoco_problem()
    if problem:
        print(f"cheetah-dir skipped: {problem}")
    else:
        families["cheetah-dir"] = registry.make_family("cheetah-dir")
    result = {"rollouts": {} if args.no_rollouts else bench_rollouts(families, args),
              "iterations": bench_iterations(families, args)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
