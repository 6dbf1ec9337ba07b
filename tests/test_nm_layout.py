"""N:M masks in the layout 2:4 sparse kernels accept: every group of a pruned linear and conv
weight, laid out as the kernel reads it, passes the pattern check of
``torch.sparse.to_sparse_semi_structured``; the old layout (groups along the flattened
C x kh x kw row) does not; the layout fractions are exact; ``python -m prune_core`` reports them.

``to_sparse_semi_structured`` runs only on CUDA. Its CUTLASS conversion
(``torch/sparse/_semi_structured_conversions.py``) does not reject a bad group: it encodes two
indices per group of 4 and silently drops any other non-zero. So "accepted" means: every non-zero
of the group sits at one of the two encoded indices, i.e. the dense -> sparse -> dense round trip
is exact. ``kernel_check`` below re-implements that index choice exactly on the CPU, and the
test cross-checks it against torch's own CPU conversion functions and, on a GPU, against
``to_sparse_semi_structured`` itself.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from prune_core.__main__ import main as prune_core_main
from prune_core.pruning import make_permanent, prunable_targets, prune_step
from prune_core.structured import nm_accelerable_fraction, nm_layout_fraction

# float16 / bfloat16 shape rule of the CUTLASS backend: rows a multiple of 32, columns of 64
MIN_ROWS, MIN_COLS = 32, 64


def kernel_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as the 2-D float16 matrix a 2:4 sparse GEMM reads: a linear weight as it is; a
    conv weight (out x C x kh x kw) as out x (kh x kw x C), each kernel position's C channels
    zero-padded to a multiple of 4 (so a group never spans two positions); then zero-padded to
    the kernel's minimum shape multiples."""
    w = weight.detach().float()
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)  # out x kh x kw x C: input channels innermost
        w = nn.functional.pad(w, (0, (-w.shape[-1]) % 4))
        w = w.reshape(w.shape[0], -1)
    else:
        w = nn.functional.pad(w, (0, (-w.shape[1]) % 4))
    rows, cols = w.shape
    w = nn.functional.pad(w, (0, (-cols) % MIN_COLS, 0, (-rows) % MIN_ROWS))
    return w.half().contiguous()


def kernel_check(dense: torch.Tensor) -> torch.Tensor:
    """Per group of 4 consecutive entries of each row of the 2-D half ``dense``: True if the
    CUTLASS 2:4 encoding stores it exactly. The indices are those of
    ``sparse_semi_structured_from_dense_cutlass`` (torch 2.14, float16/bfloat16 branch)."""
    rows, cols = dense.shape
    assert dense.dtype == torch.float16 and rows % MIN_ROWS == 0 and cols % MIN_COLS == 0
    m0, m1, m2, m3 = (dense.view(rows, cols // 4, 4) != 0).unbind(-1)
    expr0 = m0 & m1
    expr1 = ~m0 & m1
    expr2 = ~m0 & ~m1
    idx0 = expr1.long() | (expr2.long() << 1)
    idx1 = (expr0 | expr2 | m3).long() | ((expr1 | ~m1).long() << 1)
    positions = torch.arange(4).view(1, 1, 4)
    stored = (positions == idx0.unsqueeze(-1)) | (positions == idx1.unsqueeze(-1))
    nonzero = torch.stack([m0, m1, m2, m3], dim=-1)
    return ~(nonzero & ~stored).any(-1)


def torch_round_trip_exact(dense: torch.Tensor) -> bool:
    """torch's own CUTLASS conversion, dense -> (packed, meta) -> dense, on the CPU."""
    from torch.sparse._semi_structured_conversions import (
        sparse_semi_structured_from_dense_cutlass,
        sparse_semi_structured_to_dense_cutlass,
    )

    packed, meta = sparse_semi_structured_from_dense_cutlass(dense)
    return torch.equal(sparse_semi_structured_to_dense_cutlass(packed, meta), dense)


def old_layout_keep(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The previous rule: the n largest |w| of every m consecutive entries of the flattened
    C x kh x kw row (memory order), tail groups keeping min(n, r)."""
    rows = weight.detach().abs().reshape(weight.shape[0], -1)
    keep = torch.zeros_like(rows, dtype=torch.bool)
    for start in range(0, rows.shape[1], m):
        group = rows[:, start : start + m]
        top = group.topk(min(n, group.shape[1]), dim=1).indices
        keep[:, start : start + m].scatter_(1, top, True)
    return keep.view_as(weight)


def pruned_model() -> nn.Sequential:
    """A conv with C = 16 (a multiple of 4), a conv with C = 6 (tail groups of 2 per kernel
    position) and a linear with 70 inputs (a tail group of 2 per row), pruned 2:4."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 40, 3), nn.Conv2d(40, 6, 1), nn.Conv2d(6, 24, 3), nn.Flatten(),
        nn.Linear(70, 33),
    )  # fmt: skip
    prune_step(prunable_targets(model), "nm", 0.5, n=2, m=4)
    make_permanent(model)
    return model


def test_every_group_of_a_pruned_conv_and_linear_passes_the_2_4_check():
    """Count every group of every weight in the kernel layout: all of them pass."""
    model = pruned_model()
    layers = {"conv C=16": model[0], "conv C=6": model[2], "linear": model[4]}
    # real (unpadded) groups of 4: out x kh x kw x ceil(C / 4) for a conv, out x ceil(in / 4)
    real_groups = {"conv C=16": 40 * 9 * 4, "conv C=6": 24 * 9 * 2, "linear": 33 * 18}
    for name, layer in layers.items():
        dense = kernel_matrix(layer.weight)
        ok = kernel_check(dense)
        assert int(ok.sum()) == ok.numel(), name  # every group, padding included
        rows, cols = dense.shape
        assert ok.numel() == rows * cols // 4
        # the padded matrix holds the real groups plus all-zero padding groups, nothing else
        w = layer.weight
        if w.dim() == 4:
            groups = w.shape[0] * w.shape[2] * w.shape[3] * math.ceil(w.shape[1] / 4)
        else:
            groups = w.shape[0] * math.ceil(w.shape[1] / 4)
        assert groups == real_groups[name]
        padding_groups = int((dense.view(rows, -1, 4) == 0).all(-1).sum())
        assert padding_groups >= ok.numel() - groups
        assert torch_round_trip_exact(dense), name  # torch's conversion agrees
        assert nm_layout_fraction(w, 2, 4) == 1.0
    assert nm_accelerable_fraction(model) == 1.0


def test_the_old_layout_fails_the_check_on_a_3x3_conv():
    """Groups along the flattened C x kh x kw row mix kernel positions: the kernel layout of such
    a mask has groups with 3 or 4 non-zeros. (A 1x1 conv's flattened row is its channels, so the
    old rule was right there: only kh x kw > 1 tells the layouts apart.)"""
    torch.manual_seed(0)
    weight = torch.randn(40, 16, 3, 3)
    old = weight * old_layout_keep(weight, 2, 4)
    ok = kernel_check(kernel_matrix(old))
    assert int(ok.sum()) < ok.numel()
    assert not torch_round_trip_exact(kernel_matrix(old))
    assert nm_layout_fraction(old, 2, 4) < 0.8  # 0.69 with these random weights
    one_by_one = torch.randn(40, 16, 1, 1)
    assert nm_layout_fraction(one_by_one * old_layout_keep(one_by_one, 2, 4), 2, 4) == 1.0


def test_the_check_rejects_three_of_four_and_accepts_every_two_of_four():
    """The re-implemented check on hand-made groups, against torch's own round trip."""
    patterns = [[a, b, c, d] for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1)]
    for pattern in patterns:
        dense = torch.zeros(MIN_ROWS, MIN_COLS, dtype=torch.float16)
        dense[0, :4] = torch.tensor(pattern, dtype=torch.float16) * torch.tensor([1.0, 2, 3, 4])
        expected = sum(pattern) <= 2
        assert bool(kernel_check(dense).all()) is expected, pattern
        assert torch_round_trip_exact(dense) is expected, pattern


def test_layout_fractions_are_exact_on_dense_weights():
    """All-non-zero weights: only tail groups of at most 2 entries pass 2:4.

    Conv 6 -> 2, 1x1: per output channel one group of 4 (fails) and a tail of 2 (passes): 2 of 4.
    Linear 9 -> 3: per row groups of 4, 4 and 1: 3 of 9 pass. Together 5 of 13.
    """
    conv, linear = nn.Conv2d(6, 2, 1), nn.Linear(9, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        linear.weight.fill_(-2.0)
    assert nm_layout_fraction(conv.weight, 2, 4) == 2 / 4
    assert nm_layout_fraction(linear.weight, 2, 4) == 3 / 9
    assert nm_accelerable_fraction(nn.Sequential(conv, nn.Flatten(), linear)) == 5 / 13
    # 1:4 is stricter: the tails of 2 (conv) fail too; the linear's tails of 1 still pass
    assert nm_layout_fraction(conv.weight, 1, 4) == 0.0
    assert nm_layout_fraction(linear.weight, 1, 4) == 3 / 9
    assert nm_accelerable_fraction(nn.ReLU()) == 1.0  # no conv/linear: nothing to fail


def test_prune_core_cli_reports_the_accelerable_fraction(tmp_path):
    """``python -m prune_core --method nm --nm 2:4 --json``: final.nm_accelerable_fraction is 1.0
    (sparsity just under 0.5: the first conv has one input channel, tail groups of 1 it keeps)."""
    out = tmp_path / "nm.json"
    argv = ["--dataset", "digits", "--model", "cnn", "--method", "nm", "--nm", "2:4",
            "--baseline-epochs", "0", "--finetune-epochs", "0", "--json", str(out)]  # fmt: skip
    assert prune_core_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["final"]["nm_accelerable_fraction"] == 1.0
    assert report["final"]["sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 sparse tensors need CUDA")
def test_to_sparse_semi_structured_accepts_the_pruned_weights_on_a_gpu():
    """On a GPU: ``to_sparse_semi_structured`` of each kernel matrix round-trips exactly, and the
    old layout's matrix does not."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    force = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = True  # the backend whose check is re-implemented
    try:
        model = pruned_model()
        for layer in (model[0], model[2], model[4]):
            dense = kernel_matrix(layer.weight).cuda()
            assert torch.equal(to_sparse_semi_structured(dense).to_dense(), dense)
        torch.manual_seed(0)
        weight = torch.randn(40, 16, 3, 3)
        old = kernel_matrix(weight * old_layout_keep(weight, 2, 4)).cuda()
        assert not torch.equal(to_sparse_semi_structured(old).to_dense(), old)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = force
