"""torch.func alone (no metagrad): vmap over a second-order gradient is wrong for some layers, or cannot run.

    python docs/vmap_second_order.py [layer_norm|instance_norm|batch_norm|gru|softmax_dim0|all]

Two tasks of 5 examples; a linear map W, then the layer, then a squared distance to a target. One gradient step on
(W, the layer's weights), then the loss at the stepped parameters: the gradient of the sum over the two tasks,
computed under ``vmap`` and task by task, in float64. Prints their largest difference over the gradient's scale
(round-off is ~1e-16; the loop agrees with central finite differences, tests/test_compatibility.py). When torch
fixes a fault, its line here drops to round-off and metagrad's self-check (metagrad.batching) stops firing for it.
"""

import sys

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

LAYERS = {  # name -> layer(h, weight, bias) on [examples, 6] activations
    "layer_norm": lambda h, w, b: F.layer_norm(h, (6,), w, b),
    "instance_norm": lambda h, w, b: F.instance_norm(h.reshape(1, 6, 5), weight=w, bias=b).reshape(5, 6),
    "batch_norm": lambda h, w, b: F.batch_norm(h, None, None, w, b, training=True),
    "gru": lambda h, w, b: functional_call(GRU, {**dict(GRU.named_parameters()), "bias_ih_l0": b.repeat(3)},
                                           (h[None] * w,))[0][0],  # the 5 examples as one sequence
    "softmax_dim0": lambda h, w, b: torch.softmax(h * w + b, dim=0),  # exact: a control
}
GRU = torch.nn.GRU(6, 6, batch_first=True).double().requires_grad_(False)


def difference(name: str) -> float:
    layer = LAYERS[name]
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    target = torch.randn(5, 6, dtype=torch.float64)
    params = (torch.randn(4, 6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5,
              torch.randn(6, dtype=torch.float64))

    def loss(p, x):
        return ((layer(x @ p[0], p[1], p[2]) - target) ** 2).sum()

    def after_one_step(p, x):
        g = grad(loss)(p, x)
        return loss(tuple(v - 0.1 * gv for v, gv in zip(p, g, strict=True)), x)

    loop = grad(lambda p: sum(after_one_step(p, xi) for xi in x))(params)
    batched = grad(lambda p: vmap(after_one_step, in_dims=(None, 0))(p, x).sum())(params)
    scale = max(g.abs().max() for g in loop)
    return float(max((a - c).abs().max() for a, c in zip(batched, loop, strict=True)) / scale)


if __name__ == "__main__":
    for name in LAYERS if sys.argv[1:] in ([], ["all"]) else sys.argv[1:]:
        try:
            print(f"{name}: vmap differs from the loop by {difference(name):.1e} of the gradient's scale")
        except RuntimeError as e:
            print(f"{name}: vmap cannot run it: {str(e).splitlines()[0]}")
