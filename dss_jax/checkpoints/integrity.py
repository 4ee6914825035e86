"""Whether a checkpoint reads back as it was saved: a checksum of every array, recorded at
each save and compared at each load, and a refusal of NaN and infinity.

A checksum is two 32-bit sums of the array's words, each mixed with its flat index first
(murmur3's finaliser), computed by XLA where the arrays are. Integer sums do not depend on
the order of addition, so neither does a checksum on the sharding or the number of
processes: each device sums its own shards (nothing is gathered), and a run saved on 8
processes verifies on one. It detects damage (a random change escapes with odds of about
2**-64 per array), not tampering: whoever rewrites a checkpoint can rewrite its checksums.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dss_jax.checkpoints.locate import CheckpointError

ALGORITHM = "fmix32-index-sum-2x32/1"
_M1, _M2, _GOLDEN, _SEED2 = (np.uint32(c) for c in (0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9, 0x27D4EB2F))


class DamagedCheckpointError(CheckpointError):
    """An array does not read back as it was saved, or holds NaN or infinity."""


def _fmix(x):  # murmur3's 32-bit finaliser: a bijection, so one changed word changes the sum
    x = x ^ (x >> 16)
    x = x * _M1
    x = x ^ (x >> 13)
    x = x * _M2
    return x ^ (x >> 16)


def _words(x) -> jax.Array:
    """The array's bits as uint32, one per element."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:  # [..., 2] halves; the high one mixed, so that swapping halves shows
        halves = jax.lax.bitcast_convert_type(x, jnp.uint32)
        return halves[..., 0] ^ _fmix(halves[..., 1] + _SEED2)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _summarise(x) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum 1, sum 2, how many values are not finite): three replicated scalars."""
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)  # the flat index, built from iotas: no resharding
    stride = 1
    for d in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, d) * np.uint32(stride % 2**32)
        stride *= words.shape[d]
    h = _fmix(words ^ (index * _GOLDEN))
    nonfinite = jnp.sum(~jnp.isfinite(x), dtype=jnp.uint32) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.uint32(0)
    return jnp.sum(h, dtype=jnp.uint32), jnp.sum(_fmix(h ^ _SEED2), dtype=jnp.uint32), nonfinite


def path_name(keys) -> str:
    """ "params/encoder/layers_0/..." for a key path of a tree (dict keys, fields, indices)."""
    return "/".join(str(next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)), k)) for k in keys)


def scan(tree: Any, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, int, int]]:
    """{path: (checksum as 16 hex digits, values not finite, size)} of every array of `tree`,
    in the tree's order; paths start with `prefix`. Every process of a run calls it on the
    same global arrays (each call is a computation over all their devices)."""
    out = {}
    jax.block_until_ready(tree)
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        # One array at a time: XLA:CPU's collectives can deadlock with many sharded programs in flight.
        a, b, nonfinite = (int(np.asarray(s)) for s in _summarise(leaf))
        out[path_name(tuple(prefix) + tuple(keys))] = (f"{a:08x}{b:08x}", nonfinite, int(np.size(leaf)))
    return out


def record(scans: Mapping[str, Mapping[str, tuple[str, int, int]]]) -> dict:
    """The checksums to store beside saved orbax items, from their `scan`s ({item name:
    scan}): {"algorithm", "items": {item name: {path: 16 hex digits}}}."""
    return {
        "algorithm": ALGORITHM,
        "items": {name: {p: c for p, (c, _, _) in sc.items()} for name, sc in scans.items()},
    }


def check_finite(scanned: Mapping[str, tuple[str, int, int]], where: str, cause: str, advice: str) -> None:
    """DamagedCheckpointError naming `where` and the first array of a `scan` that holds
    NaN or infinity, with its `cause` and `advice`."""
    bad = [(p, n, size) for p, (_, n, size) in scanned.items() if n]
    if bad:
        path, n, size = bad[0]
        more = f"; {len(bad) - 1} more arrays hold some too" if len(bad) > 1 else ""
        raise DamagedCheckpointError(
            f"{where} holds NaN or infinity: {n} of the {size} values of {_what(path)} {path}{more}; {cause}: {advice}"
        )


def verify(
    tree: Any,
    recorded: Optional[Mapping],
    item: str,
    where: str,
    recorded_in: str,
    advice: str,
    prefix: tuple[str, ...] = (),
) -> None:
    """Raises DamagedCheckpointError naming `where` and the first array of the orbax item
    `item` whose checksum differs from `recorded` (what `record` stored, in the file
    `recorded_in`; None for a checkpoint written before checksums were), then the first
    one that holds NaN or infinity; `advice` (what to do) ends the message. `tree` may be
    a subtree of the item, at the path `prefix`."""
    found = scan(tree, prefix)
    arrays = None
    if recorded is not None:
        items = recorded.get("items") if isinstance(recorded, Mapping) else None
        if (
            isinstance(items, Mapping)
            and recorded.get("algorithm") == ALGORITHM
            and isinstance(items.get(item), Mapping)
        ):
            arrays = items[item]
        else:
            logging.warning(
                "%s: the checksums in %s are not of this version of dss_jax (%r); not verified",
                where,
                recorded_in,
                recorded.get("algorithm") if isinstance(recorded, Mapping) else recorded,
            )
    if arrays is not None:
        differ = [p for p, (c, _, _) in found.items() if arrays.get(p) != c]
        if differ:
            more = f"; {len(differ) - 1} more arrays differ too" if len(differ) > 1 else ""
            what = "was not recorded" if differ[0] not in arrays else "differs from the one recorded"
            raise DamagedCheckpointError(
                f"{where} is damaged: the checksum of {_what(differ[0])} {differ[0]} {what} when it was saved "
                f"({recorded_in}){more}: {advice}"
            )
    cause = "it was saved so (its run diverged)" if arrays is not None else "it is damaged, or its run diverged"
    check_finite(found, where, cause, advice)


def _what(path: str) -> str:
    return "the optimizer state" if path.startswith("opt_state") else "the step" if path == "step" else "the parameter"
