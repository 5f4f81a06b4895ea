"""Float64 reference implementations of the merge methods, written from the formulas.

Deliberately plain: NumPy float64, explicit loops over entries or vectors where that reads more
like the formula, no code shared with ``npdecode.merge.methods``. Random methods take the
uniform draws ``u`` (one array per model, as the package draws them) as an argument.
"""

from __future__ import annotations

import math

import numpy as np


def linear(xs, ws, normalize=True):
    out = sum(w * x for w, x in zip(ws, xs))
    return out / sum(ws) if normalize else out


def slerp(t, v0, v1, threshold=0.9995, eps=1e-8):
    a, b = v0.ravel(), v1.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b) / ((na if na > eps else 1.0) * (nb if nb > eps else 1.0))
    if abs(cos) > threshold:
        return (1 - t) * v0 + t * v1
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def _slerp_vec(t, a, b, eps=1e-8):
    ua = a / max(np.linalg.norm(a), eps)
    ub = b / max(np.linalg.norm(b), eps)
    omega = math.acos(min(1.0, max(-1.0, float(ua @ ub))))
    if abs(math.sin(omega)) < eps:
        return (1 - t) * a + t * b
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def nuslerp(w0, w1, x0, x1, base=None, flatten=True, row_wise=False):
    t = w1 / (w0 + w1)
    a, b = (x0 - base, x1 - base) if base is not None else (x0, x1)
    if flatten or a.ndim < 2:
        out = _slerp_vec(t, a.ravel(), b.ravel()).reshape(a.shape)
    elif row_wise:  # MergeKit's behaviour: one vector per column
        out = np.stack([_slerp_vec(t, a[:, j], b[:, j]) for j in range(a.shape[1])], axis=1)
    else:  # one vector per row
        out = np.stack([_slerp_vec(t, a[i], b[i]) for i in range(a.shape[0])])
    return out + base if base is not None else out


def multislerp(xs, ws, base=None, normalize_weights=True, eps=1e-8):
    vs = [(x - base if base is not None else x).ravel() for x in xs]
    ws = np.array(ws, dtype=np.float64)
    if normalize_weights:
        ws = ws / ws.sum()
    norms = [np.linalg.norm(v) for v in vs]
    units = [v / (n + eps) for v, n in zip(vs, norms)]
    mean = sum(w * u for w, u in zip(ws, units))
    mean = mean / np.linalg.norm(mean)
    tangent = sum(w * (u - (u @ mean) * mean) for w, u in zip(ws, units))
    tn = np.linalg.norm(tangent) + eps
    out = (mean * math.cos(tn) + tangent * math.sin(tn) / tn) * sum(w * n for w, n in zip(ws, norms))
    out = out.reshape(xs[0].shape)
    return out + base if base is not None else out


def karcher(xs, max_iter=10, tol=1e-5):
    vs = [x.ravel() for x in xs]
    norms = [np.linalg.norm(v) for v in vs]
    units = [v / n for v, n in zip(vs, norms)]
    k = len(units)
    u = sum(units) / k
    u = u / np.linalg.norm(u)
    for _ in range(max_iter):
        step = np.zeros_like(u)
        for ui in units:
            c = min(1.0, max(-1.0, float(u @ ui)))
            theta = math.acos(c)
            if theta >= tol:
                step += (ui - c * u) * theta / math.sin(theta) / k
        sn = np.linalg.norm(step)
        if sn < tol:
            break
        u = u * math.cos(sn) + step * math.sin(sn) / sn
        u = u / np.linalg.norm(u)
    return (u * (sum(norms) / k)).reshape(xs[0].shape)


def trim_magnitude(tv, density):
    """Keep the int(density*n) largest |entries|."""
    if density >= 1:
        return tv.copy()
    flat = tv.ravel()
    k = int(density * flat.size)
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(tv.shape)


def breadcrumbs_prune(tv, density, gamma):
    flat = tv.ravel()
    n = flat.size
    n_keep, n_top = int(density * n), int(gamma * n)
    n_bottom = n - n_keep - n_top
    if n_bottom < 0:
        n_top, n_bottom = n_top + n_bottom, 0
    order = np.argsort(np.abs(flat), kind="stable")
    out = np.zeros_like(flat)
    for idx in order[n_bottom : n - n_top]:
        out[idx] = flat[idx]
    return out.reshape(tv.shape)


def dare_prune(tv, density, u, rescale=True):
    kept = np.where(u < density, tv, 0.0)
    return kept / density if rescale else kept


def della_prune(tv, density, epsilon, u, rescale=True):
    rows = tv.reshape(-1, tv.shape[-1])
    ur = u.reshape(rows.shape)
    out = np.zeros_like(rows)
    width = rows.shape[1]
    for r in range(rows.shape[0]):
        order = np.argsort(np.abs(rows[r]), kind="stable")
        for rank, j in enumerate(order):
            p = density - epsilon + 2 * epsilon * (rank / (width - 1) if width > 1 else 0.5)
            if ur[r, j] < p:
                out[r, j] = rows[r, j] / p if rescale else rows[r, j]
    return out.reshape(tv.shape)


def task_vectors_merge(base, tvs, ws, consensus, normalize, lam=1.0):
    """Entrywise: weighted deltas, optional sign election ('sum'), optional normalization."""
    out = base.copy().ravel()
    flat = [tv.ravel() for tv in tvs]
    for e in range(out.size):
        d = [w * f[e] for w, f in zip(ws, flat)]
        if consensus:
            majority = 1.0 if sum(d) >= 0 else -1.0
            use = [np.sign(x) == majority for x in d]
        else:
            use = [True] * len(d)
        mixed = sum(x for x, keep in zip(d, use) if keep)
        divisor = sum(w for w, keep in zip(ws, use) if keep)
        if normalize and abs(divisor) >= 1e-8:
            mixed /= divisor
        out[e] += lam * mixed
    return out.reshape(base.shape)


def sce(base, xs, select_topk=1.0):
    tvs = np.stack([x - base for x in xs])
    if select_topk < 1:
        var = tvs.var(axis=0).ravel()
        k = int(select_topk * np.count_nonzero(var))
        mask = np.zeros(var.size)
        mask[np.argsort(-var, kind="stable")[:k]] = 1
        tvs = tvs * mask.reshape(base.shape)
    energy = np.array([np.mean(tv**2) for tv in tvs])
    coeff = energy / energy.sum() if abs(energy.sum()) >= 1e-6 else np.full(len(xs), 1 / len(xs))
    out = base.copy().ravel()
    flat = tvs.reshape(len(xs), -1)
    for e in range(out.size):
        majority = 1.0 if flat[:, e].sum() >= 0 else -1.0
        use = np.sign(flat[:, e]) == majority
        num = sum(coeff[i] * flat[i, e] for i in range(len(xs)) if use[i])
        den = sum(coeff[i] for i in range(len(xs)) if use[i])
        out[e] += num / max(den, 1e-6)
    return out.reshape(base.shape)


def model_stock(base, xs, filter_wise=False):
    width = base.shape[-1] if filter_wise else base.size
    b = base.reshape(-1, width)
    rows = [x.reshape(-1, width) for x in xs]
    n = len(xs)
    out = np.zeros_like(b)
    for r in range(b.shape[0]):
        offs = [x[r] - b[r] for x in rows]
        cos = [
            np.clip(offs[i] @ offs[j] / max(np.linalg.norm(offs[i]) * np.linalg.norm(offs[j]), 1e-6), -1, 1)
            for i in range(n)
            for j in range(i + 1, n)
        ]
        c = float(np.mean(cos))
        t = n * c / (1 + (n - 1) * c)
        out[r] = t * sum(x[r] for x in rows) / n + (1 - t) * b[r]
    return out.reshape(base.shape)


def nearswap(base, other, t):
    out = base.copy()
    for idx in np.ndindex(base.shape):
        d = abs(base[idx] - other[idx])
        w = 1.0 if d == 0 else min(1.0, t / d)
        out[idx] = w * other[idx] + (1 - w) * base[idx]
    return out


def arcee_fusion(base, other):
    def softmax(v):
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p = softmax(other) + 1e-8
    q = softmax(base) + 1e-8
    kl = (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    scores = (np.abs(other - base) * kl).ravel()
    ordered = np.sort(scores)
    lower_median = ordered[(ordered.size - 1) // 2]
    n = ordered.size  # quartiles at the sorted index floor(q (n - 1)), no interpolation (MergeKit)
    iqr = ordered[int(0.75 * (n - 1))] - ordered[int(0.25 * (n - 1))]
    take = (scores >= lower_median + 1.5 * iqr).reshape(base.shape)
    return np.where(take, other, base)


def ram(base, xs, epsilon=1e-5, r=None, alpha=None):
    """RAM; with ``r``/``alpha`` given, RAM+ tensor-local scales on unique entries."""
    tvs = [(x - base).ravel() for x in xs]
    n, size = len(xs), base.size
    active = [[abs(tv[e]) > epsilon for e in range(size)] for tv in tvs]
    count = [sum(active[i][e] for i in range(n)) for e in range(size)]
    lam = [1.0] * n
    if r is not None:
        for i in range(n):
            shared = sum(1 for e in range(size) if active[i][e] and count[e] > 1)
            unique = sum(1 for e in range(size) if active[i][e] and count[e] == 1)
            rho = shared / max(unique, epsilon)
            lam[i] = 1 + r * min(max(rho, 0.0), alpha)
    out = base.copy().ravel()
    for e in range(size):
        if count[e] == 1:
            i = next(i for i in range(n) if active[i][e])
            out[e] += lam[i] * tvs[i][e]
        elif count[e] > 1:
            out[e] += sum(tvs[i][e] for i in range(n) if active[i][e]) / count[e]
    return out.reshape(base.shape)
