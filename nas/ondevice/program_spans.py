"""The tensors an ExecuTorch training program adds to a layer-spec op's own activations and
gradients: a linear layer's transposed weight, the masks of a decomposed hardswish, the
expanded gradient of a mean, the full-size product a broadcast factor's gradient sums.

Checked on the program's graph (executorch 1.5.1, `mobilenetv3`): ``linear`` lowers to
``permute_copy(W)`` and ``addmm``; when its input needs a gradient the transpose is kept to
the backward, which permutes it back (a second weight-sized tensor) for ``mm``; a trained
weight's gradient is ``mm`` (weight-sized), ``permute_copy`` and ``permute_copy`` again (the
output), each alive beside the one before. ``hardswish``'s backward makes two boolean masks
of its input (``le``, ``lt``) that live through it; ``mean``'s backward ``expand_copy`` s the
gradient to the input's size, then divides (a second input-sized tensor); the gradient of a
broadcast factor of ``mul`` is a full-size product, then a sum; a ReLU that is not in place
copies its output in the forward and keeps the copy to its backward (nb201's ReLU-conv-BN).

Times are on the memory model's grid scaled by :data:`SUBSTEPS`: forward op ``e`` runs in the
slot ``SUBSTEPS * e``, its backward in ``SUBSTEPS * (2n - e)``, whose sub-steps order the
backward's own tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SUBSTEPS", "program_spans", "trained_linear_weights"]

#: sub-steps of one op's slot
SUBSTEPS = 4


def trained_linear_weights(ops: Sequence[Any], trains: Callable[[str], bool]) -> set[str]:
    """The trained weights of linear layers: their gradients are priced by `program_spans`."""
    return {
        p
        for op in ops
        if op.op == "linear"
        for p in op.params
        if p.endswith("weight") and trains(p)
    }


def _linear(
    e: int, b: int, weight: int, input_grad: bool, trained: bool, end: int
) -> list[tuple[int, int, int]]:
    k = SUBSTEPS
    spans = []
    if input_grad:  # the transpose kept to the backward, permuted back there for the mm
        spans += [(k * e, k * b, weight), (k * b, k * b + 1, weight)]
    else:
        spans.append((k * e, k * e, weight))
    if trained:  # mm, its transpose, and the transpose back (the program's output)
        spans += [(k * b + 2, k * b + 2, weight), (k * b + 2, k * b + 3, weight)]
        spans.append((k * b + 3, end, weight))
    return spans


def program_spans(
    ops: Sequence[Any],
    trains: Callable[[str], bool],
    t_rg: Sequence[bool],
    op_rg: Sequence[bool],
    nbytes: Sequence[int],
    numels: dict[str, int],
    elem: int,
    end: int,
) -> list[tuple[int, int, int]]:
    """(start, end, bytes) on the scaled grid of the tensors named in the module docstring;
    `end` is the scaled end of the step. `ops` are the memory model's recorded ops."""
    n, k = len(ops), SUBSTEPS
    spans: list[tuple[int, int, int]] = []
    for e, op in enumerate(ops):
        b = 2 * n - e
        in_grad = bool(op.reads) and op_rg[e] and t_rg[op.reads[0]]
        if op.op == "linear":
            for p in op.params:
                if p.endswith("weight") and p in numels:
                    trained = op_rg[e] and trains(p)
                    spans += _linear(e, b, numels[p] * elem, in_grad, trained, end)
        elif op.op == "act" and op.activation == "relu" and not op.in_place and in_grad:
            # a ReLU that does not overwrite its input: the program copies its output in the
            # forward (``alias_copy``) and keeps the copy to the backward
            spans.append((k * e, k * b, nbytes[op.writes]))
        elif op.op == "act" and op.activation == "hswish" and in_grad:
            masks = 2 * (nbytes[op.reads[0]] // elem)  # two bool masks, a byte an element
            spans.append((k * b, k * b + k - 1, masks))
        elif op.op == "global_avgpool" and in_grad:
            spans.append((k * b, k * b, nbytes[op.reads[0]]))
        elif op.op == "mul" and op_rg[e] and len(op.reads) == 2:
            for r in op.reads:
                if t_rg[r] and nbytes[r] < nbytes[op.writes]:
                    spans.append((k * b, k * b, nbytes[op.writes]))
    return spans
