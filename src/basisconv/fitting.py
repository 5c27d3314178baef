"""Fitting a basis layer to a trained convolution's filters: which filters become the
basis (greedy column-pivoted Gram-Schmidt) and the least-squares coefficients of the
others, in float64. ``BasisConv2d.from_conv`` and shared-coefficient surgery use them.
"""

from __future__ import annotations

import math

import torch


def select_basis(weight: torch.Tensor, num_basis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy column-pivoted Gram-Schmidt on the flattened filters.

    Picks, ``num_basis`` times, the filter with the largest residual norm and projects it
    out of the others: the chosen filters span as much of the layer as a greedy choice can,
    and the residual after ``k`` picks is exactly the least-squares error of fitting the
    remaining filters from the first ``k``. Returns the chosen indices (in pick order) and
    the relative Frobenius reconstruction error after each number of picks
    (``errors[k]`` for ``k`` picks, ``errors[0] = 1``), computed in float64.
    """
    chosen, errors = _greedy_pivots(weight, num_basis, with_errors=True)
    return chosen, torch.tensor(errors, dtype=torch.float64)


def basis_filters(weight: torch.Tensor, num_basis: int) -> torch.Tensor:
    """The indices :func:`select_basis` picks, without its error curve: a conversion of a
    given size reads only the picks, and the curve's sum over the residual filters after
    each pick was about a quarter of a conversion's time (5.5 -> 4.2 s for a 512-filter
    layer of ResNet-18 on a loaded 2-core CPU; the README's FLOP example converts them
    all)."""
    return _greedy_pivots(weight, num_basis, with_errors=False)[0]


def _greedy_pivots(weight: torch.Tensor, num_basis: int,
                   with_errors: bool) -> tuple[torch.Tensor, list[float]]:
    """:func:`select_basis`'s picks, and its error curve where ``with_errors``."""
    # The residual filters are kept and updated (right-looking), and their norms summed
    # from them: the residual norms of the subtract-the-squared-component shortcut stall
    # at rounding level (relative errors ~1e-8 where the fit is exact), which made
    # from_conv(max_error=...) pick filters past a layer's rank. On the CPU whatever the
    # weight's device: small products, the same picks on every device, no device sync.
    w = weight.detach().reshape(weight.shape[0], -1).to("cpu", torch.float64)
    residual = w.clone()
    total = float(w.pow(2).sum()) or 1.0
    directions = w.new_zeros(num_basis, w.shape[1])
    chosen: list[int] = []
    errors = [1.0]
    available = torch.ones(w.shape[0], dtype=torch.bool)
    for k in range(num_basis):
        norms = residual.pow(2).sum(1)
        pick = int(norms.masked_fill(~available, -1.0).argmax())
        chosen.append(pick)
        available[pick] = False
        q = residual[pick]
        for _ in range(2):  # project again: one pass loses orthogonality on near-dependent filters
            q = q - directions[:k].T @ (directions[:k] @ q)
        norm = q.norm()
        # a filter already in the span of the picked ones (to rounding) adds no direction
        if norm > 1e-12 * w[pick].norm():
            q = q / norm
            directions[k] = q
            residual -= (residual @ q)[:, None] * q[None, :]
        if with_errors:
            errors.append(float(residual[available].pow(2).sum() / total) ** 0.5)
    return torch.tensor(chosen, dtype=torch.long, device=weight.device), errors


def fit_coefficients(basis: torch.Tensor, rest: torch.Tensor,
                     rank: int | None = None) -> tuple[torch.Tensor, ...]:
    """Least-squares coefficients ``A`` with ``rest ~= A @ basis``.

    ``basis`` is ``[m, K]`` (flattened basis filters), ``rest`` ``[C_out - m, K]``. Several
    layers sharing one matrix are fitted jointly by concatenating their ``K`` columns. With
    ``rank`` the best rank-``r`` solution (reduced-rank regression: the truncated SVD of
    the least-squares fit ``A* @ basis``, mapped back through the pseudo-inverse) is
    returned as two factors ``(left [C_out - m, r], right [r, m])``. Float64 on the CPU
    throughout.
    """
    # On the CPU: CUDA's lstsq has only the QR driver (no gelsd), and these matrices are
    # small; callers copy the result to the layer's device.
    basis = basis.detach().to("cpu", torch.float64)
    rest = rest.detach().to("cpu", torch.float64)
    if rest.shape[0] == 0:
        full = rest.new_zeros(0, basis.shape[0])
    else:
        # gelsd (SVD-based) also handles m > K, where the basis filters are dependent.
        full = torch.linalg.lstsq(basis.T, rest.T, driver="gelsd").solution.T
    if rank is None:
        return (full,)
    fitted = full @ basis
    u, s, vh = torch.linalg.svd(fitted, full_matrices=False)
    r = min(rank, s.numel())
    left = u[:, :r] * s[:r]
    right = vh[:r] @ torch.linalg.pinv(basis)
    if r < rank:  # fewer directions than asked: pad with zeros to keep the stored shapes
        left = torch.cat([left, left.new_zeros(left.shape[0], rank - r)], 1)
        right = torch.cat([right, right.new_zeros(rank - r, right.shape[1])], 0)
    return left, right


def smallest_basis(weight: torch.Tensor, max_error: float,
                   rank: int | None = None) -> tuple[int | None, float]:
    """The smallest number of basis filters (at least 1) whose fit has a relative weight
    error of at most ``max_error``, and that error. With ``rank`` the coefficients are the
    rank-``rank`` fit, whose error is larger than the full fit's: the count then grows
    until that error is met too, within the sizes the rank allows; ``None`` for the count where none meets it, with the best error
    reached (``inf`` where no size allows the rank)."""
    c_out = weight.shape[0]
    order, errors = select_basis(weight, c_out)
    m = max(1, int(torch.nonzero(errors <= max_error + 1e-12)[0]))
    if rank is None:
        return m, float(errors[m])
    # the sizes whose coefficients may have this rank (as check_coefficient_rank says:
    # at most m and C_out - m, and rank 1 always, at full rank too)
    largest = c_out if rank == 1 else c_out - rank
    if rank > largest:
        return None, math.inf
    flat = weight.detach().reshape(c_out, -1).to("cpu", torch.float64)
    total = float(flat.norm()) or 1.0
    order = order.cpu()
    best = math.inf
    # below the full fit's count the rank's error is larger still: starting lower where
    # the rank allows no more only finds its best error
    for m in range(max(rank, min(m, largest)), largest + 1):
        basis, rest = flat[order[:m]], flat[order[m:]]
        left, right = fit_coefficients(basis, rest, rank)
        error = float((rest - left @ right @ basis).norm()) / total
        if error <= max_error + 1e-12:
            return m, error
        best = min(best, error)
    return None, best


#: How ``from_conv`` chooses the basis it fits: ``"pivots"``, the conv's own filters picked
#: by :func:`select_basis`; ``"svd"``, the best rank-``m`` weight (Eckart-Young), written in
#: the same form (its rows at the pivots of :func:`select_basis` are the basis filters).
FIT_MODES = ("pivots", "svd")


def best_rank_weight(flat: torch.Tensor, m: int) -> torch.Tensor:
    """The rank-``m`` matrix nearest ``flat`` (``[C_out, K]``) in the Frobenius norm, in
    float64 on ``flat``'s device: the truncated SVD. ``flat`` itself (converted) where
    ``m`` reaches its largest possible rank, so that a full-rank conversion stays exact."""
    w = flat.detach().to(torch.float64)
    if m >= min(w.shape):
        return w
    u, s, vh = torch.linalg.svd(w.cpu(), full_matrices=False)
    return ((u[:, :m] * s[:m]) @ vh[:m]).to(w.device)


def svd_errors(weight: torch.Tensor) -> torch.Tensor:
    """The smallest relative Frobenius error of any rank-``k`` weight, for ``k = 0..C_out``
    (``errors[0] = 1``): the bound :func:`best_rank_weight` reaches."""
    c_out = weight.shape[0]
    w = weight.detach().reshape(c_out, -1).to("cpu", torch.float64)
    s2 = w.new_zeros(c_out + 1)  # min(C_out, K) <= C_out squared singular values, then 0
    values = torch.linalg.svdvals(w).pow(2)
    s2[: values.numel()] = values
    total = float(s2.sum()) or 1.0
    tail = torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0])  # tail[k] = sum_{i>=k}
    return (tail / total).clamp_min(0).sqrt()


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F`` in float64 (0 for an all-zero ``exact``)."""
    exact = exact.detach().to(torch.float64)
    diff = approx.detach().to(torch.float64) - exact
    norm = exact.norm()
    return float(diff.norm() / norm) if norm > 0 else float(diff.norm())
