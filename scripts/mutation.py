"""Mutation testing of the layers' manual backprop: mutmut over the modules in MODULES (refbp/nn/).

    python scripts/mutation.py                      # run mutmut (incremental), write reports/mutation.{md,json}
    python scripts/mutation.py --module layernorm   # only that module's mutants (repeatable)
    python scripts/mutation.py --module layernorm --survivors  # re-test only its survivors (new tests)
    python scripts/mutation.py --fresh              # forget every cached result first
    python scripts/mutation.py --report-only        # rewrite the report from the last runs in mutants/

The modules hold the MLP's activations and losses, Dense and the Linear map whose helpers compute
its eqs. (1), (6)-(8), the normalisations (and the cancellation size their taps report), attention
and the transformer block. mutmut's configuration (modules, tests) is the [mutmut] section of
setup.cfg; mutmut keeps each mutant's result in mutants/ and re-tests only the mutants whose
function changed, so the modules can be measured one at a time and a later commit incrementally.
Each run's modules, commit, workers and seconds are appended to mutants/runs.json, which the
report quotes. A module with no result in mutants/ (say, a fresh mutants/ where only one module was
run) keeps its row, its survivors and the runs that measured it from the report written last,
marked with the commit of its last run. mutmut re-tests every mutant a run names, killed or not;
after new tests, ``--survivors`` names only the mutants that survived the last run unexplained
(minutes instead of a module's full run).

Each surviving mutant is matched against EXPLAINED (why it computes the same numbers, so no test
can kill it) or TEXT_ONLY (a method that returns text, not numbers); a survivor that matches
nothing is listed as UNEXPLAINED, and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refbp.apps.io import write_atomic  # noqa: E402

MODULES = (
    "activations",
    "losses",
    "dense",
    "linear",
    "cancellation",
    "layernorm",
    "batchnorm",
    "norm2d",
    "attention",
    "transformer",
)
"""The mutated modules, in refbp/nn/ (setup.cfg's only_mutate)."""

STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", 2: "not checked",
          None: "not checked", -11: "segfault", -9: "segfault"}  # fmt: skip
TIMEOUT_CODES = {24, -24, 36, 152, 255}
SURVIVING = ("survived", "no tests", "suspicious", "segfault")
"""The states a report must explain: no test failed with the mutant in place."""

PROMOTED = (
    "Exact promotion, not other numbers: gamma and the directions V then keep the network's dtype, but every "
    "product they enter (gamma o R{xhat}, V_gamma o xhat, R{dJ/dy} o gamma, dJ/dy o V_gamma, + V_beta) has a "
    "float64 partner (xhat, R{xhat}, dJ/dy and R{dJ/dy} in the accumulation dtype), to which torch converts "
    "them exactly first."
)
"""Why a normalisation's parameters or directions left in the network's dtype give the same numbers."""

BOTH_NONE = (
    "gamma and V_gamma are both None or neither: every caller (LayerNorm, BatchNorm1d, BatchNorm2d, GroupNorm) "
    "takes V_gamma from the same affine condition as gamma, so or and and agree."
)
"""Why the affine helpers' conditions on gamma and V_gamma may be joined by either."""

BOTH_STATS = (
    "running_mean and running_var are None together or neither: BatchNorm1d.__init__ sets both from "
    "track_running_stats (a missing one defaults to torch's 0 or 1), so or and and agree."
)
"""Why BatchNorm's conditions on its two running statistics may be joined by either."""

ON_CPU = (
    "On the CPU, where the suite runs, device=None (or no device) is the tensors' own device: the same "
    "numbers. On a GPU it would be the CPU; a difference only a CUDA machine can show."
)
"""Why a device argument left out or None changes nothing on the CPU."""

N_FLOAT = (
    "n = numel / C is a whole number far below 2^53, exact as a float: dividing by n, n - 1 or "
    "n / (n - 1) gives the same numbers as with the int."
)
"""Why a BatchNorm's count of values per channel may be a float."""

LAYOUT = (
    "Layout, not numbers: x - mu (or s x + shift) in a tensor torch allocates (laid out after x's strides) "
    "instead of a contiguous one; the same values, a slower elementwise pass (fresh_like)."
)
"""Why an elementwise pass of a lean normalisation may write into a tensor torch allocates."""

BOTH_STATS_2D = (
    "running_mean and running_var are None together or neither: BatchNorm2d.__init__ takes both from the "
    "BatchNorm1d it builds, which sets both from track_running_stats, so or and and agree."
)
"""Why BatchNorm2d's conditions on its two running statistics may be joined by either."""

FIRST_ONE = (
    "Inside `if first:`, where first (ctx.first) is 1.0 (H v; G v's 0.0 skips the line): alpha or value "
    "left at its default 1 is the same product."
)
"""Why an R-backward's factor ``first`` may be left out of the terms that only run when it is 1."""

REBUILT_GELU = (
    "The rebuilt a(l,6) comes from the GELU's Elementwise.forward, which reads neither its ForwardContext nor "
    "its path (a = f(x), and x as its cache): any context or path there gives the same a(l,6)."
)
"""Why the block's rebuild of c_proj's input may pass any context or path to the GELU's forward."""

RESID_RELEASED = (
    "When cache.resid is set to the empty tensor changes nothing read: Block.backward hands r to the MLP half "
    "as its x before that half runs, and nothing reads cache.resid after; each variant releases it during the "
    "MLP half's backward (at another sub-layer, or again at ln_1's, where it is released already), so every "
    "gradient and the released cache are the same."
)
"""Why the step of a releasing backward at which the block drops r may move."""

MEAN_INTO_MU = (
    "torch.mean with out= a float64 tensor (mu, in the accumulation dtype) computes in out's dtype whatever "
    "dtype= says: the same float64 row means (measured equal to the last bit on near-constant float32 rows)."
)
"""Why RowLayerNorm's mean into mu may leave its dtype out."""

CHUNK_DEVICE = (
    "Memory, not numbers: without the device, chunks sizes its slices by the CPU's budget also on a CUDA "
    "device (CUDA_SCALE times smaller there); sequences are independent, so each gets the same arithmetic."
)
"""Why a chunked step may leave out the device that sizes its chunks."""

ROW_CHUNK_DEVICE = (
    "Memory, not numbers: without the device, chunks sizes its slices of rows by the CPU's budget also on a "
    "CUDA device (CUDA_SCALE times smaller there); the chain is elementwise, so every entry gets the same "
    "arithmetic."
)
"""Why an activation's chunked chain may leave out the device that sizes its chunks."""

SCALE_SHIFT_ROUTE = (
    "Rounding, not formulas: both branches of scale_shift compute y o scale + shift; the mutated condition only "
    "sends some factor shapes down the other branch, and torch's CPU addcmul rounds once where a product then a "
    "sum rounds twice (1 ulp apart, measured), far below any torch oracle's tolerance."
)
"""Why scale_shift's choice between addcmul and a product then a sum may change."""

NEW_TENSOR = (
    "Memory, not numbers: the result in a new tensor instead of the storage given as out=; every caller uses "
    "the value returned, so the numbers are the same."
)
"""Why an elementwise pass of a lean normalisation may leave its out= storage unused."""

OUT_RESIZED = (
    "The same numbers, in a buffer torch resizes (out= of the wrong shape: a deprecation warning at every step). "
    "tests/test_mutation_kills_norms.py fails on that warning, but mutmut's cached test list (setup.cfg) "
    "predates that file, so it cannot count the kill without running every module again."
)
"""Why two mutants of GroupNorm's lean backward survive in mutmut's record although a test kills them."""

NEW_PHI = (
    "Memory, not numbers: Phi in a new tensor instead of in the storage of the erf (float64, float16, bfloat16) "
    "or of gelu(z) - z / 2 (float32) it is computed from, which is dropped on return; _gelu_chain uses the tensor "
    "returned. Measured bitwise equal, Phi and dJ/dz, in the four dtypes on contiguous, transposed, sliced and "
    "permuted z holding zeros, subnormals, infinities and NaN."
)
"""Why _normal_cdf's last pass may write into a new tensor."""

CHUNK_ENDS = (
    "Rounding, not formulas: every entry gets the same formula, only the chunks end elsewhere, and torch computes "
    "the last entries of a chunk (after its last full pair of vectors) with the scalar form of its kernels (GELU, "
    "erf, exp2, addcmul), which may differ from the vectorised form in the last bit. Measured against the "
    "original at the 1 MiB budget (z of 37 to 4099 columns, 2 to 25 chunks): at most 8 entries differ, each by at "
    "most an ulp of 1, in float32 and float64, none in float16 or bfloat16; torch's own results move as much with "
    "its number of threads."
)
"""Why the gelu chain's chunks may be of another size."""

EXPLAINED: list[tuple[str, str, str]] = [
    # (text in the mutant's name, text in its "+" line, why it is equivalent)
    (
        "x_leaky_relu__",
        "torch.where(z >= 0, z, z * slope)",
        "At z = 0 both branches give 0 (and -0.0 * slope is -0.0): the same value for every z.",
    ),
    (
        "x_softplus__",
        "torch.sigmoid(bz)).to(None)",
        "torch.where(cond, 1.0, t) already has t's (z's) dtype: a Python scalar does not promote, so the "
        "trailing .to(z.dtype) is a no-op and .to(None) is the same no-op.",
    ),
    (
        "x_elu__",
        "* alpha).to(None)",
        "torch.where(cond, 1.0, t) already has t's (z's) dtype: a Python scalar does not promote, so the "
        "trailing .to(z.dtype) is a no-op and .to(None) is the same no-op.",
    ),
    (
        "x_elu__",
        "torch.where(z >= 0, z, torch.expm1",
        "At z = 0 the other branch is alpha expm1(0) = 0 = z (and -0.0 for z = -0.0): the same value for every z.",
    ),
    (
        "x_elu__",
        "torch.expm1(torch.clamp_max(z, 1.0))",
        "expm1 is selected only where z <= 0, where clamping at 1 instead of 0 leaves z as is; the clamp "
        "only keeps the unused branch (z > 0) from overflowing.",
    ),
    (
        "x_elu__",
        "torch.exp(torch.clamp_max(z, 1.0))",
        "The exp branch of f' is selected only where z <= 0, where clamping at 1 instead of 0 changes "
        "nothing; the clamp only keeps the unused branch (z > 0) from overflowing.",
    ),
    (
        "x_gelu__",
        "chain_in_place=None",
        "Memory, not numbers: Activation.chain then multiplies dJ/da by _gelu_derivative(z), which is "
        "_gelu_chain on ones, the same factor Phi(z) + z phi(z) with one (N, d) temporary more.",
    ),
    (
        "x_gelu__",
        "torch_module=lambda: torch.nn.GELU(), )",
        "Memory, not numbers: without chain_in_place, Activation.chain multiplies dJ/da by "
        "_gelu_derivative(z), the same factor Phi(z) + z phi(z) with one (N, d) temporary more.",
    ),
    ("x__relu_chain__", "* a.element_size(), device=None):", ROW_CHUNK_DEVICE),
    ("x__relu_chain__", "* a.element_size(), ):", ROW_CHUNK_DEVICE),
    ("x__gelu_chain__", "* z.element_size(), device=None):", ROW_CHUNK_DEVICE),
    ("x__gelu_chain__", "* z.element_size(), ):", ROW_CHUNK_DEVICE),
    ("x__gelu_chain__", "_LOG2_INV_SQRT_2PI, dtype=z.dtype, device=None)", ON_CPU),
    ("x__gelu_chain__", "_LOG2_INV_SQRT_2PI, dtype=z.dtype, )", ON_CPU),
    ("x__normal_cdf__", "torch.add(z.new_full((), 0.5), Phi, alpha=0.5, out=None)", NEW_PHI),
    ("x__normal_cdf__", "torch.add(z.new_full((), 0.5), Phi, alpha=0.5, )", NEW_PHI),
    ("x__normal_cdf__", "torch.addcdiv(z.new_full((), 0.5), r, z, out=None)", NEW_PHI),
    ("x__normal_cdf__", "torch.addcdiv(z.new_full((), 0.5), r, z, )", NEW_PHI),
    (
        "x__relu_chain__",
        "if a.numel() / a.element_size() <= chunk_budget(a.device):",
        "Only which path runs: the one-chunk line and the row chunks both compute dJ/da o sign(a) (in dJ/da's "
        "storage or a contiguous copy of it), the same numbers.",
    ),
    (
        "x__relu_chain__",
        "if a.numel() * a.element_size() < chunk_budget(a.device):",
        "Differs only for a step of exactly the chunk budget, and only in which path runs: both compute "
        "dJ/da o sign(a), the same numbers.",
    ),
    (
        "x__relu_chain__",
        "a.element_size() <= chunk_budget(None):",
        "Only which path runs, and only on a CUDA device (the CPU's budget there): both compute dJ/da o sign(a), "
        "the same numbers.",
    ),
    (
        "x__relu_chain__",
        "g = dJ_da if (dJ_da.is_contiguous()) and False else dJ_da.contiguous()",
        "Tensor.contiguous() returns the tensor itself when it is already contiguous: the same storage, the "
        "same result.",
    ),
    (
        "x__gelu_chain__",
        "g = dJ_da if (dJ_da.is_contiguous()) and False else dJ_da.contiguous()",
        "Tensor.contiguous() returns the tensor itself when it is already contiguous: the same storage, "
        "the same result.",
    ),
    (
        "x__gelu_chain__",
        "width = z.shape[-1] if (z.dim()) and False else 1",
        "z and dJ/da viewed as rows of width 1 instead of d: chunks of entries, not of rows. " + CHUNK_ENDS,
    ),
    ("x__gelu_chain__", "chunks(rows_z.shape[0], 3 * width", "Chunks of rows 2/3 as large. " + CHUNK_ENDS),
    (
        "x__bce_unresolvable__",
        ") | (torch.minimum(p, 1.0 - p) < BCE_RESOLUTION)",
        "The first term is redundant for p in [0, 1]: p (1 - p) < 1e-12 (or any of these variants of it) "
        "implies min(p, 1 - p) < 1e-4, which the second term already marks.",
    ),
    (
        "x__bce_region__",
        "low = torch.log(p) < BCE_LOG_FLOOR",
        "Differs only where log(p) is exactly -100 (p = e^-100), where the clamped and unclamped log(p) "
        "agree, so the point belongs to either piece: a measure-zero boundary with the same J and dJ/dp.",
    ),
    (
        "x__bce_region__",
        "high = torch.log(1.0 - p) < BCE_LOG_FLOOR",
        "log(1 - p) is never exactly -100 for a float p in [0, 1] (1 - p is 0 or at least 2^-53), so < "
        "and <= mark the same points.",
    ),
    (
        "x__bce_region__",
        "low.to(None) + 2 * high.to(torch.int8)",
        "bool + int8 is int8: the same region numbers in the same dtype.",
    ),
    (
        "x__bce_region__",
        "low.to(torch.int8) + 2 * high.to(None)",
        "The same region numbers in int64 instead of int8: regions are only compared for equality "
        "(refbp.verify.finite_diff, fd_mlp), so only the dtype differs.",
    ),
    (
        "x__bce_region__",
        "low.to(torch.int8) - 2 * high.to(torch.int8)",
        "Regions are labels, only compared for equality: {0, 1, -2} separates the same points as {0, 1, 2}.",
    ),
    (
        "x__bce_region__",
        "low.to(torch.int8) + 3 * high.to(torch.int8)",
        "Regions are labels, only compared for equality: {0, 1, 3} separates the same points as {0, 1, 2}.",
    ),
    (
        "x__bce_unresolvable__",
        "torch.minimum(p, 1.0 - p) <= BCE_RESOLUTION",
        "Differs only where min(p, 1 - p) is exactly 1e-4, refbp's own cut-off (no torch convention); it "
        "decides whether the verifier trusts a finite difference there and changes no J or gradient.",
    ),
    (
        "x_cross_entropy__",
        "torch.arange(z2.shape[0], device=None)",
        "device=None puts the row indices on the CPU, and a CPU index tensor indexes a CPU or CUDA "
        "tensor alike (torch moves it): the same numbers; device=z.device only saves that copy on a GPU.",
    ),
    (
        "x_cross_entropy__",
        "torch.arange(z2.shape[0], ",
        "Without device= the row indices are on the CPU, as with device=None: a CPU index tensor indexes "
        "a CPU or CUDA tensor alike (torch moves it), so the numbers are the same.",
    ),
    (
        "x_cross_entropy__",
        "index = -101 if ignore_index is None",
        "Without ignore_index the targets are class indices in [0, C) (check_targets refuses any other), "
        "and torch ignores no such target whether its ignore_index is -100 or -101.",
    ),
    (
        "xǁDenseǁbackward__mutmut",
        "in_place = None",
        "Memory, not numbers: with in_place falsy eq. (5) is computed on a copy of dJ/da(i) instead of "
        "in its storage, the same values with one more (N, d_i) tensor alive (benchmarks/, item 2).",
    ),
    (
        "xǁDenseǁbackward__mutmut",
        "dJ_da if (in_place) and False else dJ_da.clone()",
        "Memory, not numbers: always computing eq. (5) on a copy gives the same values; the in-place "
        "path exists only to keep the training step's peak memory at autograd's.",
    ),
    (
        "xǁDenseǁforward_size__",
        "out = (*shape[:+1], self.W.shape[0])",
        "Dense's input is (N, d_in), two dimensions (check_input refuses any other): shape[:1] is shape[:-1].",
    ),
    (
        "sample_targets",
        "torch.randint(C, tuple(lead), generator=generator)",
        "torch.randint(high, size) is torch.randint(0, high, size): the same call, the same draws.",
    ),
    (
        "sample_targets",
        "uniform_(-1.0, generator=generator)",
        "uniform_'s upper bound defaults to 1: uniform_(-1.0) is uniform_(-1.0, 1.0), the same draws.",
    ),
    (
        "x_accumulation_dtype__",
        "torch.bfloat16)) or True else dtype",
        "A normalisation's input is float16, bfloat16, float32 or float64 (the network refuses other dtypes), "
        "and float64 is the accumulation dtype of each of them either way.",
    ),
    (
        "x_fresh_like__",
        "torch.empty_like(x, memory_format=None)",
        "Layout, not numbers: the tensor is only an out= of the same shape and dtype, which torch fills "
        "whatever its strides (the contiguous layout is the docstring's 7 times faster elementwise pass).",
    ),
    (
        "x_fresh_like__",
        "torch.empty_like(x, )",
        "Layout, not numbers: the tensor is only an out= of the same shape and dtype, which torch fills "
        "whatever its strides (the contiguous layout is the docstring's 7 times faster elementwise pass).",
    ),
    (
        "xǁLayerNormǁlean_forward__",
        "y = torch.sub(xa, mu, out=None)",
        "Layout, not numbers: x - mu in a tensor torch allocates (laid out after mu's strides) instead of "
        "a contiguous one; the same values, a slower elementwise pass (fresh_like).",
    ),
    (
        "xǁLayerNormǁlean_forward__",
        "y = torch.sub(xa, mu, )",
        "Layout, not numbers: x - mu in a tensor torch allocates (laid out after mu's strides) instead of "
        "a contiguous one; the same values, a slower elementwise pass (fresh_like).",
    ),
    (
        "xǁLayerNormǁlean_forward__",
        "torch.addcmul(beta, y, gamma, out=None)",
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "xǁLayerNormǁlean_backward__",
        "torch.sub(rows_x, mu, out=None)",
        "Layout, not numbers: x - mu in a tensor torch allocates (laid out after mu's strides) instead of "
        "a contiguous one; the same values, a slower elementwise pass (fresh_like).",
    ),
    (
        "xǁLayerNormǁlean_backward__",
        "torch.sub(rows_x, mu, )",
        "Layout, not numbers: x - mu in a tensor torch allocates (laid out after mu's strides) instead of "
        "a contiguous one; the same values, a slower elementwise pass (fresh_like).",
    ),
    (
        "xǁLayerNormǁlean_backward__",
        "own = None",
        "Memory, not numbers: never reusing dJ/dy's storage computes dJ/dx in a copy of it, the same "
        "values; reusing it only spares the training step one (M, d) tensor.",
    ),
    (
        "xǁLayerNormǁlean_backward__",
        "(dJ_dy if (own) and False else",
        "Memory, not numbers: never reusing dJ/dy's storage computes dJ/dx in a copy of it, the same "
        "values; reusing it only spares the training step one (M, d) tensor.",
    ),
    (
        "xǁLayerNormǁlean_backward__",
        "t.sum(dim=+1)",
        "t is (M, d), two dimensions (g and g o xhat are viewed as rows): dim 1 is dim -1.",
    ),
    (
        "xǁLayerNormǁlean_backward__",
        ".unsqueeze_(+1)",
        "The sum or matrix-vector product is (M,), one dimension: unsqueeze at 1 or at -1 both give (M, 1).",
    ),
    (
        "xǁLayerNormǁbackward__",
        "if (ctx.need_dx) or True else None",
        "Work, not numbers: the mean is computed even without need_dx, but then the other mean is None and "
        "backward returns before reading either (only the parameters' gradients, which do not use them).",
    ),
    (
        "xǁLayerNormǁbackward__",
        "if mean_g is None and mean_gx is None:",
        "mean_g and mean_gx are computed under the same condition (ctx.need_dx): both are None or neither.",
    ),
    (
        "xǁLayerNormǁbackward__",
        "dJ_dy.to(None)",
        "Converting dJ/dy (any float dtype) to xhat's float64 is exact, and dJ/dy o gamma (gamma in "
        "float64) promotes to float64 anyway: the same dJ/dxhat, rounded to dJ/dy's dtype when kept.",
    ),
    (
        "xǁLayerNormǁ_affine_directions__",
        ".to(None),",
        PROMOTED,
    ),
    (
        "xǁLayerNormǁr_backward__",
        "self._affine_directions(V, ctx.path, None)",
        PROMOTED,
    ),
    (
        "xǁLayerNormǁtangent__",
        "*self._affine_directions(V, path, None))",
        PROMOTED,
    ),
    (
        "xǁLayerNormǁr_backward__",
        "Rh.to(dtype, copy=False)}",
        "Memory, not numbers: in float64 the kept R{dJ/dxhat} is then R{h} itself, which nothing writes "
        "after (normalised_r_backward reads it into new tensors): the same values without a copy.",
    ),
    (
        "xǁLayerNormǁr_backward__",
        "Rh.to(dtype, )}",
        "Memory, not numbers: in float64 the kept R{dJ/dxhat} is then R{h} itself, which nothing writes "
        "after (normalised_r_backward reads it into new tensors): the same values without a copy.",
    ),
    (
        "xǁLayerNormǁlean_forward__",
        "torch.addcmul(beta, y, gamma, )",
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "xǁLayerNormǁbackward__",
        "dJ_dxhat.to(dtype, copy=False)}",
        "Memory, not numbers: only without gamma in float64 is dJ/dxhat.to(dtype) no copy, dJ/dy itself, which "
        "LayerNorm's backward only reads; the reported dJ/dxhat and dJ/dy (equal there) then share storage.",
    ),
    (
        "xǁLayerNormǁbackward__",
        "dJ_dxhat.to(dtype, )}",
        "Memory, not numbers: only without gamma in float64 is dJ/dxhat.to(dtype) no copy, dJ/dy itself, which "
        "LayerNorm's backward only reads; the reported dJ/dxhat and dJ/dy (equal there) then share storage.",
    ),
    (
        "x_affine_tangent__",
        "if gamma is None and V_gamma is None:",
        BOTH_NONE,
    ),
    (
        "x_affine_r_backward__",
        "if gamma is None and V_gamma is None:",
        BOTH_NONE,
    ),
    (
        "x_normalised__",
        "rstd = cache.rstd.to(None)",
        "Exact promotion: rstd stays in the lean dtype, but xhat = (x - mu) rstd has a float64 factor and "
        "every later product with rstd (normalised_tangent, normalised_r_backward) a float64 partner, to "
        "which torch converts it exactly first.",
    ),
    (
        "x_normalised__",
        "(x.to(None) - cache.mu.to(acc))",
        "Exact promotion: x - mu with mu in float64 converts x to float64 exactly first: the same difference.",
    ),
    (
        "x_normalised__",
        "(x.to(acc) - cache.mu.to(None))",
        "Exact promotion: x - mu with x in float64 converts mu to float64 exactly first: the same difference.",
    ),
    (
        "xǁLayerNormǁforward__",
        'self.params["gamma"], out=None)',
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "xǁLayerNormǁforward__",
        'self.params["gamma"], )',
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "xǁLayerNormǁto_torch__",
        "dtype=None if gamma is None else gamma.dtype, )  # fmt: skip",
        "On the CPU, where the suite runs, leaving device out builds the module on gamma's device: the same "
        "module. On a GPU it would be built on the CPU; a difference only a CUDA machine can show.",
    ),
    (
        "xǁLayerNormǁto_torch__",
        "device=None,",
        "On the CPU, where the suite runs, device=None is gamma's device: the same module. On a GPU the "
        "module would be built on the CPU; a difference only a CUDA machine can show.",
    ),
    (
        "xǁLayerNormǁto_torch__",
        "device=None if (gamma is None) or True else gamma.device",
        "On the CPU, where the suite runs, device=None is gamma's device: the same module. On a GPU the "
        "module would be built on the CPU; a difference only a CUDA machine can show.",
    ),
    (
        "x_weight_gradient__",
        "g = dJ_dy if (dJ_dy.dim() == 2) and False else",
        "dJ/dy already (M, d_out) reshaped to (-1, d_out) is the same (M, d_out) tensor: the 2-D shortcut "
        "only skips a call.",
    ),
    (
        "x_weight_gradient__",
        "rows = x if (x.dim() == 2) and False else",
        "x already (M, d_in) reshaped to (-1, d_in) is the same (M, d_in) tensor: the 2-D shortcut only skips a call.",
    ),
    (
        "x_bias_gradient__",
        "(dJ_dy if (dJ_dy.dim() == 2) and False else",
        "dJ/dy already (M, d_out) reshaped to (-1, d_out) is the same (M, d_out) tensor: the 2-D shortcut "
        "only skips a call.",
    ),
    # ---- batchnorm ----
    (
        "x_unbiased_batch_norm__",
        "var = x.var(dim=over, keepdim=True)",
        "Tensor.var's unbiased defaults to True: the same Bessel-corrected variance.",
    ),
    (
        "xǁBatchNorm1dǁtorch_forward__",
        "x.var(0, )  # (C,): the statistics it used",
        "Tensor.var's unbiased defaults to True: the same Bessel-corrected variance.",
    ),
    (
        "xǁBatchNorm1dǁtorch_forward__",
        "None, True, 1.0, self.eps)",
        "F.batch_norm's momentum only updates the running statistics passed to it, and none are (None, None): "
        "momentum 1.0 normalises by the same batch statistics as 0.0.",
    ),
    (
        "xǁBatchNorm1dǁtorch_forward__",
        "assert self.running_mean is not None or self.running_var is not None",
        BOTH_STATS,
    ),
    ("xǁBatchNorm1dǁtorch_forward__", "s.to(dtype=x.dtype, device=None)", ON_CPU),
    ("xǁBatchNorm1dǁtorch_forward__", "(s.to(dtype=x.dtype, ) for s", ON_CPU),
    (
        "xǁBatchNorm1dǁ_feature_scale__",
        "unbiased=self.unbiased, keepdim=False)",
        "x is (N, C) (BatchNorm2d has its own scale): the (C,) spread broadcasts against it as the (1, C) one "
        "does, so expand_as gives the same (N, C) scale.",
    ),
    (
        "xǁBatchNorm1dǁ_feature_scale__",
        "unbiased=self.unbiased, ).add",
        "x is (N, C) (BatchNorm2d has its own scale): the (C,) spread broadcasts against it as the (1, C) one "
        "does, so expand_as gives the same (N, C) scale.",
    ),
    (
        "xǁBatchNorm1dǁ_update_running__",
        "assert self.running_mean is not None or self.running_var is not None",
        BOTH_STATS,
    ),
    ("xǁBatchNorm1dǁbuffers__", "if self.running_mean is None and self.running_var is None:", BOTH_STATS),
    (
        "xǁBatchNorm1dǁlean_forward__",
        "assert self.running_mean is not None or self.running_var is not None",
        BOTH_STATS,
    ),
    (
        "xǁBatchNorm1dǁlean_forward__",
        "if gamma is not None or beta is not None:",
        "gamma and beta are None together or neither (BatchNorm1d refuses one without the other): or and and agree.",
    ),
    ("xǁBatchNorm1dǁlean_forward__", "n = x.numel() / self.C", N_FLOAT),
    ("xǁBatchNorm1dǁlean_backward__", "n = x.numel() / self.C", N_FLOAT),
    ("xǁBatchNorm1dǁlean_forward__", "y = torch.sub(xa, mu, out=None)", LAYOUT),
    ("xǁBatchNorm1dǁlean_forward__", "y = torch.sub(xa, mu, )", LAYOUT),
    ("xǁBatchNorm1dǁlean_backward__", "torch.sub(xa, mu, out=None)", LAYOUT),
    ("xǁBatchNorm1dǁlean_backward__", "torch.sub(xa, mu, ).mul_", LAYOUT),
    (
        "xǁBatchNorm1dǁlean_backward__",
        "own = None",
        "Memory, not numbers: never reusing dJ/dy's storage computes dJ/dx in a copy of it, the same "
        "values; reusing it only spares the training step one (N, C) tensor.",
    ),
    (
        "xǁBatchNorm1dǁlean_backward__",
        "g = dJ_dy if (own) and False else",
        "Memory, not numbers: never reusing dJ/dy's storage computes dJ/dx in a copy of it, the same "
        "values; reusing it only spares the training step one (N, C) tensor.",
    ),
    (
        "xǁBatchNorm1dǁlean_backward__",
        'gamma = self.params["gamma"].to(None).view(view)',
        "Exact promotion: gamma then keeps the network's dtype, but it enters only s = rstd gamma (rstd in the "
        "lean dtype, to which torch converts gamma exactly first) and dJ/dy o gamma.to(dtype).",
    ),
    ("xǁBatchNorm1dǁto_torch__", "like.dtype, device=None,", ON_CPU),
    ("xǁBatchNorm1dǁto_torch__", "dtype=None if like is None else like.dtype, )  # fmt: skip", ON_CPU),
    ("xǁBatchNorm1dǁto_torch__", "device=None if (like is None) or True else like.device", ON_CPU),
    ("xǁBatchNorm1dǁto_torch__", "if self.running_mean is not None or self.running_var is not None:", BOTH_STATS),
    (
        "xǁBatchNorm1dǁto_torch__",
        "assert running_mean is not None and running_var is not None or batches",
        "Reached only with running statistics, where the module was built with track_running_stats=True and "
        "holds all three buffers: the assertion holds either way.",
    ),
    (
        "xǁBatchNorm1dǁto_torch__",
        "assert running_mean is not None or running_var is not None and batches",
        "Reached only with running statistics, where the module was built with track_running_stats=True and "
        "holds all three buffers: the assertion holds either way.",
    ),
    ("xǁBatchNorm1dǁr_backward__", "self._affine(V, ctx.path, None)", PROMOTED),
    (
        "xǁBatchNorm1dǁr_backward__",
        "Rh.to(dtype, copy=False)}",
        "Memory, not numbers: in float64 the kept R{dJ/dxhat} is then R{h} itself, which nothing writes "
        "after (normalised_r_backward reads it into new tensors): the same values without a copy.",
    ),
    (
        "xǁBatchNorm1dǁr_backward__",
        "Rh.to(dtype, )}",
        "Memory, not numbers: in float64 the kept R{dJ/dxhat} is then R{h} itself, which nothing writes "
        "after (normalised_r_backward reads it into new tensors): the same values without a copy.",
    ),
    (
        "xǁBatchNorm1dǁbackward__",
        'gamma = self.params["gamma"].to(None) if self.params',
        "Exact promotion: gamma then keeps the network's dtype, but it enters only dJ/dy o gamma (dJ/dy "
        "converted to xhat's float64) and rstd gamma (rstd in float64), to which torch converts it exactly first.",
    ),
    (
        "xǁBatchNorm1dǁbackward__",
        "dJ_dxhat = dJ_dy.to(None) * gamma if gamma",
        "Exact promotion: dJ/dy o gamma with gamma in xhat's float64 converts dJ/dy to float64 exactly first: "
        "the same dJ/dxhat.",
    ),
    (
        "xǁBatchNorm1dǁbackward__",
        "else dJ_dy.to(None)  # dJ/dy o gamma",
        "Without gamma dJ/dxhat is dJ/dy, only kept as dJ_dxhat.to(dtype, copy=True): in float64 or in dJ/dy's "
        "own dtype, converting it back gives the same values in a tensor of their own.",
    ),
    (
        "xǁBatchNorm1dǁbackward__",
        "dJ_dxhat.to(dtype, copy=False)}",
        "Memory, not numbers: only without gamma in float64 is dJ/dxhat.to(dtype) no copy, dJ/dy itself, which "
        "BatchNorm1d's backward only reads (its work buffer is a copy); the reported dJ/dxhat and dJ/dy (equal "
        "there) then share storage.",
    ),
    (
        "xǁBatchNorm1dǁbackward__",
        "dJ_dxhat.to(dtype, )}",
        "Memory, not numbers: only without gamma in float64 is dJ/dxhat.to(dtype) no copy, dJ/dy itself, which "
        "BatchNorm1d's backward only reads (its work buffer is a copy); the reported dJ/dxhat and dJ/dy (equal "
        "there) then share storage.",
    ),
    (
        "xǁBatchNorm1dǁ__init____",
        "self.params = {} if gamma is None and beta is None else",
        "gamma and beta are None together or neither here: one without the other was refused just above.",
    ),
    (
        "xǁBatchNorm1dǁ__init____",
        "torch.empty(1, dtype=torch.float64)",
        "like only lends its dtype and device to the default running statistics: its size is never read.",
    ),
    ("xǁBatchNorm1dǁ__init____", "dtype=like.dtype, device=None)", ON_CPU),
    ("xǁBatchNorm1dǁ__init____", "dtype=like.dtype, )", ON_CPU),
    (
        "xǁBatchNorm1dǁtorch_forward__",
        "None, False, 1.0, self.eps)",
        "In eval mode (training=False) F.batch_norm normalises by the running statistics and updates nothing: "
        "momentum 1.0 or 0.0 gives the same numbers.",
    ),
    ("xǁBatchNorm1dǁforward__", "assert self.running_mean is not None or self.running_var is not None", BOTH_STATS),
    (
        "xǁBatchNorm1dǁforward__",
        "xhat.sub_(self.running_mean.to(None))",
        "Exact promotion: subtracting running_mean in its own dtype from xhat in float64 converts it to "
        "float64 exactly first: the same difference.",
    ),
    (
        "xǁBatchNorm1dǁforward__",
        'self.params["gamma"], out=None)',
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "xǁBatchNorm1dǁforward__",
        'self.params["gamma"], )',
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    ("xǁBatchNorm1dǁ_affine__", '.to(None), V(path, "gamma").to(acc)', PROMOTED),
    ("xǁBatchNorm1dǁ_affine__", 'V(path, "gamma").to(None)', PROMOTED),
    ("xǁBatchNorm1dǁtangent__", "self._affine(V, path, None)", PROMOTED),
    ("xǁBatchNorm1dǁtangent__", 'V_beta = V(path, "beta").to(None)', PROMOTED),
    (
        "xǁBatchNorm1dǁtangent__",
        "NormTangent(Rx.to(None) * rstd",
        "Exact promotion: R{x} times rstd (float64) converts R{x} to float64 exactly first: the same R{xhat}.",
    ),
    (
        "xǁBatchNorm1dǁtangent__",
        "NormTangent(Rx.to(xhat.dtype) * rstd, None)",
        "Eval mode only, where nothing reads R{log rstd}: r_backward's eval branch is rstd h and rstd R{h}, "
        "and affine_r_backward reads R{xhat} alone.",
    ),
    # ---- norm2d ----
    ("xǁBatchNorm2dǁbuffers__", "if self.running_mean is None and self.running_var is None:", BOTH_STATS_2D),
    (
        "xǁBatchNorm2dǁtorch_forward__",
        "assert self.running_mean is not None or self.running_var is not None",
        BOTH_STATS_2D,
    ),
    (
        "xǁBatchNorm2dǁbackward__",
        "self._rows().backward(_channels_last_rows(dJ_dy), None, out, rows_cache, ctx)",
        "BatchNorm1d's backward from a full cache (NormCache, the only kind this line sees) reads neither x nor "
        "out: xhat and rstd come from the cache, so x = None gives the same numbers.",
    ),
    (
        "xǁBatchNorm2dǁbackward__",
        "self._rows().backward(_channels_last_rows(dJ_dy), x, None, rows_cache, ctx)",
        "BatchNorm1d's backward from a full cache (NormCache, the only kind this line sees) reads neither x nor "
        "out: xhat and rstd come from the cache, so out = None gives the same numbers.",
    ),
    (
        "xǁBatchNorm2dǁtorch_forward__",
        "x.var((0, 2, 3), )  # (C,): the statistics it used",
        "Tensor.var's unbiased defaults to True: the same Bessel-corrected variance.",
    ),
    (
        "xǁBatchNorm2dǁtorch_forward__",
        "F.batch_norm(x, None, None, None, None, True, 1.0, self.eps)",
        "F.batch_norm's momentum only weighs the update of the running statistics it is given; given None "
        "(batch statistics only), it is never read: the same xhat.",
    ),
    ("xǁBatchNorm2dǁtorch_forward__", "s.to(dtype=x.dtype, device=None)", ON_CPU),
    ("xǁBatchNorm2dǁtorch_forward__", "(s.to(dtype=x.dtype, ) for s", ON_CPU),
    ("xǁBatchNorm2dǁto_torch__", "like.dtype, device=None,", ON_CPU),
    ("xǁBatchNorm2dǁto_torch__", "dtype=None if like is None else like.dtype, )  # fmt: skip", ON_CPU),
    ("xǁBatchNorm2dǁto_torch__", "device=None if (like is None) or True else like.device", ON_CPU),
    (
        "xǁBatchNorm2dǁtorch_forward__",
        "F.batch_norm(x, mean, var, None, None, False, 1.0, self.eps)",
        "Eval mode (training=False): F.batch_norm only normalises by the statistics it is given and updates "
        "nothing, so its momentum is never read: the same xhat.",
    ),
    (
        "xǁGroupNormǁbackward__",
        "dJ_dxhat.clone() if (dJ_dxhat is dJ_dy) or True else dJ_dxhat",
        "Memory, not numbers: the reported dJ/dxhat is then a copy of dJ/dy o gamma, a tensor the backward "
        "made and nothing else holds: the same values, one copy more.",
    ),
    (
        "xǁGroupNormǁbackward__",
        "inner = dataclasses.replace(ctx, keep_intermediates=None)",
        "LayerNorm's backward only tests keep_intermediates for truth: None is False there, the same dJ/dx "
        "and no intermediates.",
    ),
    (
        "xǁGroupNormǁbackward__",
        "inner = dataclasses.replace(ctx, )",
        "Work, not numbers: the inner LayerNorm (no affine) then also makes its dJ/dxhat of the rows, a copy "
        "of them, which GroupNorm drops: it reads only the rows' dJ/dx, the same numbers.",
    ),
    (
        "xǁGroupNormǁbackward__",
        "inner = dataclasses.replace(ctx, keep_intermediates=True)",
        "Work, not numbers: the inner LayerNorm (no affine) then also makes its dJ/dxhat of the rows, a copy "
        "of them, which GroupNorm drops: it reads only the rows' dJ/dx, the same numbers.",
    ),
    (
        "xǁGroupNormǁbackward__",
        "g = rows.backward(dJ_dxhat.reshape(N * self.G, -1), None, out, rows_cache, inner)",
        "LayerNorm's backward from a full cache (NormCache, the only kind this line sees) reads neither x nor "
        "out: xhat and rstd come from the cache, so x = None gives the same numbers.",
    ),
    (
        "xǁGroupNormǁbackward__",
        "g = rows.backward(dJ_dxhat.reshape(N * self.G, -1), x, None, rows_cache, inner)",
        "LayerNorm's backward from a full cache (NormCache, the only kind this line sees) reads neither x nor "
        "out: xhat and rstd come from the cache, so out = None gives the same numbers.",
    ),
    (
        "xǁBatchNorm2dǁtangent__",
        "_channels_last_rows(Rx), None, self._rows_cache(cache), V, path",
        "BatchNorm1d's tangent never reads out (R{y} comes from xhat, R{xhat} and the directions): None there "
        "gives the same numbers.",
    ),
    (
        "xǁBatchNorm2dǁr_backward__",
        "+        None,",
        "A whole argument of BatchNorm1d's r_backward made None: R{x} or out, which it never reads (R{xhat} "
        "comes from the tangent's cache, xhat and rstd from the cache), so the same numbers; None for any other "
        "argument fails the tests.",
    ),
    (
        "xǁBatchNorm2dǁr_backward__",
        "if g_x is None and R.dJ_dx is None:",
        "BatchNorm1d's r_backward returns dJ/dx and R{dJ/dx} both None (need_dx False) or neither: or and and agree.",
    ),
    (
        "xǁGroupNormǁ__init____",
        'self.params = {} if gamma is None and beta is None else {"gamma": gamma, "beta": beta}',
        "gamma and beta are None together or neither (GroupNorm refuses one without the other just above): or "
        "and and agree.",
    ),
    (
        "xǁGroupNormǁcheck_input__",
        "if x[0].numel() / self.G < 2:",
        "G divides C (the constructor refuses any other num_groups), so an image's C H W / G values per group "
        "is a whole number: true and floor division agree.",
    ),
    (
        "xǁGroupNormǁ_rows__",
        "return LayerNorm(d=x[0].numel() / self.G, eps=self.eps)",
        "G divides C (the constructor refuses any other num_groups), so C H W / G is a whole number, which "
        "LayerNorm.__init__ turns into the same int d.",
    ),
    (
        "xǁGroupNormǁforward__",
        "self._rows(x).forward(x.reshape(N * self.G, -1), ctx, None)",
        "LayerNorm's forward never reads its path (it checks no input and keys nothing by it): None there "
        "gives the same xhat and cache.",
    ),
    (
        "xǁGroupNormǁr_backward__",
        "xhat, rstd, tangent, (+1,), xhat.shape[1], ctx.first",
        "xhat is (N G, K), two dimensions (a group a row): the statistics' dimension 1 is dimension -1.",
    ),
    ("xǁGroupNormǁto_torch__", "gamma.dtype, device=None,", ON_CPU),
    ("xǁGroupNormǁto_torch__", "dtype=None if gamma is None else gamma.dtype, )  # fmt: skip", ON_CPU),
    ("xǁGroupNormǁto_torch__", "device=None if (gamma is None) or True else gamma.device", ON_CPU),
    (
        "xǁGroupNormǁ_groups__",
        "return normalised(None, NormCache(cache.xhat.reshape(rows_x.shape), cache.rstd))",
        "normalised() returns a full cache's xhat and rstd as they are, without reading x: None there gives "
        "the same numbers.",
    ),
    ("xǁGroupNormǁ_affine__", "self._per_channel(t.to(None), ndim)", PROMOTED),
    ("xǁGroupNormǁtangent__", "self._affine(V, path, x.dim(), None)", PROMOTED),
    ("xǁGroupNormǁr_backward__", "self._affine(V, ctx.path, x.dim(), None)", PROMOTED),
    (
        "xǁGroupNormǁr_backward__",
        "Rh.to(dtype, )}",
        "Memory, not numbers: in float64 the kept R{dJ/dxhat} is then R{h} itself, which nothing writes "
        "after (normalised_r_backward reads it into new tensors): the same values without a copy.",
    ),
    (
        "xǁGroupNormǁr_backward__",
        "Rh.to(dtype, copy=False)}",
        "Memory, not numbers: in float64 the kept R{dJ/dxhat} is then R{h} itself, which nothing writes "
        "after (normalised_r_backward reads it into new tensors): the same values without a copy.",
    ),
    (
        "xǁGroupNormǁtangent__",
        "Rx.reshape(xhat.shape), (+1,), xhat.shape[1])",
        "xhat is (N G, K), two dimensions (a group a row): the statistics' dimension 1 is dimension -1.",
    ),
    # ---- attention ----
    (
        "xǁCausalSelfAttentionǁsoftmax_tangent__",
        "softmax_backward(P, RS, overwrite=None)",
        "Memory, not numbers: R{P} in a new tensor instead of in R{S}'s storage, a temporary the tangent "
        "deletes right after.",
    ),
    (
        "xǁCausalSelfAttentionǁsoftmax_tangent__",
        "softmax_backward(P, RS, )",
        "Memory, not numbers: R{P} in a new tensor instead of in R{S}'s storage, a temporary the tangent "
        "deletes right after.",
    ),
    (
        "xǁCausalSelfAttentionǁsoftmax_tangent__",
        "softmax_backward(P, RS, overwrite=False)",
        "Memory, not numbers: R{P} in a new tensor instead of in R{S}'s storage, a temporary the tangent "
        "deletes right after.",
    ),
    (
        "xǁCausalSelfAttentionǁ_probabilities_of__",
        "if (cache.P is not None) and False else self.rebuilt_probabilities(q, k)",
        "Work, not numbers: a teaching cache's P is the forward pass's softmax of the same q and k by the same "
        "lines, so rebuilding it gives the same P bit for bit (test_attention checks the rebuilt P equals the "
        "forward's exactly).",
    ),
    ("xǁCausalSelfAttentionǁto_torch__", "dtype=W_o.dtype, device=None", ON_CPU),
    ("xǁCausalSelfAttentionǁto_torch__", "dropout=self.p, dtype=W_o.dtype, )", ON_CPU),
    ("xǁTorchCausalSelfAttentionǁ__init____", "bias=bias, dtype=dtype, device=None)", ON_CPU),
    ("xǁTorchCausalSelfAttentionǁ__init____", "bias=bias, dtype=dtype, )", ON_CPU),
    ("xǁTorchCausalSelfAttentionǁforward__", "dtype=torch.bool, device=None).triu(diagonal=1)", ON_CPU),
    ("xǁTorchCausalSelfAttentionǁforward__", "dtype=torch.bool, ).triu(diagonal=1)", ON_CPU),
    ("xǁCausalSelfAttentionǁtangent__", "dtype=x.dtype, device=None)  # (B, nh, T, T)", ON_CPU),
    ("xǁCausalSelfAttentionǁtangent__", "dtype=x.dtype, )  # (B, nh, T, T)", ON_CPU),
    (
        "xǁTorchCausalSelfAttentionǁforward__",
        "S = (q @ k.transpose(+2, -1))",
        "k is (B, nh, T, hs), four dimensions: dimension 2 is dimension -2, the same transpose.",
    ),
    (
        "xǁCausalSelfAttentionǁtangent__",
        "RS = (Rq @ k.transpose(+2, -1))",
        "k is (b, nh, T, hs), four dimensions: dimension 2 is dimension -2, the same transpose.",
    ),
    (
        "xǁCausalSelfAttentionǁtangent__",
        ".add_(q @ Rk.transpose(+2, -1))",
        "R{k} is (b, nh, T, hs), four dimensions: dimension 2 is dimension -2, the same transpose.",
    ),
    (
        "xǁTorchCausalSelfAttentionǁforward__",
        "math.sqrt(d / self.n_head)",
        "n_head divides d (CausalSelfAttention refuses any other), so d / n_head is the whole head size as a "
        "float, exact: the same sqrt.",
    ),
    ("refbp.nn.attention.x", "dtype=torch.bool, ).triu(diagonal=1)", ON_CPU),
    (
        "refbp.nn.attention.x",
        'float("-INF")',
        'float() reads "-INF" as it reads "-inf" (case-insensitively): the same -inf.',
    ),
    (
        "xǁCausalSelfAttentionǁtangent__",
        "for part in chunks(B, 4 * self.n_head * T * T * x.element_size(), device=x.device):",
        "Memory, not numbers: the chunks of sequences processed at once are sized for 4 instead of 3 T x T "
        "temporaries; every sequence gets the same arithmetic.",
    ),
    ("xǁCausalSelfAttentionǁ", "* x.element_size(), device=None):", CHUNK_DEVICE),
    ("xǁCausalSelfAttentionǁ", "* x.element_size(), ):", CHUNK_DEVICE),
    ("refbp.nn.attention.x", "device=None", ON_CPU),
    ("xǁCausalSelfAttentionǁr_backward__", "else self.hs, dtype=x.dtype, )", ON_CPU),
    ("xǁCausalSelfAttentionǁbackward__", "else self.hs, dtype=x.dtype, )", ON_CPU),
    (
        "xǁCausalSelfAttentionǁr_backward__",
        "W_o, V_o, ctx.inner(None), bias=bias_o)",
        "linear_r_backward reads only the context's first (H v or G v) and need_dx, never its path: None "
        "there gives the same numbers.",
    ),
    (
        "xǁCausalSelfAttentionǁr_backward__",
        "assert dJ_dy is not None or R9.dJ_dx is not None",
        "ctx.inner(path) asks for dJ/dx (need_dx defaults to True), so linear_r_backward returns dJ/dy and "
        "R{dJ/dy} both: or and and agree.",
    ),
    (
        "xǁCausalSelfAttentionǁr_backward__",
        "for part in chunks(B, 7 * nh * T * T * x.element_size(), device=x.device):",
        "Memory, not numbers: the chunks of sequences processed at once are sized for 7 instead of 6 T x T "
        "temporaries; every sequence gets the same arithmetic.",
    ),
    (
        "xǁCausalSelfAttentionǁr_backward__",
        "P_tilde.transpose(+2, -1) @",
        "P~ is (b, nh, T, T), four dimensions: dimension 2 is dimension -2, the same transpose.",
    ),
    (
        "refbp.nn.attention.x",
        ".transpose(+2, -1)",
        "Every tensor attention.py transposes with (-2, -1) is 4-D, (b, nh, T, hs) or (b, nh, T, T): dimension 2 "
        "is dimension -2, the same transpose.",
    ),
    ("xǁCausalSelfAttentionǁr_backward__", "R_dv.add_(RP_tilde.transpose(-2, -1) @ dJ_dY, )", FIRST_ONE),
    ("xǁCausalSelfAttentionǁr_backward__", "R_dP.add_(dJ_dY @ Rv.transpose(-2, -1), )", FIRST_ONE),
    ("xǁCausalSelfAttentionǁr_backward__", "R_dS.addcmul_(RP, c, ).addcmul_(", FIRST_ONE),
    (
        "xǁCausalSelfAttentionǁr_backward__",
        "R_dS = self.softmax_backward(P, R_dP, overwrite=None)",
        "Memory, not numbers: R{dJ/dS} in a new tensor instead of in R{dJ/dP}'s storage (R{dJ/dP} is copied "
        "into the kept intermediates before, and deleted right after).",
    ),
    (
        "xǁCausalSelfAttentionǁr_backward__",
        "R_dS = self.softmax_backward(P, R_dP, overwrite=False)",
        "Memory, not numbers: R{dJ/dS} in a new tensor instead of in R{dJ/dP}'s storage (R{dJ/dP} is copied "
        "into the kept intermediates before, and deleted right after).",
    ),
    (
        "xǁCausalSelfAttentionǁforward_size__",
        "return shape, 2 / math.prod(shape)",
        "Only for a shape attention refuses (not (B, T, d)): the estimate then only has to let the memory check "
        "pass for a tensor the layer will refuse, as a few entries (2 / prod) do as well as 2 prod.",
    ),
    (
        "xǁCausalSelfAttentionǁforward_size__",
        "return shape, 3 * math.prod(shape)",
        "Only for a shape attention refuses (not (B, T, d)): the estimate then only has to let the memory check "
        "pass for a tensor the layer will refuse, as 3 prod entries do as well as 2 prod.",
    ),
    ("xǁCausalSelfAttentionǁscores__", "dtype=q.dtype, ).masked_fill_(", ON_CPU),
    ("xǁCausalSelfAttentionǁscores__", "causal_mask(T, None)", ON_CPU),
    (
        "xǁCausalSelfAttentionǁsoftmax_backward__",
        "softmax_backward(P, dJ_dP, overwrite=None)",
        (
            "Memory, not numbers: both callers pass overwrite=True for a temporary dJ/dP they delete right after "
            "(copied into the kept intermediates before): without it dJ/dS is a new tensor, the same values."
        ),
    ),
    (
        "xǁCausalSelfAttentionǁsoftmax_backward__",
        "softmax_backward(P, dJ_dP, )",
        (
            "Memory, not numbers: both callers pass overwrite=True for a temporary dJ/dP they delete right after "
            "(copied into the kept intermediates before): without it dJ/dS is a new tensor, the same values."
        ),
    ),
    (
        "xǁCausalSelfAttentionǁbackward__",
        "self.softmax_backward(P, dJ_dP, overwrite=None)",
        (
            "Memory, not numbers: dJ/dS (or R{dJ/dS}) in a new tensor instead of in dJ/dP's storage, a temporary "
            "(copied into the kept intermediates before) deleted right after."
        ),
    ),
    (
        "xǁCausalSelfAttentionǁbackward__",
        "self.softmax_backward(P, dJ_dP, overwrite=False)",
        (
            "Memory, not numbers: dJ/dS (or R{dJ/dS}) in a new tensor instead of in dJ/dP's storage, a temporary "
            "(copied into the kept intermediates before) deleted right after."
        ),
    ),
    (
        "xǁCausalSelfAttentionǁbackward__",
        "for part in chunks(B, 4 * nh * T * T * x.element_size(), device=x.device):",
        "Memory, not numbers: the chunks of sequences processed at once are sized for 4 instead of 3 T x T "
        "temporaries; every sequence gets the same arithmetic.",
    ),
    (
        "xǁCausalSelfAttentionǁ__init____",
        "d = W_o.shape[1]",
        "W_o is square (refused otherwise just above): its shape[1] is its shape[0], the same d.",
    ),
    (
        "xǁCausalSelfAttentionǁ_mask__",
        "> self.p  # on the CPU",
        "Differs only where a float64 uniform draw equals p exactly (probability 2^-53 an entry): a measure-zero "
        "boundary, a keep-mask with the same distribution, and the one the backward and noise_of then use.",
    ),
    ("xǁCausalSelfAttentionǁ_mask__", "return keep.to(None)", ON_CPU),
    ("xǁCausalSelfAttentionǁ_mask__", "return given.to(dtype=torch.bool)", ON_CPU),
    ("xǁCausalSelfAttentionǁforward__", "self._mask((B, self.n_head, T, T), ctx, path, None)", ON_CPU),
    ("xǁCausalSelfAttentionǁforward__", "dtype=x.dtype, ) if ctx.keep_intermediates else None", ON_CPU),
    (
        "xǁCausalSelfAttentionǁforward__",
        "for part in chunks(B, 3 * self.n_head * T * T * x.element_size(), device=x.device):",
        "Memory, not numbers: the chunks of sequences processed at once are sized for 3 instead of 2 T x T "
        "temporaries; every sequence gets the same arithmetic.",
    ),
    ("x_causal_mask__", "dtype=torch.bool, ).triu_(diagonal=1)", ON_CPU),
    (
        "xǁBlockǁ_tangent_half__",
        ".tangent(h, Rh, None, cache.saved[j]",
        "No sub-layer's tangent reads its output: RowLayerNorm, attention, Linear and Dropout ignore it, and both "
        'GELU forms take f\'(z) from z (derivative_of = "z"), so None in its place gives the same R{a(l,j)}.',
    ),
    (
        "xǁBlockǁ_r_back_half__",
        ".r_backward(g, Rg, h, Rh, None, t,",
        "No sub-layer's r_backward reads its output: RowLayerNorm, attention, Linear and Dropout ignore it, and "
        "both GELU forms take f''(z) from z (second_derivative), so None in its place gives the same numbers.",
    ),
    (
        "xǁBlockǁ_r_back_half__",
        "assert h is not None or t is not None",
        "An assertion for the type checker that never fails: the tangent pass fills every a(l,j) and tangent "
        "record (it raises otherwise), so or passes exactly where and does, and computes nothing.",
    ),
    (
        "xǁBlockǁ_r_back_half__",
        "assert g_in is not None or R.dJ_dx is not None",
        "An assertion for the type checker that never fails: every sub-layer returns dJ/dx and R{dJ/dx} under "
        "ctx.inner(path), whose need_dx is True, so or passes exactly where and does, and computes nothing.",
    ),
    (
        "xǁBlockǁr_backward__",
        "cache.resid, None, cache, record",
        "R{r} is handed only to the MLP half's first sub-layer, ln_2, a RowLayerNorm whose r_backward reads "
        "R{xhat} and rho from its tangent record and never its R{x} argument: the same numbers with None.",
    ),
    (
        "xǁBlockǁr_backward__",
        "dJ_dr, R_dr, x, None, cache, record",
        "R{x} is handed only to the attention half's first sub-layer, ln_1, a RowLayerNorm whose r_backward "
        "reads R{xhat} and rho from its tangent record and never its R{x} argument: the same numbers with None.",
    ),
    (
        "xǁBlockǁtangent__",
        "BlockTangent([None] * (n + 1), [None] * (n + 1), None)",
        "record.Rresid is set to R{r} two lines later, before _tangent_half of the MLP or any r_backward reads "
        "it: the initial value is never read.",
    ),
    (
        "xǁBlockǁtangent__",
        "BlockTangent([None] * (n + 2), [None] * (n + 1), Rx)",
        "Ra gets one unused slot at the end: only Ra[1..8] are written and read (by sub-layer index), and the "
        "shown intermediates iterate over layers, not Ra.",
    ),
    (
        "xǁRowLayerNormǁtangent__",
        "rows, R_rows = x.reshape(-1, d).to(None),",
        "Exact promotion: x's rows in its own dtype meet mu and rstd (float64) in (rows - mu) rstd first, which "
        "converts them exactly; rows is read nowhere else.",
    ),
    (
        "xǁRowLayerNormǁtangent__",
        'R_xhat * self.params["gamma"].to(None)',
        PROMOTED,
    ),
    (
        "xǁRowLayerNormǁtangent__",
        'xhat * V(path, "gamma").to(None)',
        PROMOTED,
    ),
    (
        "xǁRowLayerNormǁtangent__",
        'Ry += V(path, "beta").to(None)',
        PROMOTED,
    ),
    (
        "xǁRowLayerNormǁr_backward__",
        'gamma = self.params["gamma"].to(None)',
        "Exact promotion: gamma in the network's dtype enters only G * gamma and RG * gamma, whose partners "
        "(dJ/dy, R{dJ/dy}) are in float64 already, to which torch converts gamma exactly first.",
    ),
    (
        "xǁRowLayerNormǁr_backward__",
        'R_gx.addcmul_(G, V(ctx.path, "gamma").to(None)',
        "Exact promotion: V_gamma in the network's dtype meets G (float64) in an addcmul_ into R_gx (float64), "
        "which converts it exactly first.",
    ),
    ("xǁRowLayerNormǁr_backward__", 'R_gx.addcmul_(G, V(ctx.path, "gamma").to(acc), )', FIRST_ONE),
    ("xǁRowLayerNormǁr_backward__", "H_gamma.add_((G * R_xhat).sum(dim=0), )", FIRST_ONE),
    ("xǁRowLayerNormǁr_backward__", "R_dx.addcmul_(rho, dJ_dx, ).sub_(curve, alpha=first)", FIRST_ONE),
    ("xǁRowLayerNormǁr_backward__", "R_dx.addcmul_(rho, dJ_dx, value=first).sub_(curve, )", FIRST_ONE),
    (
        "xǁBlockǁ_back__",
        "overwrite=None, need_dx=True",
        "Memory, not numbers: a falsy overwrite never lets a sub-layer reuse dJ/d(its output)'s storage, so its "
        "dJ/dx lands in a new tensor: the same values; owned only spares the training step that tensor.",
    ),
    (
        "xǁBlockǁ_back__",
        "keep_intermediates=ctx.keep_intermediates, need_dx=True,",
        "Memory, not numbers: overwrite left at its default False never lets a sub-layer reuse dJ/d(its "
        "output)'s storage, so its dJ/dx lands in a new tensor: the same values.",
    ),
    (
        "xǁBlockǁ_back__",
        "overwrite=owned, weight_decay=ctx.weight_decay,",
        "need_dx left at BackwardContext's default, which is True: the same context.",
    ),
    ("xǁBlockǁ_back__", ".forward(source, None, path)", REBUILT_GELU),
    ("xǁBlockǁ_back__", ".forward(source, ForwardContext(keep_intermediates=False), None)", REBUILT_GELU),
    ("xǁBlockǁ_back__", ".forward(source, ForwardContext(keep_intermediates=None), path)", REBUILT_GELU),
    ("xǁBlockǁ_back__", ".forward(source, ForwardContext(keep_intermediates=True), path)", REBUILT_GELU),
    (
        "xǁBlockǁ_back__",
        "layer.backward(g, layer_input, None, cache.saved[j], sub_ctx)",
        "No sub-layer's backward reads its output: RowLayerNorm, attention, Linear and Dropout ignore it, and "
        'both GELU forms take f\'(z) from their input z (derivative_of = "z"): the same numbers with None.',
    ),
    (
        "xǁBlockǁ_back__",
        "g, owned = grads.dJ_dx, False",
        "Memory, not numbers: never owning g keeps the later sub-layers from reusing its storage (overwrite "
        "False) and clones the half's dJ/dx at the end: the same values in new tensors.",
    ),
    ("xǁBlockǁ_back__", "if j == half[0] or half[0] > 1:", RESID_RELEASED),
    (
        "xǁBlockǁ_back__",
        "if j == half[0] and half[0] > 2:",
        "half[0] is 1 (the attention half) or 4 (the MLP half): > 1 and > 2 select the same half.",
    ),
    (
        "xǁBlockǁ_back__",
        "    if owned:  # every sub-layer was the identity",
        "Memory, not numbers: each half holds a sub-layer that is never skipped (a LayerNorm, attention, a "
        "Linear), so owned is always True at the end; the mutant then clones g, the same values in a copy.",
    ),
    (
        "xǁBlockǁ_back__",
        "        g = None",
        "Unreachable: each half holds a sub-layer that is never skipped (a LayerNorm, attention, a Linear), so "
        "owned is always True after the loop and the clone for a half of identities never runs.",
    ),
    ("xǁBlockǁ_back__", "if j != half[0] and half[0] > 1:", RESID_RELEASED),
    ("xǁBlockǁ_back__", "if j == half[1] and half[0] > 1:", RESID_RELEASED),
    ("xǁBlockǁ_back__", "if j == half[0] and half[1] > 1:", RESID_RELEASED),
    ("xǁBlockǁ_back__", "if j == half[0] and half[0] >= 1:", RESID_RELEASED),
    ("xǁRowLayerNormǁbackward__", "torch.zeros(d, dtype=acc, device=None)", ON_CPU),
    ("xǁRowLayerNormǁbackward__", "torch.zeros(d, dtype=acc, )", ON_CPU),
    ("xǁRowLayerNormǁbackward__", "rstd.element_size(), device=None)", ON_CPU),
    ("xǁRowLayerNormǁbackward__", "rstd.element_size(), )", ON_CPU),
    (
        "xǁRowLayerNormǁbackward__",
        "chunks(rows_x.shape[0], 4 * d * rstd.element_size()",
        "Memory, not numbers: the chunk of rows processed at once is 3/4 as large; rows are independent, so "
        "every row gets the same arithmetic.",
    ),
    (
        "xǁRowLayerNormǁbackward__",
        "dJ_dxhat.mean(dim=+1, keepdim=True)",
        "dJ_dxhat is (m, d), two dimensions (rows of dJ/dy or dJ/dy o gamma): dim 1 is dim -1.",
    ),
    (
        "xǁRowLayerNormǁbackward__",
        "(g_xhat @ gamma_a).unsqueeze_(+1)",
        "The matrix-vector product is (m,), one dimension: unsqueeze at 1 or at -1 both give (m, 1).",
    ),
    (
        "xǁRowLayerNormǁbackward__",
        "g_xhat.mean(dim=+1, keepdim=True)",
        "g_xhat is (m, d), two dimensions (rows of dJ/dy o xhat): dim 1 is dim -1.",
    ),
    (
        "xǁBlockǁforward__",
        "BlockCache(a=[None] * (n + 2), saved=[None] * (n + 1)",
        "One unused slot at the end of cache.a: a[0..8] are indexed by sub-layer (0 unused), and every loop "
        "over the cache runs over the sub-layers, so a[9] is never read.",
    ),
    (
        "xǁBlockǁforward__",
        "BlockCache(a=[None] * (n + 1), saved=[None] * (n + 2)",
        "One unused slot at the end of cache.saved: saved[1..8] are indexed by sub-layer, and every loop over "
        "the cache runs over the sub-layers, so saved[9] (None) is never read.",
    ),
    (
        "xǁBlockǁforward__",
        "saved=[None] * (n + 1), resid=None)",
        "cache.resid is set to r = x + a(l,3) two lines later, before anything reads it: the initial value is "
        "never read.",
    ),
    ("xǁRowLayerNormǁforward__", "torch.empty(rows.shape[0], 1, dtype=acc, device=None)", ON_CPU),
    ("xǁRowLayerNormǁforward__", "torch.empty(rows.shape[0], 1, dtype=acc, )", ON_CPU),
    ("xǁRowLayerNormǁforward__", "mu.element_size(), device=None)", ON_CPU),
    ("xǁRowLayerNormǁforward__", "mu.element_size(), )", ON_CPU),
    (
        "xǁRowLayerNormǁforward__",
        "chunks(rows.shape[0], d / mu.element_size()",
        "Memory, not numbers: the chunk of rows processed at once is larger; rows are independent, so every "
        "row gets the same arithmetic.",
    ),
    ("xǁRowLayerNormǁforward__", "keepdim=True, dtype=None, out=mu[part])", MEAN_INTO_MU),
    ("xǁRowLayerNormǁforward__", "dim=-1, keepdim=True, out=mu[part])", MEAN_INTO_MU),
    (
        "xǁRowLayerNormǁforward__",
        "torch.mean(rows[part], dim=+1, keepdim=True",
        "rows[part] is (m, d), two dimensions: dim 1 is dim -1.",
    ),
    (
        "xǁRowLayerNormǁforward__",
        "torch.linalg.vector_norm(centred, dim=+1, keepdim=True)",
        "centred is (m, d), two dimensions: dim 1 is dim -1.",
    ),
    (
        "xǁRowLayerNormǁforward__",
        "torch.addcmul(beta, y, gamma, )",
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "xǁRowLayerNormǁforward__",
        "torch.addcmul(beta, y, gamma, out=None)",
        "Memory, not numbers: gamma o xhat + beta in a new tensor instead of in y's storage.",
    ),
    (
        "x__row_mean__",
        "t.sum(dim=+1, keepdim=True)",
        "_row_mean's t is always (M, d), two dimensions (its callers' rows): dim 1 is dim -1.",
    ),
    (
        "x__row_mean__",
        "mul_(1.0 / t.shape[+1])",
        "_row_mean's t is always (M, d), two dimensions (its callers' rows): shape[1] is shape[-1] = d.",
    ),
    # the normalisations' lean passes as changed in stop 27 (scale_shift, GroupNorm's six-pass backward)
    ("x_scale_shift__", "if all(n != 1 for t in (scale, shift)", SCALE_SHIFT_ROUTE),
    ("x_scale_shift__", "if all(n == 2 for t in (scale, shift)", SCALE_SHIFT_ROUTE),
    ("x_scale_shift__", "for n in t.shape[:+1]):", SCALE_SHIFT_ROUTE),
    ("x_scale_shift__", "for n in t.shape[:-2]):", SCALE_SHIFT_ROUTE),
    ("x_scale_shift__", "torch.addcmul(shift, y, scale, out=None)", NEW_TENSOR),
    ("x_scale_shift__", "torch.addcmul(shift, y, scale, )", NEW_TENSOR),
    ("x_scale_shift__", "torch.mul(y, scale, out=None).add_(shift)", NEW_TENSOR),
    ("x_scale_shift__", "torch.mul(y, scale, ).add_(shift)", NEW_TENSOR),
    ("xǁBatchNorm1dǁlean_forward__", "y = scale_shift(y, rstd * gamma, beta, out=None)", NEW_TENSOR),
    ("xǁBatchNorm1dǁlean_forward__", "y = scale_shift(xa, scale, shift, out=None)", LAYOUT),
    ("xǁBatchNorm1dǁlean_backward__", "dJ_dx = scale_shift(g, s, -s * shift, out=None)", NEW_TENSOR),
    ("xǁGroupNormǁforward__", "y = scale_shift(y, gamma, beta, out=None)", NEW_TENSOR),
    (
        "xǁGroupNormǁ_lean_backward__",
        "E = g.view(per_channel).sum(dim=+1)",
        "per_channel views g as (N C, positions): dim=+1 and dim=-1 are the same dimension.",
    ),
    (
        "xǁGroupNormǁ_lean_backward__",
        ".mul_(g.view(per_channel)).sum(dim=+1)",
        "per_channel views the product as (N C, positions): dim=+1 and dim=-1 are the same dimension.",
    ),
    ("xǁGroupNormǁ_lean_backward__", "work = torch.sub(rows_x, mu, out=None)", LAYOUT),
    ("xǁGroupNormǁ_lean_backward__", "work = torch.sub(rows_x, mu, )", LAYOUT),
    ("xǁGroupNormǁ_lean_backward__", 'gamma = self.params["gamma"].to(None) if self.params', PROMOTED),
    (
        "xǁGroupNormǁ_lean_backward__",
        "torch.ones(C, dtype=None, device=x.device)",
        "gamma = 1 without affine: ones are exact in every float dtype, and every product they enter "
        "promotes to the accumulation dtype.",
    ),
    (
        "xǁGroupNormǁ_lean_backward__",
        "torch.ones(C, device=x.device)",
        "gamma = 1 without affine: ones are exact in every float dtype, and every product they enter "
        "promotes to the accumulation dtype.",
    ),
    ("xǁGroupNormǁ_lean_backward__", "torch.ones(C, dtype=acc, device=None)", ON_CPU),
    ("xǁGroupNormǁ_lean_backward__", "torch.ones(C, dtype=acc, )", ON_CPU),
    (
        "xǁGroupNormǁ_lean_backward__",
        "(r.view(per_group) * gamma.view(G, -1))",
        "Broadcasting puts the missing leading 1 back: (N, G, 1) times (G, C/G) is the same (N, G, C/G) product.",
    ),
    ("xǁGroupNormǁ_lean_backward__", "minus_k_c, shift_c, out=None)", NEW_TENSOR),
    ("xǁGroupNormǁ_lean_backward__", "out=work.view(C, -1)", OUT_RESIZED),
    ("xǁGroupNormǁ_lean_backward__", "out=work.view(N, -1)", OUT_RESIZED),
]
"""Survivors that are equivalent to the original: the same numbers, so no test can kill them."""

TEXT_ONLY: dict[str, str] = {
    "ǁequations__mutmut": "A layer's equations() is the text refbp explain and docs/equations.md print, not "
    "arithmetic, and no selected test reads it.",
}
"""Functions whose mutants change text, not numbers: counted apart, neither killed nor equivalent."""


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def run_mutmut(max_children: int, modules: list[str], fresh: bool, survivors: bool = False) -> None:
    """Run mutmut with the ci profile and one torch thread per worker, and record the run in mutants/runs.json.
    With ``survivors``, only the modules' mutants that survived the last run and that nothing explains
    (none: nothing to run)."""
    if fresh:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci", "OMP_NUM_THREADS": "1"}
    if survivors:
        codes = read_results()
        surviving = [
            n for module in modules or MODULES for n, code in codes[module].items() if status(code) in SURVIVING
        ]
        diffs = diffs_of(surviving)
        patterns = sorted(name for name in surviving if explain(name, diffs[name]) is None)
        if not patterns:
            return
    else:
        patterns = [f"refbp.nn.{module}.*" for module in modules]
    commit = _git("rev-parse", "--short", "HEAD") + (
        " (with uncommitted changes)" if _git("status", "--porcelain", "refbp") else ""
    )
    start = time.monotonic()
    subprocess.run([_mutmut(), "run", "--max-children", str(max_children), *patterns], cwd=ROOT, env=env, check=True)
    runs = read_runs()
    run: dict[str, Any] = {"modules": modules or list(MODULES), "commit": commit, "workers": max_children}
    if survivors:
        run["survivors"] = len(patterns)
    runs.append({**run, "seconds": round(time.monotonic() - start)})
    (ROOT / "mutants" / "runs.json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")


def read_runs() -> list[dict[str, Any]]:
    """The runs recorded in mutants/runs.json: modules, commit, seconds."""
    path = ROOT / "mutants" / "runs.json"
    return list(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else []


def read_results() -> dict[str, dict[str, int | None]]:
    """Module -> (mutant name -> mutmut's exit code); a module mutmut has not generated yet maps to {}."""
    codes: dict[str, dict[str, int | None]] = {}
    for module in MODULES:
        meta = ROOT / "mutants" / "refbp" / "nn" / f"{module}.py.meta"
        codes[module] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"] if meta.is_file() else {}
    if not any(codes.values()):
        raise FileNotFoundError(f"{ROOT / 'mutants'} holds no results: run this script without --report-only first")
    return codes


def read_previous(path: Path) -> dict[str, Any]:
    """The report written last (reports/mutation.json), or {} when there is none: the source of the rows
    carried forward for modules with no result in mutants/ (``render``)."""
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def measured_at(module: str, runs: list[dict[str, Any]]) -> str:
    """The commit of the last recorded run of ``module`` (its first word: the rest is a note)."""
    commits = [str(r["commit"]).split()[0] for r in runs if module in r["modules"]]
    return commits[-1] if commits else "unknown"


def status(code: int | None) -> str:
    return "timeout" if code in TIMEOUT_CODES else STATUS.get(code, "suspicious")


SHOW = (
    "import json, sys\n"
    "from mutmut.__main__ import find_mutant\n"
    "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
    "print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in sys.argv[1:]}))\n"
)
"""What ``mutmut show NAME`` prints, for many mutants in one process (one mutmut start each is minutes)."""


def diffs_of(names: list[str]) -> dict[str, str]:
    """Each mutant's changed lines ("-" original, "+" mutant)."""
    if not names:
        return {}
    shown = subprocess.run([sys.executable, "-c", SHOW, *names], cwd=ROOT, capture_output=True, text=True, check=True)
    return {
        name: "\n".join(
            line for line in diff.splitlines() if line.startswith(("-", "+")) and line[:3] not in ("---", "+++")
        )
        for name, diff in json.loads(shown.stdout).items()
    }


def explain(name: str, diff: str) -> tuple[str, str] | None:
    """("equivalent" or "text only", why) for a survivor, or None when nothing explains it."""
    for in_name, why in TEXT_ONLY.items():
        if in_name in name:
            return "text only", why
    added = "\n".join(line for line in diff.splitlines() if line.startswith("+"))
    for in_name, in_line, why in EXPLAINED:
        if in_name in name and in_line in added:
            return "equivalent", why
    return None


@dataclass
class Tally:
    """One module's (or the total's) counts."""

    mutants: int = 0
    checked: int = 0
    killed: int = 0
    timeout: int = 0
    equivalent: int = 0
    text_only: int = 0
    unexplained: int = 0

    def add(self, other: Tally) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def row(self, name: str) -> list[object]:
        scored = self.checked - self.text_only  # text-only mutants are left out of both rates
        rate = f"{100 * (self.killed + self.timeout) / scored:.1f}%" if scored else "-"
        adjusted = f"{100 * (self.killed + self.timeout + self.equivalent) / scored:.1f}%" if scored else "-"
        return [name, self.mutants, self.checked, self.mutants - self.checked, self.killed + self.timeout,
                self.equivalent, self.text_only, self.unexplained, rate, adjusted]  # fmt: skip


HEADERS = ["module", "mutants", "checked", "not checked", "killed", "equivalent", "text only", "unexplained",
           "kill rate", "killed or equivalent"]  # fmt: skip


def measure(by_name: dict[str, int | None], diffs: dict[str, str]) -> tuple[Tally, list[dict[str, str]]]:
    """A module's counts from mutmut's results, and its survivors (mutant, status, diff, kind, why)."""
    tally, survivors = Tally(mutants=len(by_name)), []
    for name in sorted(by_name):
        state = status(by_name[name])
        tally.checked += state != "not checked"
        tally.killed += state == "killed"
        tally.timeout += state == "timeout"
        if state not in SURVIVING:
            continue
        kind, why = explain(name, diffs[name]) or ("unexplained", "**UNEXPLAINED**")
        tally.equivalent += kind == "equivalent"
        tally.text_only += kind == "text only"
        tally.unexplained += kind == "unexplained"
        survivors.append({"mutant": name, "status": state, "diff": diffs[name], "kind": kind, "why": why})
    return tally, survivors


def carried_forward(
    module: str, by_name: dict[str, int | None], previous: dict[str, Any]
) -> tuple[Tally, list[dict[str, str]]] | None:
    """The row and survivors ``previous`` (the report written last) holds for a module none of whose
    mutants has a result in mutants/ (mutmut lists every module's mutants, but a run of one module checks
    only that one); None when the module has results, has no row there, or has another number of mutants
    now (its code changed since: it is reported as not checked)."""
    row = previous.get("modules", {}).get(module)
    if row is None or any(status(code) != "not checked" for code in by_name.values()):
        return None
    if by_name and len(by_name) != row["mutants"]:
        print(f"{module}: {len(by_name)} mutants, {row['mutants']} in the last report: not carried forward")
        return None
    prefix = f"refbp.nn.{module}."
    return Tally(**row), [s for s in previous.get("survivors", []) if s["mutant"].startswith(prefix)]


def render(
    codes: dict[str, dict[str, int | None]], runs: list[dict[str, Any]], previous: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any], int]:
    """reports/mutation.md, reports/mutation.json and the number of unexplained survivors.

    A module with no result in mutants/ keeps its row and survivors from ``previous`` (carried_forward),
    marked with the commit of its last run; ``previous``'s runs not in ``runs`` are listed first."""
    previous = previous or {}
    runs = [r for r in previous.get("runs", []) if r not in runs] + runs
    total, tallies, sections, survivors_json, carried = Tally(), {}, [], [], {}
    surviving = [n for by_name in codes.values() for n, code in by_name.items() if status(code) in SURVIVING]
    diffs = diffs_of(surviving)
    for module, by_name in codes.items():
        kept = carried_forward(module, by_name, previous)
        if kept is not None:
            carried[module] = measured_at(module, runs)
        tally, survivors = kept or measure(by_name, diffs)
        rows = [
            [
                f"`{s['mutant'].removeprefix('refbp.nn.')}`",
                s["status"],
                f"`{' / '.join(line[1:].strip() for line in s['diff'].splitlines())}`",
                s["why"],
            ]
            for s in survivors
            if s["kind"] != "text only"
        ]
        survivors_json += survivors
        tallies[module] = tally
        total.add(tally)
        if rows:
            headers = ["mutant", "status", "original / mutant", "why it survives (equivalent)"]
            sections += [f"### {module}", "", tabulate(rows, headers=headers, tablefmt="github"), ""]
    table = [tallies[m].row(f"`{m}`" + (f" ({carried[m]})" if m in carried else "")) for m in codes]
    table.append(total.row("**total**"))
    carried_lines = (
        [
            "A module with a commit after its name has no result in mutants/ at this run: its row and survivors are "
            "carried forward from the previous report, as measured at that commit (its last run below).",
            "",
        ]
        if carried
        else []
    )
    run_lines = [
        f"- `{', '.join(r['modules'])}`"
        + (f" ({r['survivors']} survivors re-tested with the new tests)" if r.get("survivors") else "")
        + f": commit {r['commit']}"
        + (f", {r['workers']} worker{'s' if r['workers'] > 1 else ''}" if r.get("workers") else "")
        + f", {r['seconds'] / 60:.0f} min"
        + (f"; stopped {r['stopped']}" if r.get("stopped") else "")
        for r in runs
    ]
    text_only_lines = [f"- `*{name.split('__')[0]}`: {why}" for name, why in TEXT_ONLY.items()]
    lines = [
        "# Mutation testing: the layers' manual backprop",
        "",
        f"mutmut over `refbp/nn/{{{','.join(MODULES)}}}.py` with the fast `ci` hypothesis profile "
        f"(`python scripts/mutation.py --max-children N`, module by module with `--module NAME`, then "
        f"`--survivors` after new tests; configuration in setup.cfg), on {os.cpu_count()} cores shared with "
        "other jobs.",
        "",
        tabulate(table, headers=HEADERS, tablefmt="github"),
        "",
        *carried_lines,
        "Killed means some test failed with the mutant in place (a timeout counts as killed); a survivor is "
        "either killed by a new test (tests/test_mutation_kills*.py) or shown below to compute the same numbers "
        "as the original. Not checked: mutants no run has reached yet; the rates are over the checked mutants "
        "only, and mutmut reaches a module's mutants fastest first (those whose tests take least time), so a "
        "module with mutants not checked is not measured in full. Text only (left out of both rates):",
        "",
        *text_only_lines,
        "",
        "Runs (mutmut keeps each result; a later run re-tests only the mutants whose function changed):",
        "",
        *(run_lines or ["- none recorded"]),
        "",
        "## Survivors",
        "",
        *(sections or ["None.", ""]),
    ]
    data = {
        "modules": {m: asdict(t) for m, t in tallies.items()},
        "carried": carried,
        "total": asdict(total),
        "runs": runs,
        "survivors": survivors_json,
    }
    return "\n".join(lines).rstrip() + "\n", data, total.unexplained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports", help="folder for mutation.md and mutation.json (default: reports)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="parallel mutmut workers")
    parser.add_argument("--module", action="append", choices=MODULES, default=[], help="only this module (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="delete mutants/ (every cached result) first")
    parser.add_argument("--report-only", action="store_true", help="report on the last runs in mutants/")
    parser.add_argument(
        "--survivors", action="store_true", help="re-test only the unexplained survivors of the last run"
    )
    args = parser.parse_args(argv)
    if not args.report_only:
        run_mutmut(args.max_children, args.module, args.fresh, args.survivors)
    previous = read_previous(ROOT / args.out / "mutation.json")
    text, data, unexplained = render(read_results(), read_runs(), previous)
    write_atomic(ROOT / args.out / "mutation.md", text)
    write_atomic(ROOT / args.out / "mutation.json", json.dumps(data, indent=1) + "\n")
    print(text)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
