"""Values and pullbacks as one compiled program per function: an eager ``jax.vjp`` compiles a
small program for every operation it runs (dozens per layer test), which costs more than the
layer's own program."""

import jax


def value_and_vjp(fn, primals: tuple, cotangent):
    """``(fn(*primals), vjp(cotangent))`` where ``_, vjp = jax.vjp(fn, *primals)``: the tuple of
    the primals' cotangents, computed by one jitted program."""

    @jax.jit
    def run(primals, cotangent):
        out, vjp = jax.vjp(fn, *primals)
        return out, vjp(cotangent)

    return run(primals, cotangent)
