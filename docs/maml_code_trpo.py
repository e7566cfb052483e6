"""Which direction the MAML code's TRPO step takes: its conjugate gradient multiplies by the KL's Hessian through
finite differences (maml_rl's ``FiniteDifferenceHvp``: the KL's gradient at theta +- eps v, eps = 1e-8 / ||theta||,
on float32 parameters), where metagrad multiplies exactly. Emulated here on one MAML-TRPO meta-batch (the KL through
the inner step, as the MAML code's meta-objective): the share of parameters that theta + eps v actually moves in
float32, the size and direction of that product against the exact one, and the direction conjugate gradient then
returns (10 iterations, damping 1e-5, rllab's ``krylov.cg``) against the gradient and the natural gradient.

    OMP_NUM_THREADS=1 python docs/maml_code_trpo.py [--run results/long/cheetah-dir-seed-1/maml-trpo] [--fresh]
        [--tasks 10]

``--fresh``: the run's policy as initialized instead of its best checkpoint. Used in docs/meta-rl.md.
"""

from __future__ import annotations

import argparse

import torch

from metagrad.experiment import load_run
from metagrad.rl.train import build
from metagrad.rl.trpo import conjugate_gradient, flatten, unflatten


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="results/long/cheetah-dir-seed-1/maml-trpo")
    parser.add_argument("--fresh", action="store_true", help="the initial policy, not the best checkpoint")
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()
    learner, cfg, info = load_run(args.run, "best")
    if args.fresh:  # the policy as the run's seed initialized it
        learner, _ = build(cfg)
    learner.use_compile, learner.hvp_subsample = False, 1.0  # both products over every episode
    theta = learner.meta_params()
    tasks = learner.env.sample_tasks(args.tasks, torch.Generator().manual_seed(1))
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(2))
    x0 = flatten(theta).float()
    g = flatten(learner.meta_gradient(trajs, out)).float()

    def kl_grad(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        (value,) = torch.autograd.grad(learner.kl(unflatten(x, theta), trajs, out), x)
        return value

    eps = torch.tensor(1e-8 / (float(x0.norm()) + 1e-8), dtype=torch.float32)
    moved: list[float] = []

    def finite_difference(v: torch.Tensor) -> torch.Tensor:  # maml_rl's, in float32, plus its reg_coeff 1e-5
        v = v.float()
        plus, minus = x0 + eps * v, x0 - eps * v
        moved.append(float(((plus != x0) | (minus != x0)).float().mean()))
        return (kl_grad(plus) - kl_grad(minus)) / (2 * eps) + 1e-5 * v

    exact = learner.kl_hvp(trajs, out)
    hv_fd, hv = finite_difference(g), exact(g)
    natural = conjugate_gradient(exact, g, 10)
    fd_direction = conjugate_gradient(finite_difference, g, 10)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))

    which = "as initialized" if args.fresh else f"best checkpoint, iteration {info.get('iteration')}"
    print(f"{args.run} ({which}), {args.tasks} tasks x {cfg.episodes} episodes; "
          f"||theta|| = {float(x0.norm()):.3g}, eps = {float(eps):.3g}")
    print(f"parameters that theta +- eps g moves in float32: {100 * moved[0]:.2f}%")
    print(f"product with g: ||finite difference|| / ||exact|| = {float(hv_fd.norm() / hv.norm()):.3g}, "
          f"cos = {cos(hv_fd, hv):.3f}")
    print(f"conjugate-gradient direction: cos(finite difference, gradient) = {cos(fd_direction, g):.6f}, "
          f"cos(finite difference, natural gradient) = {cos(fd_direction, natural):.3f}, "
          f"cos(natural gradient, gradient) = {cos(natural, g):.3f}")


if __name__ == "__main__":
    main()
