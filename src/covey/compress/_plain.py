"""Compression as plain data: scheme names, and encoded updates as named arrays.

What crosses a network is JSON plus numeric arrays, never Python objects. A
scheme travels as its spec, a short string :func:`scheme_named` turns back into
the scheme (``"q8"``, ``"topk:0.01"``). An :class:`~covey.compress.Encoded`
update travels as one flat mapping: ``"scheme"``, ``"num_examples"`` and
``"metrics"``, plus one array per part, named ``'["part", weight, key]'``, and
one per array sent besides the update, named ``'["extra", extra, name]'``.
:func:`encoded_from_plain` checks such a mapping against the scheme and the
model's layout before anything is decoded, so a malformed update from a peer
is refused with an error that names what is wrong.
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.aggregate._order import reducer_names
from covey.compress._schemes import Cast, Encoded, Identity, Quantize, Scheme, TopK
from covey.core._weights import WeightsError, WeightsSpec
from covey.strategies import Strategy

SCHEMES: dict[str, Any] = {
    "none": Identity,
    "float16": lambda: Cast("float16"),
    "bfloat16": lambda: Cast("bfloat16"),
    "q8": lambda: Quantize(8),
    "q4": lambda: Quantize(4),
    "topk": TopK,
}

ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "int8": "q8", "int4": "q4"}
"""Other common names of the schemes, accepted by :func:`scheme_named` (case aside)."""

SPECS = "none, float16, bfloat16, q8, q4, topk (1%) or topk:FRACTION (e.g. topk:0.05)"
"""The scheme specs :func:`scheme_named` accepts, as a sentence for error messages."""

_FIELDS = ("scheme", "num_examples", "metrics")

_TOPK_LIKE = re.compile(r"top[-_ ]?k?[-_:= ]*(?P<number>[0-9.]+(?:e-?[0-9]+)?)? *(?P<percent>%)?")
"""What a top-k spec written another way looks like: ``top-k:0.1``, ``topk0.05``, ``topk:10%``."""

_UNCOMPRESSED = ("float32", "fp32", "float64", "fp64", "identity", "uncompressed", "raw", "off")
"""Names of no compression, which :func:`scheme_named` calls ``"none"``."""


def scheme_named(name: str) -> Scheme:
    """The scheme for a spec: none, float16, bfloat16, q8, q4, topk (1%) or topk:FRACTION.

    A scheme's own :attr:`name` is accepted too (``"top0.05"`` for ``TopK(0.05)``),
    and so are the common names ``fp16``, ``half``, ``bf16``, ``int8`` and ``int4``,
    in any case (``"Q8"``, ``"FP16"``).

    Args:
        name: The spec.

    Returns:
        The scheme.

    Raises:
        ValueError: naming the accepted specs, if ``name`` is none of them.

    Example:
        >>> scheme_named("topk:0.05")
        TopK(fraction=0.05)
    """
    if not isinstance(name, str):
        raise ValueError(f"a compression scheme is named by a string, not {type(name).__name__}")
    lower = name.lower() if len(name) < 40 else name
    factory = SCHEMES.get(ALIASES.get(lower, lower))
    if factory is not None:
        scheme: Scheme = factory()
        return scheme
    for prefix in ("topk:", "top"):
        if lower.startswith(prefix) and len(name) < 40:
            try:
                fraction = float(lower[len(prefix) :])
            except ValueError:
                break
            if not 0.0 < fraction <= 1.0:  # NaN fails too
                percent = f" (for {fraction:g}% write topk:{fraction / 100!r})"
                raise ValueError(
                    f"compression {name!r}: the top-k fraction must be in (0, 1]"
                    + (percent if 1.0 < fraction <= 100.0 else "")
                )
            return TopK(fraction)
    hint = _close_spec(lower) if len(name) < 40 else None
    raise ValueError(
        f"unknown compression {name!r:.60}"
        + (f" (did you mean {hint}?)" if hint else "")
        + f"; choose one of {SPECS}"
    )


def _close_spec(lower: str) -> str | None:
    """The spec a mistyped or otherwise written ``lower`` most likely means, or None."""
    bare = "".join(lower.split())
    if bare in _UNCOMPRESSED:
        return "none"
    if bare != lower and ALIASES.get(bare, bare) in SCHEMES:
        return ALIASES.get(bare, bare)
    match = _TOPK_LIKE.fullmatch(bare)
    if match is not None:
        number, percent = match["number"], match["percent"]
        if number is None:
            return None if percent else "topk"
        try:
            fraction = float(number) / (100.0 if percent else 1.0)
        except ValueError:
            return None
        return f"topk:{fraction!r}" if 0.0 < fraction <= 1.0 else None
    close = difflib.get_close_matches(bare, [*SCHEMES, *ALIASES], n=1, cutoff=0.6)
    return ALIASES.get(close[0], close[0]) if close else None


def scheme_spec(scheme: Scheme) -> str | None:
    """The spec :func:`scheme_named` rebuilds ``scheme`` from, or None for a scheme of one's own.

    A subclass of a built-in scheme counts as one's own: it may encode differently.

    Args:
        scheme: Any scheme.

    Example:
        >>> scheme_spec(TopK(0.05)), scheme_spec(Quantize(4))
        ('topk:0.05', 'q4')
    """
    kind = type(scheme)  # a subclass may encode differently: it has no spec
    if kind is TopK:
        return f"topk:{scheme.fraction!r}"  # type: ignore[attr-defined]
    if kind in (Identity, Cast, Quantize):
        return scheme.name
    return None


def _expected_keys(scheme: Scheme, dtype: np.dtype[Any]) -> set[str] | None:
    """The part keys ``scheme`` sends for an array of ``dtype`` (None: a scheme of one's own).

    A subclass of a scheme here is a scheme of one's own (it has no spec): it may
    send other parts, and integer arrays as it likes, for its own ``decode`` to read.
    """
    if scheme_spec(scheme) is None:
        return None
    if dtype.kind != "f" or isinstance(scheme, Identity):
        return {"raw"}
    if isinstance(scheme, Cast):
        return {"f16"} if scheme.dtype == "float16" else {"bf16"}
    if isinstance(scheme, Quantize):
        return {"codes", "lo", "step"}
    return {"index", "value"}


def encoded_to_plain(encoded: Encoded) -> dict[str, Any]:
    """``encoded`` as one flat mapping of JSON values and named arrays (see the module).

    Args:
        encoded: An encoded update.

    Returns:
        ``"scheme"``, ``"num_examples"`` and ``"metrics"``, and each array under a
        JSON key: ``["part", name, key]`` for the parts, ``["extra", extra, name]``
        for the extras. The arrays are not copied.
    """
    out: dict[str, Any] = {
        "scheme": encoded.scheme,
        "num_examples": encoded.num_examples,
        "metrics": dict(encoded.metrics),
    }
    for name, arrays in encoded.parts.items():
        quoted = _quote(name)  # json.dumps(["part", name, key]), a model's hundreds cheaply
        for key, array in arrays.items():
            out[f'["part", {quoted}, {_quote(key)}]'] = array
    for extra, weights in encoded.extras.items():
        quoted = _quote(extra)
        for name, array in weights.items():
            out[f'["extra", {quoted}, {_quote(name)}]'] = array
    return out


def _quote(text: str) -> str:
    """``json.dumps(text)`` of a str (a name's JSON string, escaped to ASCII)."""
    if type(text) is not str:
        return json.dumps(text)  # raises for what has no JSON key, as json.dumps does
    quoted: str = _ascii_json(text)
    return quoted


_ascii_json: Any = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.py_encode_basestring_ascii
)


def plain_nbytes(value: Any) -> int:
    """Bytes of the arrays in a plain encoded update (0 for anything else)."""
    if not isinstance(value, Mapping):
        return 0
    return sum(int(v.nbytes) for v in value.values() if isinstance(v, np.ndarray))


def _array_name(key: Any, longest: int) -> tuple[str, str, str]:
    """``(kind, outer, inner)`` from an array's name in a plain encoded update.

    ``longest`` is the longest name the key may hold (an extra's or the model's).
    """
    # JSON text of at most 6 characters per character (a \uXXXX escape, two for
    # characters beyond the BMP, which are two UTF-16 units), plus the brackets.
    if not isinstance(key, str) or len(key) > 4096 + 12 * longest:
        raise WeightsError(f"encoded update: unexpected field {key!r:.80}")
    plain = _plain_name(key)
    if plain is not None:  # the usual unescaped name, read as json.loads reads it
        return plain
    try:
        parsed = json.loads(key)
    except ValueError:
        raise WeightsError(f"encoded update: unexpected field {key!r:.80}") from None
    if (
        not isinstance(parsed, list)
        or len(parsed) != 3
        or parsed[0] not in ("part", "extra")
        or not all(isinstance(p, str) for p in parsed)
    ):
        raise WeightsError(f"encoded update: unexpected field {key!r:.80}")
    return parsed[0], parsed[1], parsed[2]


#: An array's name of printable ASCII with neither a quote nor a backslash in its strings.
_PLAIN_NAME = re.compile(r'\["(part|extra)", "([ !#-\[\]-~]*)", "([ !#-\[\]-~]*)"\]')


#: The usual names read lately (of at most _KEPT_CHARS characters), as they read: a
#: model's names come back from every client, each round. Emptied when _KEPT are held.
_read: dict[str, tuple[str, str, str]] = {}
_KEPT = 1 << 14
_KEPT_CHARS = 512


def _read_name(key: Any, longest: int, most: int) -> tuple[str, str, str]:
    """``(kind, outer, inner)`` of an array's name no longer than ``most`` (see _array_name).

    The usual unescaped name is read with one regular expression (a model has
    hundreds), or taken as it read before; any other is read by :func:`_array_name`.
    """
    if type(key) is str and len(key) <= most:
        found = _read.get(key)
        if found is not None:
            return found
        match = _PLAIN_NAME.fullmatch(key)
        if match is not None:
            kind, outer, inner = match.groups()
            found = (kind, outer, inner)
            if len(key) <= _KEPT_CHARS:
                if len(_read) >= _KEPT:
                    _read.clear()
                _read[key] = found
            return found
    return _array_name(key, longest)


def _plain_name(key: str) -> tuple[str, str, str] | None:
    """``json.loads(key)`` of a key of printable ASCII without escapes, else None.

    Without a backslash no quote inside a JSON string is escaped, so the key is
    ``["kind", "outer", "inner"]`` exactly when its quotes are those around
    the three strings (and JSON takes printable ASCII in a string as it is).
    """
    match = _PLAIN_NAME.fullmatch(key)
    if match is None:
        return None
    kind, outer, inner = match.groups()
    return kind, outer, inner


def _head(value: Any, scheme: Scheme) -> tuple[int, dict[str, Any]]:
    """The checked ``num_examples`` and ``metrics`` of a plain encoded update."""
    if not isinstance(value, Mapping):
        raise WeightsError(
            f"reply is {type(value).__name__}, expected an encoded update (a mapping)"
        )
    if value.get("scheme") != scheme.name:
        raise WeightsError(f"update encoded with {value.get('scheme')!r:.40}, not {scheme.name!r}")
    num = value.get("num_examples")
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise WeightsError(f"encoded update: num_examples must be an integer >= 0, got {num!r:.40}")
    metrics = value.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise WeightsError("encoded update: metrics must be a mapping")
    return num, dict(metrics)


def _refuse_twice(arrays: Mapping[str, Any], kind: str, outer: str, inner: str, key: str) -> None:
    """Refuse a part (or an extra's array) already in ``arrays``: sent twice, under ``key``.

    Two JSON texts may spell one name (``["part","W","step"]``, an escaped letter):
    the second would replace the first without a word.
    """
    if inner in arrays:
        what = f"part {inner!r} of {outer!r}"
        if kind != "part":
            what = f"array {inner!r} of extra {outer!r}"
        raise WeightsError(f"encoded update: {what:.200} is sent twice ({key!r:.80})")


def encoded_from_plain(value: Any, scheme: Scheme, spec: WeightsSpec) -> Encoded:
    """The :class:`Encoded` a peer sent as plain data, checked before it is decoded.

    Checked: the scheme is the run's, the fields are known, every value is an
    array, no part or extra comes twice (two spellings of one name's JSON), the
    update's names are the model's and each carries exactly the parts
    the scheme sends for its dtype. Sizes, dtypes, index ranges and scales are
    then checked by the scheme's ``decode``, which allocates only from ``spec``.

    Args:
        value: The mapping :func:`encoded_to_plain` made, as received.
        scheme: The scheme the run uses.
        spec: The model's layout.

    Returns:
        The encoded update.

    Raises:
        covey.WeightsError: naming what is wrong.
    """
    num, metrics = _head(value, scheme)
    parts: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    longest = max(map(len, spec.names))
    most = 4096 + 12 * longest
    for key, array in value.items():
        if key in _FIELDS:
            continue
        kind, outer, inner = _read_name(key, longest, most)
        if not isinstance(array, np.ndarray):
            raise WeightsError(f"encoded update: {key!r:.80} is not an array")
        arrays = (parts if kind == "part" else extras).setdefault(outer, {})
        if inner in arrays:
            _refuse_twice(arrays, kind, outer, inner, key)
        arrays[inner] = array
    if set(parts) != set(spec.names):
        missing, unknown = set(spec.names) - set(parts), set(parts) - set(spec.names)
        raise WeightsError(
            "encoded update: its names do not match the model "
            f"(missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]!r:.200})"
        )
    expect: dict[bool, set[str] | None] = {}  # by whether the dtype is a float
    for name, dtype in zip(spec.names, spec.dtypes, strict=True):
        floats = dtype.kind == "f"
        if floats not in expect:
            expect[floats] = _expected_keys(scheme, dtype)
        expected = expect[floats]
        if expected is not None and parts[name].keys() != expected:
            raise WeightsError(
                f"encoded update: {name!r} carries {sorted(parts[name])!r:.200}, "
                f"expected {sorted(expected)} for {scheme.name}"
            )
    return Encoded(scheme.name, parts, num, metrics, extras)


def check_scheme(compression: object) -> None:
    """Refuse a ``compression`` that is neither a spec nor a scheme with a str ``name``.

    Raises:
        TypeError: ``compression`` lacks ``name``, ``encode`` or ``decode``, or its
            ``name`` is not a str (each encoded update carries it, and the run's
            history records it).
    """
    if compression is None or isinstance(compression, str):
        return
    if not all(hasattr(compression, part) for part in ("name", "encode", "decode")):
        raise TypeError(
            f"compression must be a spec (none, float16, bfloat16, q8, q4, topk:FRACTION) or a "
            f"scheme with name, encode and decode, got {type(compression).__name__}"
        )
    name = getattr(compression, "name", None)
    if not isinstance(name, str):
        raise TypeError(
            f"compression {type(compression).__name__}'s name is {type(name).__name__} "
            f"{name!r:.60}: a scheme's name must be a str (each encoded update carries it, "
            "and the run's history records it), e.g. name = 'halving'"
        )


def check_applies(scheme: Scheme | str | None, strategy: Strategy) -> None:
    """Refuse compression for a strategy whose fit round is its own exchange.

    Secure aggregation's clients send masked integers in rounds of their own:
    a scheme would neither compress them nor count their bytes.

    Top-k with a reducer that ranks or picks updates (median, trimmed mean, Krum,
    Bulyan) warns: their sparse updates leave such a rule mostly zeros.

    Args:
        scheme: The run's compression (a scheme or its spec), or None (no
            compression: always accepted).
        strategy: The run's strategy; it has a fit round of its own when its
            ``fit_round`` is set.

    Raises:
        ValueError: ``scheme`` compresses (any but ``"none"``) and ``strategy`` has its
            own fit round.

    Warns:
        UserWarning: ``scheme`` is top-k and ``strategy`` reduces with a median,
            trimmed mean, Krum or Bulyan.
    """
    if isinstance(scheme, str):
        scheme = scheme_named(scheme)
    if scheme is not None and not isinstance(scheme, Identity) and strategy.fit_round is not None:
        raise ValueError(
            f"compression does not apply to {strategy.name}: its fit round is its own "
            "exchange (secure aggregation sends masked integers), which would go "
            "uncompressed and uncounted"
        )
    if isinstance(scheme, TopK):
        _warn_sparse_robust(scheme, strategy)


_ROBUST = frozenset(("median()", "trimmed_mean()", "krum()", "bulyan()"))
"""The reducers that rank or pick updates coordinate-wise or by distance, which top-k's
sparse updates defeat. Multi-Krum (averaging ``n - f`` updates by default) and the
geometric median average sparse updates, and learn about as FedAvg does.
"""


def _warn_sparse_robust(scheme: TopK, strategy: Strategy) -> None:
    """Warn that a robust reducer over top-k's sparse updates loses what top-k delays."""
    robust = [name for name in reducer_names(strategy.aggregator) if name in _ROBUST]
    if not robust:
        return
    warnings.warn(
        f"compression topk:{scheme.fraction} with {strategy.name} ({robust[0]}) may learn "
        "little: each client sends only its largest values and zeros elsewhere, so a "
        "coordinate-wise median or trim sees mostly zeros and a distance-based pick "
        "(Krum, Bulyan) compares sparsity patterns; what error feedback holds back "
        "rarely reaches the model, and accuracy stays far below an uncompressed run's. "
        "Use a dense scheme (q8, float16) with a robust strategy, or top-k with FedAvg",
        UserWarning,
        stacklevel=3,
    )


def run_scheme(compression: Scheme | str | None, stored: Mapping[str, Any] | None) -> Scheme | None:
    """The scheme of a served run: the one asked for, or the one a resumed run was started with.

    Args:
        compression: A scheme, its spec, or None (none asked for).
        stored: The resumed run's config (its ``"compression"`` is the spec it
            was started with), or None for a new run.

    Returns:
        The scheme, or None for an uncompressed run.

    Raises:
        ValueError: for an unknown spec, a scheme of one's own (a run keeps its
            scheme as a spec), or a scheme other than the resumed run's.
    """
    scheme = scheme_named(compression) if isinstance(compression, str) else compression
    if scheme is not None and scheme_spec(scheme) is None:
        raise ValueError(
            f"a served run needs a built-in compression scheme ({SPECS}), "
            f"not {type(scheme).__name__}"
        )
    if stored is None:
        return scheme
    kept = stored.get("compression")
    kept_scheme = None if kept is None else scheme_named(kept)
    if scheme is not None and scheme_spec(scheme) != kept:
        asked = f"{scheme_spec(scheme)!r} is asked for now"
        unset = "`serve(compression=)`, `covey server --compression` and the app's unset"
        raise ValueError(
            f"the run was started without compression, and {asked}; resume it without "
            f"compression ({unset})"
            if kept is None
            else f"the run was started with compression {kept!r}, and {asked}; resume it with "
            f"{kept!r}, or with no scheme given ({unset}) to keep it"
        )
    return kept_scheme
