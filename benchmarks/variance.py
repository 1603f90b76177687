"""Gradient variance of a weighter, a sampler and loss-aware sampling at EQUAL expected gradient.

A per-interval weighting w with uniform (or stratified) t and a timestep density proportional
to w with unit weight have the same expected gradient but not the same variance (Kingma & Gao,
NeurIPS 2023). This script measures that on a briefly trained digits model, for ANT-UW's
weights at their stationary point (w_k = 0.5 / L_k on the per-interval mean losses L_k), and
explains why ANT-UW combined with loss-aware sampling (Improved DDPM) trained worse than either.

Estimand (every estimator below has it as its expectation): g = sum_k w_k grad U_k, U_k = the
mean loss over t uniform in interval k. Estimators, batch B:

* `weighter-uniform`:    t ~ U{0..T-1}, weight w_k T / |I_k| per sample, mean over B.
* `weighter-stratified`: ANT-UW as trained: B/K samples per interval, sum_k w_k (interval mean).
* `sampler`:             interval ~ pi_k = w_k / sum w, t uniform inside, unit weight; the
                         batch mean times sum w (a constant the learning rate absorbs).
* `sampler-optimal`:     interval ~ pi*_k proportional to w_k s_k, s_k^2 = E|grad loss|^2 in
                         interval k (measured by the stratified draws), weight w_k / pi*_k:
                         the variance-optimal interval density for this estimand.
* `follow-0.5`:          the `follow:0.5,0,2` sampler fed w: interval density
                         0.5 w / sum w + 0.5 |I_k| / T, weight w_k / p_k (unbiased for the
                         weighted objective; the floor 0.5 is a round choice, not tuned).
* `loss-aware-engine`:   t ~ Improved DDPM's p_t, importance weights (P_k/W_k)/p_t, per-task
                         means over the realised counts n_k (how ANT-UW + loss-aware trains:
                         a task absent from the batch gets weight 0 that step).
* `loss-aware-ht`:       the same draws, divided by the expected count B P_k instead of n_k
                         (Horvitz-Thompson: unbiased also when a task is absent).

Per interval and overall: trace of the covariance of the minibatch gradient (from R independent
draws) and the variance of the per-step objective; the means are checked against the
stratified estimator by  rho = |m_e - m_ref|^2 / ((tr_e + tr_ref) / R), about 1 when the expected
gradients agree and >> 1 when one estimator is biased.

    OMP_NUM_THREADS=1 python benchmarks/variance.py            # ~2-4 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from antdiff.config import TrainConfig
from antdiff.diffusion.loss import per_sample_loss
from antdiff.tasks import FollowSampler, IntervalPartition, LossAwareSampler, StratifiedSampler
from antdiff.train import Trainer

#: the intervals that `affinity:5:auto` chose on digits, seed 0 (docs/results.md)
AUTO_LEFTS = [0, 61, 206, 342, 509]
OUT = Path(__file__).parent / "results" / "variance.json"


def train_model(steps: int, seed: int, out: str) -> Trainer:
    """A vanilla digits model after `steps` steps (uniform t, mean loss)."""
    cfg = TrainConfig(
        dataset="digits",
        clusters="timestep:1",
        method="mean",
        timestep_sampling="uniform",
        steps=steps,
        lr=2e-3,
        batch_size=64,
        seed=seed,
        out=out,
        checkpoint_every=10**6,
        log_every=10**6,
        device="cpu",
    )
    trainer = Trainer.start(cfg)
    trainer.fit()
    return trainer


class Probe:
    """Per-sample losses and per-interval gradient components of the trained model."""

    def __init__(self, trainer: Trainer, part: IntervalPartition) -> None:
        self.model, self.x, self.path = trainer.model.train(), trainer.x, trainer.path
        self.part = part
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def losses(self, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(self.x), (len(t),), generator=g)
        noise = torch.randn((len(t), *self.x.shape[1:]), generator=g)
        return per_sample_loss(self.model, self.x[index], t, noise, self.path)

    def components(self, t: torch.Tensor, coef: torch.Tensor, g: torch.Generator) -> tuple:
        """Gradient [K, P] and objective [K] of sum_i coef_i loss_i, split by interval."""
        task = self.part.task_of(t)
        grads = torch.zeros(self.part.k, sum(p.numel() for p in self.params), dtype=torch.float64)
        values = torch.zeros(self.part.k, dtype=torch.float64)
        loss = self.losses(t, g)
        for k in range(self.part.k):
            mask = task == k
            if not bool(mask.any()):
                continue
            obj = (coef[mask].to(loss) * loss[mask]).sum()
            gk = torch.autograd.grad(obj, self.params, retain_graph=True)
            grads[k] = torch.cat([x.reshape(-1) for x in gk]).double()
            values[k] = float(obj.detach())
        return grads, values


class Moments:
    """Running sums of R draws of a [K, P] gradient split and its [K] objective split."""

    def __init__(self, k: int, p: int) -> None:
        self.n, self.sum = 0, torch.zeros(k, p, dtype=torch.float64)
        self.sq, self.sq_total = torch.zeros(k, dtype=torch.float64), 0.0
        self.loss: list[list[float]] = []

    def add(self, grads: torch.Tensor, values: torch.Tensor) -> None:
        self.n += 1
        self.sum += grads
        self.sq += grads.square().sum(1)
        self.sq_total += float(grads.sum(0).square().sum())
        self.loss.append(values.tolist())

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def trace(self) -> tuple[list[float], float]:
        """tr Cov per interval component and of the total gradient (unbiased, R - 1)."""
        m = self.mean()
        per = (self.sq - self.n * m.square().sum(1)) / (self.n - 1)
        tot = (self.sq_total - self.n * float(m.sum(0).square().sum())) / (self.n - 1)
        return per.tolist(), tot

    def loss_var(self) -> tuple[list[float], float]:
        v = torch.tensor(self.loss, dtype=torch.float64)
        return v.var(0).tolist(), float(v.sum(1).var())


def draws(name: str, ctx: dict, B: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, coefficient per sample) of one minibatch of estimator `name`."""
    part, w, T = ctx["part"], ctx["w"], part_T(ctx["part"])
    widths = part.widths.double()
    if name == "weighter-uniform":
        t = torch.randint(0, T, (B,), generator=g)
        return t, (w * T / widths)[part.task_of(t)] / B
    if name == "weighter-stratified":
        t, task = StratifiedSampler(part).sample(B, g)
        n = torch.bincount(task, minlength=part.k).double()
        return t, (w / n)[task]
    if name in ("sampler", "sampler-optimal"):
        pi = w / w.sum() if name == "sampler" else ctx["optimal"]
        task = torch.multinomial(pi, B, True, generator=g)
        u = torch.rand(B, generator=g, dtype=torch.float64)
        t = part.lefts[task] + (u * widths[task]).long().clamp_max(part.widths[task] - 1)
        return t, (w / pi)[task] / B
    if name == "follow-0.5":
        follow: FollowSampler = ctx["follow"]
        t, task = follow.sample(B, g)
        n = torch.bincount(task, minlength=part.k).double()
        return t, (follow.shares(task) * w.sum() / n.clamp_min(1))[task]  # weights sum to 1
    la: LossAwareSampler = ctx["loss_aware"]
    t, task = la.sample(B, g)
    r = la.importance(t).double()
    if name == "loss-aware-engine":
        n = torch.bincount(task, minlength=part.k).double()
        return t, (w / n.clamp_min(1))[task] * r
    assert name == "loss-aware-ht"
    return t, (w / (B * ctx["mass"]))[task] * r


def optimal_density(mom: Moments, trace: list[float], w, part, B: int) -> torch.Tensor:
    """pi*_k proportional to w_k s_k, s_k^2 = E|grad loss_i|^2 over t uniform in interval k,
    from the stratified draws: component k = w_k (mean of n_k ~ B / K per-sample gradients)."""
    n = B / part.k
    mean_sq = mom.mean().square().sum(1)
    second = (torch.tensor(trace, dtype=torch.float64) * n + mean_sq) / w.square()
    pi = w * second.sqrt()
    return pi / pi.sum()


def part_T(part: IntervalPartition) -> int:
    return int(part.timesteps)


ESTIMATORS = [
    "weighter-stratified",  # first: the reference, and s_k for the optimal density
    "weighter-uniform",
    "sampler",
    "sampler-optimal",
    "loss-aware-engine",
    "loss-aware-ht",
    "follow-0.5",  # last: the draws of the others stay those of earlier versions
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="vanilla training steps first")
    ap.add_argument("--draws", type=int, default=128, help="independent minibatches R")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train_model(args.steps, args.seed, str(Path(tmp) / "run"))
        trainer.close()
    part = IntervalPartition.from_bounds(AUTO_LEFTS, 1000)
    probe = Probe(trainer, part)
    g = torch.Generator().manual_seed(args.seed + 1)

    # the per-interval mean losses U_k and UW's stationary weights w_k = 0.5 / U_k
    with torch.no_grad():
        t_all = torch.arange(part.timesteps).repeat(10)
        loss_all = torch.cat([probe.losses(c, g) for c in t_all.split(1000)]).double()
    la = LossAwareSampler(part)
    la.observe(t_all, loss_all)
    task_all = part.task_of(t_all)
    U = torch.zeros(part.k, dtype=torch.float64).index_add(0, task_all, loss_all)
    U = U / torch.bincount(task_all, minlength=part.k).double()
    w = 0.5 / U
    p = la.probabilities()
    mass = torch.zeros(part.k, dtype=torch.float64).index_add(
        0, part.task_of(torch.arange(1000)), p
    )
    follow = FollowSampler(part, floor=0.5, decay=0.0, importance=2)
    follow.after_step(torch.arange(part.timesteps), None, w)
    ctx = {"part": part, "w": w, "loss_aware": la, "mass": mass, "follow": follow}
    absent = (1 - mass) ** args.batch

    results: dict[str, dict] = {}
    n_params = sum(q.numel() for q in probe.params)
    for name in ESTIMATORS:
        mom = Moments(part.k, n_params)
        for _ in range(args.draws):
            t, coef = draws(name, ctx, args.batch, g)
            mom.add(*probe.components(t, coef, g))
        per, tot = mom.trace()
        lper, ltot = mom.loss_var()
        results[name] = {"moments": mom, "trace": per, "trace_total": tot}
        if name == "weighter-stratified":
            ctx["optimal"] = optimal_density(mom, per, w, part, args.batch)
        results[name].update(loss_var=lper, loss_var_total=ltot)
    ref = results["weighter-stratified"]
    ref_mean = ref["moments"].mean()
    for r in results.values():
        diff = r["moments"].mean() - ref_mean
        noise = [(a + b) / args.draws for a, b in zip(r["trace"], ref["trace"], strict=True)]
        sq = diff.square().sum(1).tolist()
        r["rho"] = [d / max(n, 1e-300) for d, n in zip(sq, noise, strict=True)]
        noise_tot = (r["trace_total"] + ref["trace_total"]) / args.draws
        r["rho_total"] = float(diff.sum(0).square().sum()) / noise_tot
        r["mean_norm"] = float(r["moments"].mean().sum(0).norm())
    for r in results.values():
        del r["moments"]
    report(results, part, U, w, mass, absent, args, ctx["optimal"])
    payload = {
        "setting": "digits 8x8, unet-tiny, vanilla (uniform t, mean loss), lr 2e-3, batch 64",
        "train_steps": args.steps,
        "draws": args.draws,
        "batch": args.batch,
        "seed": args.seed,
        "intervals": [list(iv) for iv in part.intervals],
        "interval_loss": U.tolist(),
        "uw_weights": w.tolist(),
        "sampler_probabilities": (w / w.sum()).tolist(),
        "optimal_probabilities": ctx["optimal"].tolist(),
        "follow_probabilities": follow.probabilities().tolist(),
        "loss_aware_mass": mass.tolist(),
        "loss_aware_p_absent": absent.tolist(),
        "estimators": results,
        "seconds": round(time.time() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out} ({payload['seconds']} s)")


def report(results: dict, part, U, w, mass, absent, args, optimal) -> None:
    k = part.k
    print(f"intervals {[list(iv) for iv in part.intervals]}, B = {args.batch}, R = {args.draws}")
    print("interval loss U_k  " + " ".join(f"{u:10.4g}" for u in U.tolist()))
    print("UW weight w_k      " + " ".join(f"{x:10.4g}" for x in w.tolist()))
    print("sampler pi_k       " + " ".join(f"{x:10.4g}" for x in (w / w.sum()).tolist()))
    print("optimal pi*_k      " + " ".join(f"{x:10.4g}" for x in optimal.tolist()))
    print("loss-aware P_k     " + " ".join(f"{x:10.4g}" for x in mass.tolist()))
    print("P(n_k = 0), l-a    " + " ".join(f"{x:10.4g}" for x in absent.tolist()))
    head = " ".join(f"{'I' + str(i):>9}" for i in range(k))
    for key, label in (("trace", "tr Cov(grad)"), ("loss_var", "Var(objective)"), ("rho", "rho")):
        print(f"\n{label}, per interval and total")
        print(f"{'estimator':22} {head} {'total':>10}")
        for name, r in results.items():
            total = r[key + "_total"] if key != "rho" else r["rho_total"]
            cells = " ".join(f"{x:9.3g}" for x in r[key])
            print(f"{name:22} {cells} {total:10.4g}")
    print(f"\n|E grad| (stratified) = {results['weighter-stratified']['mean_norm']:.4g}")


if __name__ == "__main__":
    main()
