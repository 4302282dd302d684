"""Combinators: parts made of parts, whose init, fwd, bwd (and decoding step) are derived from their
children's, so a composition gets its hand-written backward with no backward code of its own.

    Serial(a, ("name", b), ...)   y = ...b(a(x)); a child given with a name keeps its params under
                                  that name, one given bare shares the serial's dict (keys must
                                  not collide: residuals that name their own sublayers)
    Residual(sublayer, d_model)   x + Dropout(sublayer(LayerNorm(x))), or the paper's post-norm
                                  LayerNorm(x + Dropout(sublayer(x)))
    Repeat(part, n)               n copies with their own params {"layer_0", ...}, an optional final
                                  part after them (the pre-norm stack's final layer norm)
    Parallel(("a", a), ("b", b))  (x_1, x_2) -> (a(x_1), b(x_2))
    Select(i)                     (x_1, ..., x_n) -> x_i

A tuple `(x, *rest)` flowing through Residual and Repeat is a stream with side inputs: the
residual adds to x, and `rest` (an encoder's memory) reaches every sublayer that reads several
inputs and comes out unchanged; its cotangents from every layer add up in bwd.

Dropout keys: a combinator gives one key to each child that needs one (keys_for), and Repeat one
per copy, in order; init gives each child its own key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from backends import array_namespace
from backends import prng as ftrandom

from ..errors import ConfigError
from .part import Part, add_cotangents, check_param_grads, checked_bwd, keys_for, spec_of, zeros_like_spec
from .position_wise import Dropout, norm


def _entry(entry) -> tuple[str | None, Part]:
    name, part = entry if isinstance(entry, tuple) else (None, entry)
    if not isinstance(part, Part):
        raise ConfigError(f"expected a Part or a (name, Part) pair, got {entry!r}")
    if name is not None and (not isinstance(name, str) or not name or "." in name):
        raise ConfigError(f"a part's name must be a non-empty string without '.', got {name!r}")
    return name, part


def _child_params(params: dict, name: str | None) -> dict:
    return params if name is None else params[name]


def _merge_params(owner: Part, params: dict, name: str | None, child: dict, what: str) -> None:
    """params[name] = child, or child's keys into params for a bare child (no key may collide)."""
    if name is not None:
        child = {name: child}
    clash = sorted(set(params) & set(child))
    if clash:
        raise ValueError(f"{owner!r}: {what} both name {clash}; give the parts names with (name, part)")
    params.update(child)


class SerialSaved(NamedTuple):
    children: tuple  # what each child saved
    inputs: tuple  # each child's input spec (checked against its dx)


@dataclasses.dataclass(frozen=True, init=False)
class _Composite(Part):
    """Parts held as (name or None, part) pairs, what Serial and Parallel share: a named part's params
    nest under its name, a bare part's join the composite's own dict; init gives each its own key."""

    layers: tuple
    min_parts = 1

    def __init__(self, *layers):
        if len(layers) < self.min_parts:
            raise ConfigError(f"{type(self).__name__} needs at least {self.min_parts} part(s)")
        object.__setattr__(self, "layers", tuple(_entry(entry) for entry in layers))

    @property
    def parts(self) -> tuple:
        return tuple(part for _, part in self.layers)

    @property
    def needs_key(self) -> bool:
        return any(part.needs_key for part in self.parts)

    def init(self, key) -> dict:
        params: dict = {}
        keys = ftrandom.split(key, len(self.layers))
        for i, (name, part) in enumerate(self.layers):
            _merge_params(self, params, name, part.init(keys[i]), "the params of two parts")
        return params

    def _child_bwd(self, dparams: dict, name, part, params, saved, dy, spec):
        """part's checked bwd; its gradients merged into dparams -> its dx."""
        d_part, dx = checked_bwd(part, _child_params(params, name), saved, dy, spec, shared_params=name is None)
        _merge_params(self, dparams, name, d_part, "the gradients of two parts")
        return dx


@dataclasses.dataclass(frozen=True, init=False)
class Serial(_Composite):
    """Parts in sequence: y = part_n(... part_1(x))."""

    @property
    def n_inputs(self) -> int:
        return self.parts[0].n_inputs

    def fwd(self, params, x, *, train=False, key=None, **side):
        saved, inputs = [], []
        for (name, part), k in zip(self.layers, keys_for(self.parts, key)):
            inputs.append(spec_of(x))
            x, saved_i = part.fwd(_child_params(params, name), x, train=train, key=k, **side)
            saved.append(saved_i)
        return x, SerialSaved(tuple(saved), tuple(inputs))

    def bwd(self, params, saved, dy):
        dparams: dict = {}
        for (name, part), saved_i, spec in reversed(list(zip(self.layers, saved.children, saved.inputs))):
            dy = self._child_bwd(dparams, name, part, params, saved_i, dy, spec)
        check_param_grads(self, params, dparams)
        return dparams, dy

    def _cache_names(self) -> list[str]:
        return [name or str(i) for i, (name, _) in enumerate(self.layers)]

    def init_cache(self, params, x, max_len, **side):
        """{name or index: cache} for the parts that keep one."""
        caches = {}
        for cache_name, (name, part) in zip(self._cache_names(), self.layers):
            p = _child_params(params, name)
            cache = part.init_cache(p, x, max_len, **side)
            if cache is not None:
                caches[cache_name] = cache
            x = part.output_like(p, x)
        return caches

    def output_like(self, params, x):
        for name, part in self.layers:
            x = part.output_like(_child_params(params, name), x)
        return x

    def step(self, params, x, cache, position, **side):
        new_cache = {}
        for cache_name, (name, part) in zip(self._cache_names(), self.layers):
            x, c = part.step(_child_params(params, name), x, cache.get(cache_name), position, **side)
            if c is not None:
                new_cache[cache_name] = c
        return x, new_cache


class ResidualSaved(NamedTuple):
    ln: Any  # the layer norm's saved arrays
    sublayer: Any
    drop: Any  # dropout's scaled mask, or None
    sublayer_input: Any  # the sublayer's input spec


def _split_stream(x):
    """x or (x, *rest) -> (x, rest)."""
    return (x[0], x[1:]) if isinstance(x, tuple) else (x, ())


@dataclasses.dataclass(frozen=True)
class Residual(Part):
    """The residual connection around a sublayer, with its layer norm and dropout (paper §3.1, §5.4):

    post-norm (norm_first=False, the paper):  y = LayerNorm(x + Dropout(sublayer(x)))
    pre-norm (norm_first=True):               y = x + Dropout(sublayer(LayerNorm(x)))

    params {name: the sublayer's, norm_name: the layer norm's}. x is (B, T, D), or a stream
    (x, *rest) whose rest goes to a sublayer that reads several inputs: (h, *rest[: n_inputs - 1]).
    norm: "layer" (LayerNorm) or "rms" (RMSNorm, Llama); norm_eps: its epsilon (None: its default)."""

    sublayer: Part
    d_model: int
    norm_first: bool = False
    drop_rate: float = 0.0
    name: str = "sublayer"
    norm_name: str = "ln"
    dtype: str = "float32"
    norm: str = "layer"
    norm_eps: float | None = None

    def __post_init__(self):
        _ = self._norm  # the same checks and messages as the norm part's
        if self.name == self.norm_name:
            raise ConfigError(f"Residual: the sublayer and the layer norm need different names, both are {self.name!r}")
        Dropout(self.drop_rate)  # the same check and message

    @property
    def n_inputs(self) -> int:
        return self.sublayer.n_inputs

    @property
    def needs_key(self) -> bool:
        return True

    @property
    def _norm(self) -> Part:
        return norm(self.norm, self.d_model, self.dtype, self.norm_eps)

    def init(self, key) -> dict:
        return {self.name: self.sublayer.init(key), self.norm_name: self._norm.init(key)}

    def _sublayer_input(self, h, rest):
        n_side = self.sublayer.n_inputs - 1
        if n_side > len(rest):
            raise ValueError(f"{self.sublayer!r} reads {n_side + 1} inputs but the stream carries {len(rest) + 1}")
        return (h, *rest[:n_side]) if n_side else h

    def fwd(self, params, x, *, train=False, key=None, **side):
        stream, rest = _split_stream(x)
        k_sub, k_drop = keys_for((self.sublayer, Dropout(self.drop_rate)), key)
        sub_params, ln_params = params[self.name], params[self.norm_name]
        if self.norm_first:
            h, saved_ln = self._norm.fwd(ln_params, stream)
            sub_in = self._sublayer_input(h, rest)
            out, saved_sub = self.sublayer.fwd(sub_params, sub_in, train=train, key=k_sub, **side)
            out, saved_drop = Dropout(self.drop_rate).fwd({}, out, train=train, key=k_drop)
            y = stream + out
        else:
            sub_in = self._sublayer_input(stream, rest)
            out, saved_sub = self.sublayer.fwd(sub_params, sub_in, train=train, key=k_sub, **side)
            out, saved_drop = Dropout(self.drop_rate).fwd({}, out, train=train, key=k_drop)
            y, saved_ln = self._norm.fwd(ln_params, stream + out)
        saved = ResidualSaved(saved_ln, saved_sub, saved_drop, spec_of(sub_in))
        return ((y, *rest) if rest else y), saved

    def bwd(self, params, saved, dy):
        g, d_rest = _split_stream(dy)
        sub_params, ln_params = params[self.name], params[self.norm_name]
        if self.norm_first:
            d_sub, d_in = checked_bwd(
                self.sublayer,
                sub_params,
                saved.sublayer,
                Dropout(self.drop_rate).bwd({}, saved.drop, g)[1],
                saved.sublayer_input,
            )
            dh, d_side = _split_stream(d_in)
            d_ln, dx_ln = self._norm.bwd(ln_params, saved.ln, dh)
            dx = g + dx_ln
        else:
            d_ln, d_sum = self._norm.bwd(ln_params, saved.ln, g)
            d_sub, d_in = checked_bwd(
                self.sublayer,
                sub_params,
                saved.sublayer,
                Dropout(self.drop_rate).bwd({}, saved.drop, d_sum)[1],
                saved.sublayer_input,
            )
            dh, d_side = _split_stream(d_in)
            dx = d_sum + dh
        if d_side:  # the side inputs' cotangents: what came from later layers plus this sublayer's
            d_rest = add_cotangents(d_rest[: len(d_side)], d_side) + d_rest[len(d_side) :]
        dparams = {self.name: d_sub, self.norm_name: d_ln}
        return dparams, ((dx, *d_rest) if d_rest else dx)

    def init_cache(self, params, x, max_len, **side):
        stream, rest = _split_stream(x)
        return self.sublayer.init_cache(params[self.name], self._sublayer_input(stream, rest), max_len, **side)

    def step(self, params, x, cache, position, **side):
        stream, rest = _split_stream(x)
        sub_params, ln_params = params[self.name], params[self.norm_name]
        if self.norm_first:
            h = self._norm.apply(ln_params, stream)
            out, cache = self.sublayer.step(sub_params, self._sublayer_input(h, rest), cache, position, **side)
            y = stream + out
        else:
            out, cache = self.sublayer.step(sub_params, self._sublayer_input(stream, rest), cache, position, **side)
            y = self._norm.apply(ln_params, stream + out)
        return ((y, *rest) if rest else y), cache


class RepeatSaved(NamedTuple):
    layers: tuple  # what each copy saved, layer_0 first
    final: Any  # what the final part saved, or None
    inputs: tuple  # each copy's input spec


@dataclasses.dataclass(frozen=True)
class Repeat(Part):
    """n copies of `part` in sequence, each with its own params {"layer_0", ..., "layer_{n-1}"}, then
    `final` (under `final_name`) if given: the pre-norm stack's closing layer norm. On a stream
    (x, *rest) the final part reads x alone."""

    part: Part
    n: int
    final: Part | None = None
    final_name: str = "final_ln"

    def __post_init__(self):
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n <= 0:
            raise ConfigError(f"Repeat: n must be a positive integer, got {self.n!r}")

    @property
    def names(self) -> list[str]:
        return [f"layer_{i}" for i in range(self.n)]

    @property
    def n_inputs(self) -> int:
        return self.part.n_inputs

    @property
    def needs_key(self) -> bool:
        return self.part.needs_key

    def init(self, key) -> dict:
        keys = ftrandom.split(key, self.n + 1)  # the first n are split(key, n): one key per copy
        params = {name: self.part.init(keys[i]) for i, name in enumerate(self.names)}
        if self.final is not None:
            params[self.final_name] = self.final.init(keys[self.n])
        return params

    def _layer_keys(self, key) -> list:
        if key is None or not self.part.needs_key:
            return [None] * self.n
        keys = ftrandom.split(key, self.n)
        return [keys[i] for i in range(self.n)]

    def fwd(self, params, x, *, train=False, key=None, **side):
        saved, inputs = [], []
        for name, k in zip(self.names, self._layer_keys(key)):
            inputs.append(spec_of(x))
            x, saved_i = self.part.fwd(params[name], x, train=train, key=k, **side)
            saved.append(saved_i)
        saved_final = None
        if self.final is not None:
            stream, rest = _split_stream(x)
            stream, saved_final = self.final.fwd(params[self.final_name], stream, train=train, **side)
            x = (stream, *rest) if rest else stream
        return x, RepeatSaved(tuple(saved), saved_final, tuple(inputs))

    def bwd(self, params, saved, dy):
        dparams = {}
        if self.final is not None:
            g, rest = _split_stream(dy)
            d_final, g = checked_bwd(self.final, params[self.final_name], saved.final, g, spec_of(g))
            dparams[self.final_name] = d_final
            dy = (g, *rest) if rest else g
        for name, saved_i, spec in reversed(list(zip(self.names, saved.layers, saved.inputs))):
            dparams[name], dy = checked_bwd(self.part, params[name], saved_i, dy, spec)
        return dparams, dy

    def init_cache(self, params, x, max_len, **side):
        caches = {}
        for name in self.names:
            caches[name] = self.part.init_cache(params[name], x, max_len, **side)
        return caches

    def step(self, params, x, cache, position, **side):
        new_cache = {}
        for name in self.names:
            x, new_cache[name] = self.part.step(params[name], x, cache[name], position, **side)
        if self.final is not None:
            stream, rest = _split_stream(x)
            stream = self.final.apply(params[self.final_name], stream, **side)
            x = (stream, *rest) if rest else stream
        return x, new_cache


@dataclasses.dataclass(frozen=True, init=False)
class Parallel(_Composite):
    """Parts side by side over a tuple: (x_1, ..., x_n) -> (part_1(x_1), ..., part_n(x_n)); params
    and naming as in Serial."""

    min_parts = 2

    @property
    def n_inputs(self) -> int:
        return len(self.layers)

    def _check(self, x) -> None:
        if not isinstance(x, tuple) or len(x) != len(self.layers):
            raise ValueError(
                f"{self!r} takes a tuple of {len(self.layers)} inputs, got "
                f"{len(x) if isinstance(x, tuple) else 'one array'}"
            )

    def fwd(self, params, x, *, train=False, key=None, **side):
        self._check(x)
        ys, saved = [], []
        for (name, part), x_i, k in zip(self.layers, x, keys_for(self.parts, key)):
            y_i, saved_i = part.fwd(_child_params(params, name), x_i, train=train, key=k, **side)
            ys.append(y_i)
            saved.append((saved_i, spec_of(x_i)))
        return tuple(ys), tuple(saved)

    def bwd(self, params, saved, dy):
        dparams: dict = {}
        dxs = []
        for (name, part), (saved_i, spec), g in zip(self.layers, saved, dy):
            dxs.append(self._child_bwd(dparams, name, part, params, saved_i, g, spec))
        check_param_grads(self, params, dparams)
        return dparams, tuple(dxs)

    def init_cache(self, params, x, max_len, **side):
        caches = {}
        for i, ((name, part), x_i) in enumerate(zip(self.layers, x)):
            cache = part.init_cache(_child_params(params, name), x_i, max_len, **side)
            if cache is not None:
                caches[name or str(i)] = cache
        return caches

    def output_like(self, params, x):
        return tuple(part.output_like(_child_params(params, name), x_i) for (name, part), x_i in zip(self.layers, x))

    def step(self, params, x, cache, position, **side):
        ys, caches = [], {}
        for i, ((name, part), x_i) in enumerate(zip(self.layers, x)):
            y_i, c = part.step(_child_params(params, name), x_i, cache.get(name or str(i)), position, **side)
            ys.append(y_i)
            if c is not None:
                caches[name or str(i)] = c
        return tuple(ys), caches


@dataclasses.dataclass(frozen=True)
class Select(Part):
    """(x_0, ..., x_{n-1}) -> x_index: keep one element of a tuple (the stream after a decoder stack);
    the others get zero cotangents."""

    index: int = 0

    def fwd(self, params, x, *, train=False, key=None, **side):
        if not isinstance(x, tuple) or not -len(x) <= self.index < len(x):
            raise ValueError(f"{self!r} needs a tuple with an element {self.index}")
        return x[self.index], spec_of(x)

    def output_like(self, params, x):
        return x[self.index]

    def bwd(self, params, saved, dy):
        xp = array_namespace(dy)
        dx = list(zeros_like_spec(saved, dy.dtype, xp))
        dx[self.index] = dy
        return {}, tuple(dx)
