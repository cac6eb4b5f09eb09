"""Vector shuffles numba does not write by itself: `transpose4(src, s0, s_step, dst, d0,
d_step)` moves a 4 x 4 tile of float64 from rows of `src` to columns of `dst`.

Where a kernel turns rows into lanes (balance_block_z puts 16 meters' differences side by
side so that each SIMD lane is a meter), a scalar loop doing it leaves the compiler a
scatter (one store per value, 128 bytes apart). A 4 x 4 tile moved as four vector loads,
eight shuffles and four vector stores does the same in about a third of the
instructions; the values are moved, never computed, so results are the same bit for bit.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_F64X4 = ir.VectorType(ir.DoubleType(), 4)
_I32 = ir.IntType(32)


def _mask(*lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(lanes)), [ir.Constant(_I32, i) for i in lanes])


def _transpose4(typingctx: object, src: types.Type, s0: types.Type, s_step: types.Type, dst: types.Type,
                d0: types.Type, d_step: types.Type) -> tuple | None:
    """Typing and code of `transpose4`: dst[d0 + c * d_step + r] = src[s0 + r * s_step + c]
    for r, c in 0..3 (1-D C-contiguous float64 arrays; no bounds check: the caller keeps
    every index inside both arrays)."""
    f64_1d = (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
              and src.dtype == dst.dtype == types.float64)
    if not (f64_1d and all(isinstance(t, types.Integer) for t in (s0, s_step, d0, d_step))):
        return None

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: list) -> ir.Value:
        a_src = context.make_array(sig.args[0])(context, builder, args[0])
        a_dst = context.make_array(sig.args[3])(context, builder, args[3])
        i64 = ir.IntType(64)
        s0_, s_step_, d0_, d_step_ = (builder.sext(v, i64) if v.type.width < 64 else v  # type: ignore[attr-defined]
                                      for v in (args[1], args[2], args[4], args[5]))

        def at(array: Any, start: ir.Value, step: ir.Value, k: int) -> ir.Value:
            index = builder.add(start, builder.mul(step, ir.Constant(i64, k)))
            return builder.bitcast(builder.gep(array.data, [index]), _F64X4.as_pointer())

        rows = [builder.load(at(a_src, s0_, s_step_, r), align=8) for r in range(4)]
        t0 = builder.shuffle_vector(rows[0], rows[1], _mask(0, 4, 2, 6))
        t1 = builder.shuffle_vector(rows[0], rows[1], _mask(1, 5, 3, 7))
        t2 = builder.shuffle_vector(rows[2], rows[3], _mask(0, 4, 2, 6))
        t3 = builder.shuffle_vector(rows[2], rows[3], _mask(1, 5, 3, 7))
        cols = [builder.shuffle_vector(t0, t2, _mask(0, 1, 4, 5)), builder.shuffle_vector(t1, t3, _mask(0, 1, 4, 5)),
                builder.shuffle_vector(t0, t2, _mask(2, 3, 6, 7)), builder.shuffle_vector(t1, t3, _mask(2, 3, 6, 7))]
        for c in range(4):
            builder.store(cols[c], at(a_dst, d0_, d_step_, c), align=8)
        return context.get_dummy_value()

    return types.void(src, s0, s_step, dst, d0, d_step), codegen


#: transpose4(src, s0, s_step, dst, d0, d_step): dst[d0 + c * d_step + r] = src[s0 + r * s_step + c], r, c < 4.
transpose4: Any = intrinsic(_transpose4)

__all__ = ["transpose4"]
