"""Compiled (numba) map from the minimiser's scaled variables to crystal coordinates, and its chain rule.

The same map as :meth:`~sim_backends.csp.minimise.CrystalVariables.decode` followed by
:func:`~sim_backends.csp.trials.molecule_coords`, for a batch of structures of one space group:

* cell lengths ``exp(x / L)``; free angles ``pi/2 + (pi/3) tanh(x / (L pi/3))``; the cell
  matrix of :func:`~sim_backends.csp.trials.cell_matrix` (a along x, b in the xy plane, with
  the same clamp of the z component of c);
* fractional centre ``x / L`` of the reference molecule; orientation ``R = exp([w]x) R0``
  with ``w = x / r_s`` (Rodrigues, series below |w| = 1e-4);
* images: fractional positions ``W_o f + t_o`` wrapped by ``-floor(W_o c + t_o)``.

:func:`backward` applies the chain rule to dE/dcell and dE/dcoords (from the pair kernel) and
returns dE/dx. Written per structure with scalar loops so that a call costs microseconds, not
the ~100 small numpy operations (~0.5 ms per call, whatever the batch size) of the vectorised
version it replaces; in the staged CSP protocol most calls hold only the few structures that
have not converged yet, so that fixed cost was a third of the minimisation time.

numba is imported on first use; compiled code is cached like the pair kernel's.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

_HALF_RANGE = math.pi / 3


def _forward(x, r0, free, len_scale, ang_scale, rot_scale, ops_w, ops_t, body):  # pragma: no cover - numba
    """x (B, V) -> cell (B,3,3), coords (B,Z,n,3), volume (B,) and the intermediates of :func:`_backward`."""
    n_b = x.shape[0]
    n_op = ops_w.shape[0]
    n_at = body.shape[0]
    n_free = free.shape[0]
    cell = np.zeros((n_b, 3, 3))
    inv = np.zeros((n_b, 3, 3))
    coords = np.empty((n_b, n_op, n_at, 3))
    frac_img = np.empty((n_b, n_op, n_at, 3))
    cart = np.empty((n_b, n_at, 3))
    rot = np.empty((3, 3))
    vol = np.empty(n_b)
    # per structure: lengths(3) angles(3) centre(3) w(3) t2 t a b clamped tanh(free...)
    aux = np.zeros((n_b, 17 + n_free))
    kmat = np.zeros((3, 3))
    lengths = np.empty(3)
    angles = np.empty(3)
    centre = np.empty(3)
    w = np.empty(3)
    rod = np.empty((3, 3))
    f = np.empty(3)
    cen_frac_img = np.empty(3)
    for b in range(n_b):
        for k in range(3):
            lengths[k] = math.exp(x[b, k] / len_scale)
            angles[k] = math.pi / 2
        for i in range(n_free):
            th = math.tanh(x[b, 3 + i] / ang_scale)
            angles[free[i]] = math.pi / 2 + _HALF_RANGE * th
            aux[b, 17 + i] = th
        k0 = 3 + n_free
        for k in range(3):
            centre[k] = x[b, k0 + k] / len_scale
            w[k] = x[b, k0 + 3 + k] / rot_scale
        t2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2]
        t = math.sqrt(t2 + 1e-30)
        if t < 1e-4:
            a_rod = 1.0 - t2 / 6.0
            b_rod = 0.5 - t2 / 24.0
        else:
            a_rod = math.sin(t) / t
            b_rod = 2.0 * math.sin(t / 2.0) ** 2 / (t2 + 1e-30)
        kmat[0, 0], kmat[0, 1], kmat[0, 2] = 0.0, -w[2], w[1]
        kmat[1, 0], kmat[1, 1], kmat[1, 2] = w[2], 0.0, -w[0]
        kmat[2, 0], kmat[2, 1], kmat[2, 2] = -w[1], w[0], 0.0
        for i in range(3):
            for j in range(3):
                kk = kmat[i, 0] * kmat[0, j] + kmat[i, 1] * kmat[1, j] + kmat[i, 2] * kmat[2, j]
                rod[i, j] = (1.0 if i == j else 0.0) + a_rod * kmat[i, j] + b_rod * kk
        for i in range(3):
            for j in range(3):
                rot[i, j] = rod[i, 0] * r0[b, 0, j] + rod[i, 1] * r0[b, 1, j] + rod[i, 2] * r0[b, 2, j]
        la, lb, lc = lengths[0], lengths[1], lengths[2]
        ca, cb, cg = math.cos(angles[0]), math.cos(angles[1]), math.cos(angles[2])
        sg = math.sin(angles[2])
        cx = lc * cb
        cy = lc * (ca - cb * cg) / sg
        cz2 = lc * lc - cx * cx - cy * cy
        clamped = cz2 < 1e-8
        cz = math.sqrt(max(cz2, 1e-8))
        h = cell[b]
        h[0, 0] = la
        h[1, 0], h[1, 1] = lb * cg, lb * sg
        h[2, 0], h[2, 1], h[2, 2] = cx, cy, cz
        vol[b] = la * lb * sg * cz
        # inverse of the lower-triangular cell
        inv[b, 0, 0] = 1.0 / la
        inv[b, 1, 1] = 1.0 / h[1, 1]
        inv[b, 2, 2] = 1.0 / cz
        inv[b, 1, 0] = -h[1, 0] / (la * h[1, 1])
        inv[b, 2, 1] = -h[2, 1] / (h[1, 1] * cz)
        inv[b, 2, 0] = (h[1, 0] * h[2, 1] - h[1, 1] * h[2, 0]) / (la * h[1, 1] * cz)
        for k in range(3):
            aux[b, k] = lengths[k]
            aux[b, 3 + k] = angles[k]
            aux[b, 6 + k] = centre[k]
            aux[b, 9 + k] = w[k]
        aux[b, 12], aux[b, 13], aux[b, 14], aux[b, 15] = t2, t, a_rod, b_rod
        aux[b, 16] = 1.0 if clamped else 0.0
        # coordinates
        for n in range(n_at):
            for d in range(3):
                cart[b, n, d] = (centre[0] * h[0, d] + centre[1] * h[1, d] + centre[2] * h[2, d]
                                 + body[n, 0] * rot[d, 0] + body[n, 1] * rot[d, 1] + body[n, 2] * rot[d, 2])
        for o in range(n_op):
            for d in range(3):
                cen_frac_img[d] = (centre[0] * ops_w[o, d, 0] + centre[1] * ops_w[o, d, 1]
                                   + centre[2] * ops_w[o, d, 2] + ops_t[o, d])
            for n in range(n_at):
                for e in range(3):
                    f[e] = cart[b, n, 0] * inv[b, 0, e] + cart[b, n, 1] * inv[b, 1, e] + cart[b, n, 2] * inv[b, 2, e]
                for d in range(3):
                    frac_img[b, o, n, d] = (f[0] * ops_w[o, d, 0] + f[1] * ops_w[o, d, 1] + f[2] * ops_w[o, d, 2]
                                            + ops_t[o, d] - math.floor(cen_frac_img[d]))
                for d in range(3):
                    coords[b, o, n, d] = (frac_img[b, o, n, 0] * h[0, d] + frac_img[b, o, n, 1] * h[1, d]
                                          + frac_img[b, o, n, 2] * h[2, d])
    return cell, inv, coords, frac_img, cart, vol, aux


def _backward(g_cell_in, g_xyz, cell, inv, frac_img, cart, vol, aux, r0, free, len_scale, ang_scale,
              rot_scale, ops_w, body, n_var):  # pragma: no cover - numba
    """dE/dcell (B,3,3) and dE/dcoords (B,Z,n,3) -> dE/dx (B, V) (the chain rule of :func:`_forward`)."""
    n_b = g_xyz.shape[0]
    n_op, n_at = g_xyz.shape[1], g_xyz.shape[2]
    n_free = free.shape[0]
    gx = np.zeros((n_b, n_var))
    g_cell = np.empty((3, 3))
    g_frac = np.empty((n_at, 3))
    g_cart = np.empty((n_at, 3))
    g_inv = np.empty((3, 3))
    tmp = np.empty((3, 3))
    g_rot = np.empty((3, 3))
    g_rod = np.empty((3, 3))
    kmat = np.empty((3, 3))
    kk = np.empty((3, 3))
    tmp3 = np.empty(3)
    gs = np.empty(3)
    for b in range(n_b):
        h = cell[b]
        hi = inv[b]
        for i in range(3):
            for j in range(3):
                g_cell[i, j] = g_cell_in[b, i, j]
        for k in range(3):
            gs[k] = 0.0
        # coords = frac_img @ H
        for o in range(n_op):
            for n in range(n_at):
                for e in range(3):
                    for d in range(3):
                        g_cell[e, d] += frac_img[b, o, n, e] * g_xyz[b, o, n, d]
        for n in range(n_at):
            for f in range(3):
                g_frac[n, f] = 0.0
            for o in range(n_op):
                for e in range(3):
                    tmp3[e] = g_xyz[b, o, n, 0] * h[e, 0] + g_xyz[b, o, n, 1] * h[e, 1] + g_xyz[b, o, n, 2] * h[e, 2]
                for f in range(3):
                    g_frac[n, f] += tmp3[0] * ops_w[o, 0, f] + tmp3[1] * ops_w[o, 1, f] + tmp3[2] * ops_w[o, 2, f]
        # frac = cart @ H^-1: dE/dH^-1 = cart^T g_frac; dE/dH -= H^-T (dE/dH^-1) H^-T
        for e in range(3):
            for f in range(3):
                acc = 0.0
                for n in range(n_at):
                    acc += cart[b, n, e] * g_frac[n, f]
                g_inv[e, f] = acc
        for i in range(3):
            for f in range(3):
                tmp[i, f] = hi[0, i] * g_inv[0, f] + hi[1, i] * g_inv[1, f] + hi[2, i] * g_inv[2, f]
        for i in range(3):
            for j in range(3):
                g_cell[i, j] -= tmp[i, 0] * hi[j, 0] + tmp[i, 1] * hi[j, 1] + tmp[i, 2] * hi[j, 2]
        for n in range(n_at):
            for e in range(3):
                g_cart[n, e] = g_frac[n, 0] * hi[e, 0] + g_frac[n, 1] * hi[e, 1] + g_frac[n, 2] * hi[e, 2]
        # cart = c H + body R^T
        for n in range(n_at):
            for d in range(3):
                gs[d] += g_cart[n, d]
        centre = aux[b, 6:9]
        for e in range(3):
            for d in range(3):
                g_cell[e, d] += centre[e] * gs[d]
        k0 = 3 + n_free
        for e in range(3):
            gx[b, k0 + e] = (h[e, 0] * gs[0] + h[e, 1] * gs[1] + h[e, 2] * gs[2]) / len_scale
        for d in range(3):
            for e in range(3):
                acc = 0.0
                for n in range(n_at):
                    acc += g_cart[n, d] * body[n, e]
                g_rot[d, e] = acc
        for i in range(3):
            for j in range(3):
                g_rod[i, j] = g_rot[i, 0] * r0[b, j, 0] + g_rot[i, 1] * r0[b, j, 1] + g_rot[i, 2] * r0[b, j, 2]
        # Rodrigues: dE/dw = 2 w (a' <G,K> + b' <G,K^2>) + a vee(G) + b vee(G K^T + K^T G)
        w0, w1, w2 = aux[b, 9], aux[b, 10], aux[b, 11]
        t2, t, a_rod, b_rod = aux[b, 12], aux[b, 13], aux[b, 14], aux[b, 15]
        kmat[0, 0], kmat[0, 1], kmat[0, 2] = 0.0, -w2, w1
        kmat[1, 0], kmat[1, 1], kmat[1, 2] = w2, 0.0, -w0
        kmat[2, 0], kmat[2, 1], kmat[2, 2] = -w1, w0, 0.0
        for i in range(3):
            for j in range(3):
                kk[i, j] = kmat[i, 0] * kmat[0, j] + kmat[i, 1] * kmat[1, j] + kmat[i, 2] * kmat[2, j]
        if t < 1e-4:
            da, db = -1.0 / 6.0, -1.0 / 24.0
        elif t < 1e-2:
            da, db = -1.0 / 6.0 + t2 / 60.0, -1.0 / 24.0 + t2 / 360.0
        else:
            da = (t * math.cos(t) - math.sin(t)) / (2.0 * t ** 3)
            db = (t * math.sin(t) - 2.0 * (1.0 - math.cos(t))) / (2.0 * t ** 4)
        inner_k = 0.0
        inner_kk = 0.0
        for i in range(3):
            for j in range(3):
                inner_k += g_rod[i, j] * kmat[i, j]
                inner_kk += g_rod[i, j] * kk[i, j]
        # M = G K^T + K^T G
        for i in range(3):
            for j in range(3):
                tmp[i, j] = (g_rod[i, 0] * kmat[j, 0] + g_rod[i, 1] * kmat[j, 1] + g_rod[i, 2] * kmat[j, 2]
                             + kmat[0, i] * g_rod[0, j] + kmat[1, i] * g_rod[1, j] + kmat[2, i] * g_rod[2, j])
        common = da * inner_k + db * inner_kk
        wv = (w0, w1, w2)
        vee_g = (g_rod[2, 1] - g_rod[1, 2], g_rod[0, 2] - g_rod[2, 0], g_rod[1, 0] - g_rod[0, 1])
        vee_m = (tmp[2, 1] - tmp[1, 2], tmp[0, 2] - tmp[2, 0], tmp[1, 0] - tmp[0, 1])
        for k in range(3):
            gx[b, k0 + 3 + k] = (2.0 * wv[k] * common + a_rod * vee_g[k] + b_rod * vee_m[k]) / rot_scale
        # cell_matrix backward
        lb, lc = aux[b, 1], aux[b, 2]
        ca, cb, cg = math.cos(aux[b, 3]), math.cos(aux[b, 4]), math.cos(aux[b, 5])
        sa, sb, sg = math.sin(aux[b, 3]), math.sin(aux[b, 4]), math.sin(aux[b, 5])
        cz = h[2, 2]
        if aux[b, 16] != 0.0:
            gcx, gcy, gcc = g_cell[2, 0], g_cell[2, 1], 0.0
        else:
            gcx = g_cell[2, 0] - g_cell[2, 2] * h[2, 0] / cz
            gcy = g_cell[2, 1] - g_cell[2, 2] * h[2, 1] / cz
            gcc = g_cell[2, 2] * lc / cz
        g_len0 = g_cell[0, 0]
        g_len1 = g_cell[1, 0] * cg + g_cell[1, 1] * sg
        g_len2 = gcc + gcx * cb + gcy * (ca - cb * cg) / sg
        gx[b, 0] = g_len0 * aux[b, 0] / len_scale
        gx[b, 1] = g_len1 * aux[b, 1] / len_scale
        gx[b, 2] = g_len2 * aux[b, 2] / len_scale
        if n_free:
            g_ang = (-gcy * lc * sa / sg,
                     -gcx * lc * sb + gcy * lc * sb * cg / sg,
                     -g_cell[1, 0] * lb * sg + g_cell[1, 1] * lb * cg + gcy * lc * (cb - ca * cg) / sg ** 2)
            for i in range(n_free):
                th = aux[b, 17 + i]
                gx[b, 3 + i] = g_ang[free[i]] * (_HALF_RANGE / ang_scale) * (1.0 - th * th)
        for k in range(n_var):
            if not math.isfinite(gx[b, k]):
                gx[b, k] = 0.0
    return gx


@functools.lru_cache(maxsize=1)
def compiled() -> tuple[Callable, Callable]:
    """The numba-compiled (forward, backward) pair (compiled or loaded from the disk cache once)."""
    from sim_backends.csp.pairkernel import njit_cached

    return njit_cached(_forward), njit_cached(_backward)


def forward(x: np.ndarray, r0: np.ndarray, free: np.ndarray, len_scale: float, ang_scale: float,
            rot_scale: float, ops_w: np.ndarray, ops_t: np.ndarray, body: np.ndarray) -> tuple:
    """Cells, coordinates and the intermediates :func:`backward` needs, for (B, V) variables.

    Returns:
        ``(cell (B,3,3), inv_cell, coords (B,Z,n,3), frac_img, cart, vol (B,), aux)``.
    """
    fwd, _ = compiled()
    return fwd(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(r0, dtype=np.float64),
               np.ascontiguousarray(free, dtype=np.int64), float(len_scale), float(ang_scale), float(rot_scale),
               ops_w, ops_t, body)


def backward(g_cell: np.ndarray, g_xyz: np.ndarray, state: tuple, r0: np.ndarray, free: np.ndarray,
             len_scale: float, ang_scale: float, rot_scale: float, ops_w: np.ndarray, body: np.ndarray,
             n_var: int) -> np.ndarray:
    """dE/dx (B, V) from dE/dcell and dE/dcoords at the structures of ``state`` (a :func:`forward` result)."""
    _, bwd = compiled()
    cell, inv, _, frac_img, cart, vol, aux = state
    return bwd(np.ascontiguousarray(g_cell, dtype=np.float64), np.ascontiguousarray(g_xyz, dtype=np.float64),
               cell, inv, frac_img, cart, vol, aux, np.ascontiguousarray(r0, dtype=np.float64),
               np.ascontiguousarray(free, dtype=np.int64), float(len_scale), float(ang_scale), float(rot_scale),
               ops_w, body, int(n_var))


def _two_loop_kernel(g, s, y, rho, valid, group_of, n_groups):  # pragma: no cover - numba
    """Batched L-BFGS two-loop recursion (history oldest -> newest), per-group initial scaling.

    ``group_of`` (D,) assigns each variable to a group (all 0: one scalar); the initial inverse
    Hessian of a group is s.y / y.y of the newest valid pair restricted to it (the scalar over
    all variables where that is not positive), 0.1 / max|g| without history.
    """
    n_b, m, d = s.shape
    out = np.empty((n_b, d))
    q = np.empty(d)
    a = np.empty(m)
    sy_g = np.empty(n_groups)
    yy_g = np.empty(n_groups)
    for b in range(n_b):
        for k in range(d):
            q[k] = g[b, k]
        for j in range(m - 1, -1, -1):
            if valid[b, j]:
                acc = 0.0
                for k in range(d):
                    acc += s[b, j, k] * q[k]
                a[j] = rho[b, j] * acc
                for k in range(d):
                    q[k] -= a[j] * y[b, j, k]
            else:
                a[j] = 0.0
        if valid[b, m - 1]:
            sy = 0.0
            yy = 0.0
            for i in range(n_groups):
                sy_g[i] = 0.0
                yy_g[i] = 0.0
            for k in range(d):
                sk, yk = s[b, m - 1, k], y[b, m - 1, k]
                sy += sk * yk
                yy += yk * yk
                sy_g[group_of[k]] += sk * yk
                yy_g[group_of[k]] += yk * yk
            gamma = sy / max(yy, 1e-300)
            for k in range(d):
                i = group_of[k]
                if sy_g[i] > 0.0 and yy_g[i] > 0.0:
                    q[k] *= sy_g[i] / yy_g[i]
                else:
                    q[k] *= gamma
        else:
            gmax = 0.0
            for k in range(d):
                gmax = max(gmax, abs(g[b, k]))
            scale = 0.1 / max(gmax, 1e-12)
            for k in range(d):
                q[k] *= scale
        for j in range(m):
            if valid[b, j]:
                acc = 0.0
                for k in range(d):
                    acc += y[b, j, k] * q[k]
                beta = rho[b, j] * acc
                for k in range(d):
                    q[k] += s[b, j, k] * (a[j] - beta)
        for k in range(d):
            out[b, k] = -q[k]
    return out


@functools.lru_cache(maxsize=1)
def compiled_two_loop() -> Callable:
    """The numba-compiled :func:`_two_loop_kernel`."""
    from sim_backends.csp.pairkernel import njit_cached

    return njit_cached(_two_loop_kernel)
