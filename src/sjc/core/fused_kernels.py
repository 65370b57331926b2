"""The numba kernels of the fused CPU renderer (`fused.py` drives them): a transposing copy of the grid, the
front-to-back march of a chunk of rays, and the back-to-front scatter of their gradients into a slab of the
grid. Plain Python functions, compiled by numba when it is installed (`numba` is None otherwise).
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None

PREFETCH_AHEAD = 8  # samples: the grid rows of the sample this far ahead are fetched early
SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: the identity above it
RECORD = 7  # floats per evaluated sample before its C features: fx, fy, fz, dsig_draw, dsig_dscale, w, T_next


def _transpose_py(source, table, first, last):
    """table[i, c] = source[c, i] for i in [first, last)."""
    channels = source.shape[0]
    for i in range(first, last):
        for c in range(channels):
            table[i, c] = source[c, i]


def _march_py(
    origins, dirs, near, far, offsets, table, occupancy, scale, bias,
    n, e, shift, step, threshold, skip, sigmoid, save, first_ray, last_ray, cursor, stop,
    colour, opacity, depth, weights, begin, end, slots, cells, records, planes,
):  # fmt: skip
    """Front-to-back march of rays [first_ray, last_ray) (see the module docstring): writes their outputs
    and, with `save`, the records of their evaluated samples packed in [cursor, stop) (ray r's in
    begin[r]:end[r]), counting them by lowest z plane in `planes`. Returns the cursor after the last."""
    n_slots, channels = offsets.shape[0], table.shape[1]
    n_features = channels - 1
    nn = n * n
    top = n - 1.0
    values = np.zeros(channels)
    acc = np.zeros(max(n_features, 1))
    flat = table.reshape(-1)
    row = channels  # floats per voxel
    for r in range(first_ray, last_ray):
        begin[r] = cursor
        ox, oy, oz = origins[r, 0], origins[r, 1], origins[r, 2]
        dx, dy, dz = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        t_near, t_far = near[r], far[r]
        optical = 0.0  # optical depth in front of the current sample
        trans = 1.0  # transmittance in front of it
        acc_opacity = 0.0
        acc_depth = 0.0
        for c in range(n_features):
            acc[c] = 0.0
        for k in range(n_slots):
            t = t_near + offsets[k]
            if not t < t_far or optical >= threshold:
                break
            x = min(max(bias[0] + (ox + dx * t) * scale[0], 0.0), top)  # border padding
            y = min(max(bias[1] + (oy + dy * t) * scale[1], 0.0), top)
            z = min(max(bias[2] + (oz + dz * t) * scale[2], 0.0), top)
            ix, iy, iz = min(int(x), n - 2), min(int(y), n - 2), min(int(z), n - 2)  # x >= 0: int() floors
            base = (iz * n + iy) * n + ix
            if skip and not occupancy[base]:
                continue
            if k + PREFETCH_AHEAD < n_slots:  # the 4 rows of 2 voxels of the cell PREFETCH_AHEAD samples on
                ta = t_near + offsets[k + PREFETCH_AHEAD]
                xa = min(max(bias[0] + (ox + dx * ta) * scale[0], 0.0), top)
                ya = min(max(bias[1] + (oy + dy * ta) * scale[1], 0.0), top)
                za = min(max(bias[2] + (oz + dz * ta) * scale[2], 0.0), top)
                ahead = (min(int(za), n - 2) * n + min(int(ya), n - 2)) * n + min(int(xa), n - 2)
                if not skip or occupancy[ahead]:  # not for samples that will be skipped
                    for corner in (ahead, ahead + n, ahead + nn, ahead + nn + n):
                        _prefetch(flat, corner * row, 0)
                        _prefetch(flat, corner * row + 2 * row - 1, 0)
            fx, fy, fz = x - ix, y - iy, z - iz
            gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
            w0, w1, w2, w3 = gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx
            w4, w5, w6, w7 = fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx
            b1, b2, b3 = base + n, base + nn, base + nn + n
            if channels == 5:  # SJC's latents (C = 4): the same loop with a constant count, compiled tighter
                for c in range(5):
                    values[c] = (
                        w0 * table[base, c] + w1 * table[base + 1, c] + w2 * table[b1, c] + w3 * table[b1 + 1, c]
                        + w4 * table[b2, c] + w5 * table[b2 + 1, c] + w6 * table[b3, c] + w7 * table[b3 + 1, c]
                    )  # fmt: skip
            else:
                for c in range(channels):
                    values[c] = (
                        w0 * table[base, c] + w1 * table[base + 1, c] + w2 * table[b1, c] + w3 * table[b1 + 1, c]
                        + w4 * table[b2, c] + w5 * table[b2 + 1, c] + w6 * table[b3, c] + w7 * table[b3 + 1, c]
                    )  # fmt: skip
            raw = values[0]
            pre = raw * e + shift
            if pre > SOFTPLUS_THRESHOLD:
                sigma, slope = pre, 1.0
            else:
                z_exp = math.exp(pre)
                sigma, slope = math.log1p(z_exp), z_exp / (z_exp + 1.0)
            tau = sigma * step
            if tau < 1e-4:  # alpha = 1 - exp(-tau) by its series, where the subtraction would lose digits
                alpha = tau * (1.0 - tau * (0.5 - tau * (1.0 / 6.0 - tau * (1.0 / 24.0))))
                keep = 1.0 - alpha
            else:  # one exp (cheaper than expm1): relative error of alpha below 1e-11 in float64
                keep = math.exp(-tau)
                alpha = 1.0 - keep
            w = trans * alpha
            optical += tau
            trans *= keep
            acc_opacity += w
            acc_depth += w * t
            weights[r, k] = w
            for c in range(n_features):
                f = values[c + 1]
                if sigmoid:
                    f = 2.0 / (1.0 + math.exp(-f)) - 1.0
                    values[c + 1] = f
                acc[c] += w * f
            if save:
                if cursor >= stop:
                    raise RuntimeError("render_fused: more samples than room for their records")
                slots[cursor] = k
                cells[cursor] = base
                planes[iz] += 1
                rec = records[cursor]
                rec[0] = fx
                rec[1] = fy
                rec[2] = fz
                rec[3] = slope * e
                rec[4] = slope * e * raw
                rec[5] = w
                rec[6] = trans
                for c in range(n_features):
                    rec[RECORD + c] = values[c + 1]
                cursor += 1
        for c in range(n_features):
            colour[r, c] = acc[c]
        opacity[r] = acc_opacity
        depth[r] = acc_depth
        end[r] = cursor
    return cursor


def _scatter_py(
    near, offsets, begin, end, slots, cells, records,
    g_colour, g_opacity, g_depth, g_weights, n, step, sigmoid, z_first, z_last, grad,
):  # fmt: skip
    """Back-to-front walk of every ray's records: adds dL/draw into `grad` [1 + C, n^3] at the corners in
    z planes [z_first, z_last) (every channel) and returns dL/dd_scale."""
    n_rays, n_features = begin.shape[0], g_colour.shape[1]
    nn = n * n
    low, high = z_first * nn, z_last * nn  # a cell's lowest corner `base` is in the slab iff low <= base < high
    grads = np.zeros(n_features + 1)
    grad_scale = 0.0
    for r in range(n_rays):
        first, last = begin[r], end[r]
        if first == last:
            continue
        g_o, g_d, t_near = g_opacity[r], g_depth[r], near[r]
        behind = 0.0  # sum over the samples behind of w_k dL/dw_k
        for i in range(last - 1, first - 1, -1):
            k = slots[i]
            rec = records[i]
            w = rec[5]
            g_w = g_weights[r, k] + g_o + g_d * (t_near + offsets[k])
            for c in range(n_features):
                g_w += g_colour[r, c] * rec[RECORD + c]
            g_sigma = (g_w * rec[6] - behind) * step
            behind += g_w * w
            grad_scale += g_sigma * rec[4]
            if i - PREFETCH_AHEAD >= first:  # the gradient rows of the sample PREFETCH_AHEAD records on
                ahead = cells[i - PREFETCH_AHEAD]
                for c in range(n_features + 1):
                    for corner in (ahead, ahead + n, ahead + nn, ahead + nn + n):
                        _prefetch(grad[c], corner, 1)
            base = cells[i]
            lower = low <= base < high
            upper = low <= base + nn < high
            if not (lower or upper):
                continue
            grads[0] = g_sigma * rec[3]
            for c in range(n_features):
                g = g_colour[r, c] * w
                if sigmoid:
                    f = rec[RECORD + c]
                    g *= 0.5 * (1.0 - f * f)  # d(2 sigmoid - 1) = 2 s (1 - s) = (1 - f^2) / 2
                grads[c + 1] = g
            fx, fy, fz = rec[0], rec[1], rec[2]
            gx, gy = 1.0 - fx, 1.0 - fy
            b1 = base + n
            if lower:
                gz = 1.0 - fz
                w0, w1, w2, w3 = gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx
                for c in range(n_features + 1):
                    g = grads[c]
                    row = grad[c]
                    row[base] += w0 * g
                    row[base + 1] += w1 * g
                    row[b1] += w2 * g
                    row[b1 + 1] += w3 * g
            if upper:
                w4, w5, w6, w7 = fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx
                b2, b3 = base + nn, b1 + nn
                for c in range(n_features + 1):
                    g = grads[c]
                    row = grad[c]
                    row[b2] += w4 * g
                    row[b2 + 1] += w5 * g
                    row[b3] += w6 * g
                    row[b3 + 1] += w7 * g
    return grad_scale


def _prefetch_py(array, index, write):
    """A cache hint that array[index] (1-D) will soon be read (write=0) or written (write=1)."""


if numba is not None:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def _prefetch(typingctx, array, index, write):
        if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
            return None
        if not isinstance(write, types.IntegerLiteral):
            return None

        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            handle = context.make_array(array_type)(context, builder, args[0])
            pointer = cgutils.get_item_pointer(context, builder, array_type, handle, [args[1]], wraparound=False)
            i32 = ir.IntType(32)
            if getattr(pointer.type, "is_opaque", False):
                name = "llvm.prefetch.p0"
            else:  # typed pointers (older LLVM)
                pointer, name = builder.bitcast(pointer, ir.IntType(8).as_pointer()), "llvm.prefetch.p0i8"
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [pointer.type] + [i32] * 3), name
            )
            builder.call(hint, [pointer, i32(write.literal_value), i32(3), i32(1)])  # locality 3, data cache
            return context.get_dummy_value()

        return types.void(array, index, write), codegen

    _jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    _transpose, _march, _scatter = _jit(_transpose_py), _jit(_march_py), _jit(_scatter_py)
else:  # pragma: no cover
    _prefetch = _prefetch_py
    _transpose, _march, _scatter = _transpose_py, _march_py, _scatter_py
