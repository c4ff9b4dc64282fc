"""Intermediate features of any network, for methods that distil more than logits.

A Distiller names the feature points it reads per network role in its `features` class
attribute (e.g. {"student": "blocks", "teacher": "blocks"}); `Tap(net, point)` resolves a
point once to modules of that network and `tap(x)` returns (logits, [features]) from one
forward, by forward hooks: no architecture declares anything, so every bench model and a
RobustBench teacher work alike. A point is

- "penultimate": the input of the network's last nn.Linear (the pooled feature vector);
- "blocks": the output of every block the network stacks in its nn.Sequential stages (a
  child with submodules of its own: a residual or inverted-residual block), in forward
  order; a network with no such stage (a plain conv stack) gives its nn.ReLU outputs;
- any other string: a module name of `net.named_modules()`, its output.

The forward with taps runs the network's plain `_call_impl` (its own hooks, eager), never a
compiled call: torch.compile would not see hooks added after it traced the forward.
"""

from __future__ import annotations

from torch import Tensor, nn

PENULTIMATE, BLOCKS = "penultimate", "blocks"


def blocks(net: nn.Module) -> list[nn.Module]:
    """The blocks `net` stacks in its nn.Sequential stages, else its nn.ReLU modules."""
    found = [child for m in net.modules() if isinstance(m, nn.Sequential)
             for child in m.children()
             if not isinstance(child, nn.Sequential) and any(True for _ in child.children())]
    return found or [m for m in net.modules() if isinstance(m, nn.ReLU)]


def resolve(net: nn.Module, point: str) -> tuple[list[nn.Module], bool]:
    """The modules of `point` in `net`, and whether their input (True) or output is read."""
    if point == PENULTIMATE:
        linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise ValueError(f"{type(net).__name__} has no nn.Linear: no penultimate feature")
        return [linear[-1]], True
    if point == BLOCKS:
        return blocks(net), False
    named = dict(net.named_modules())
    if point not in named:
        raise ValueError(f"{type(net).__name__} has no module {point!r}")
    return [named[point]], False


class Tap:
    """`net` with the feature point `point` tapped: `tap(x)` -> (logits, [features])."""

    def __init__(self, net: nn.Module, point: str) -> None:
        self.net, self.point = net, point
        self.modules, self.inputs = resolve(net, point)
        if not self.modules:
            raise ValueError(f"{type(net).__name__} has no {point!r} feature point")

    def __call__(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        seen: dict[int, Tensor] = {}

        def keep_input(module: nn.Module, args: tuple) -> None:
            seen[id(module)] = args[0]

        def keep_output(module: nn.Module, args: tuple, out: Tensor) -> None:
            seen[id(module)] = out

        handles = [m.register_forward_pre_hook(keep_input) if self.inputs
                   else m.register_forward_hook(keep_output) for m in self.modules]
        try:
            logits = self.net._call_impl(x)
        finally:
            for h in handles:
                h.remove()
        return logits, [seen[id(m)] for m in self.modules]
