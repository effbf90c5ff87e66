"""Search operators by name: one decorator registers a function, the config chooses it.

``search.operators`` (:class:`decouple_jax.config.OperatorsConfig`) names one operator of each
kind with its parameters; :func:`resolve` turns that into the functions the engine calls, with
the parameters bound. Because the names and parameters are part of the search config, every
entry point (launch scripts, ``reproduce``, ``feedback``, the analyses, a notebook) takes them,
and every store and run records them. Registering an operator is one decorated function, with
the operator's parameters as keyword arguments (evosax's ``mutation(key, x, std)`` is the
model)::

  @registry.register('mutation')
  def heavy_tailed(key, shape, *, std=1.0):  # Laplace draws: heavier tails than a Gaussian
    return jax.random.laplace(key, shape) * (std / jnp.sqrt(2.0))

  search_cfg = dataclasses.replace(search_cfg, operators=dataclasses.replace(
      search_cfg.operators, mutation=config.OperatorConfig('heavy_tailed', {'std': 0.5})))

The kinds and what the engine passes (one image's population; see
:mod:`decouple_jax.search.mutation` for how a child is made):

  mutation   (key, shape) -> (shape) float32 unit perturbations of a generation's C children,
             (C, *S); smoothed, scaled by the parents' spread and alpha, added to the crossover
  crossover  (h1, h2) -> child, any matching shapes
  smoothing  (h (P, H, W, C), passes, padding) -> h, the blur of block activations
  selection  (loss (P,), k) -> (k,) indices of the kept parents, best first
  fitness    (logits (P, K), label ()) -> LOSS (P,), lower is better, NaN -> +inf; a fitness
             that also takes ``candidates`` (P, *S) and ``reference`` (*S) gets the candidates
             of the layer being searched and the image's own activation there

Which code made a store: the library's own operators are identified by name (the store's
engine version covers their code); any other registered function also by its code
(:func:`code_id`: bytecode, constants, defaults, closure values and the functions and values it
refers to), never by its name alone, so two notebook lambdas differ, and editing a function's
body and registering it again gives its stores a new identity.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from typing import Any, Callable, NamedTuple

import numpy as np

from decouple_jax import config as cfglib

KINDS = ('mutation', 'crossover', 'smoothing', 'selection', 'fitness')
_REGISTRY: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}
# Modules whose operators the engine version covers (identified by name only).
_LIBRARY = 'decouple_jax.'


def register(kind: str, name: str | None = None) -> Callable[[Callable], Callable]:
  """Decorator: registers the function as operator ``name`` (default its ``__name__``) of
  ``kind`` and returns it unchanged. Registering a name again replaces the operator (a notebook
  cell run twice); stores searched with the old code are then refused, not reused."""
  _check_kind(kind)

  def decorate(fn: Callable) -> Callable:
    _REGISTRY[kind][name or fn.__name__] = fn
    return fn
  return decorate


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise cfglib.ConfigError(f'operator kind {kind!r} is not one of {KINDS}')


def names(kind: str) -> tuple[str, ...]:
  """The registered operators of ``kind``."""
  _check_kind(kind)
  return tuple(sorted(_REGISTRY[kind]))


def get(kind: str, name: str) -> Callable:
  """The function registered as ``name`` of ``kind``.

  Raises:
    ConfigError: no such operator, naming the registered ones.
  """
  _check_kind(kind)
  if name not in _REGISTRY[kind]:
    raise cfglib.ConfigError(f'search.operators.{kind}.name={name!r} is not registered; '
                             f'registered: {list(names(kind))} (register one with '
                             f'@decouple_jax.search.registry.register({kind!r}))')
  return _REGISTRY[kind][name]


def _reads_candidates(fn: Callable) -> bool:
  parameters = inspect.signature(fn).parameters
  return 'candidates' in parameters and 'reference' in parameters


def _bind(kind: str, chosen: cfglib.OperatorConfig) -> Callable:
  fn = get(kind, chosen.name)
  parameters = inspect.signature(fn).parameters
  missing = [n for n, p in parameters.items()
             if p.kind is p.KEYWORD_ONLY and p.default is p.empty and n not in chosen.params]
  if missing:
    raise cfglib.ConfigError(f'search.operators.{kind}.params: {chosen.name!r} needs {missing}')
  if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
    unknown = sorted(set(chosen.params) - set(parameters))
    if unknown:
      raise cfglib.ConfigError(
          f'search.operators.{kind}.params: {unknown} are not parameters of {chosen.name!r}; '
          f'its parameters: {list(parameters)}')
  return functools.partial(fn, **chosen.params)


class Operators(NamedTuple):
  """A search's operators, resolved from its config: each registered function with its
  parameters bound (signatures in the module docstring).

  Attributes:
    mutation, crossover, smoothing, selection: as registered.
    fitness: (logits, label, candidates, reference) -> LOSS (P,), whether or not the
      registered fitness reads the last two.
    reads_candidates: whether the fitness depends on the layer's candidates themselves (then
      the engine computes the image's own activations and rescores a carried population at
      each layer's start), not only on the logits.
  """
  mutation: Callable
  crossover: Callable
  smoothing: Callable
  selection: Callable
  fitness: Callable
  reads_candidates: bool


def resolve(operators: cfglib.OperatorsConfig) -> Operators:
  """The operators ``search.operators`` names, parameters bound.

  Raises:
    ConfigError: an unregistered name, or a parameter the operator does not take.
  """
  bound = {kind: _bind(kind, getattr(operators, kind)) for kind in KINDS}
  fitness = bound['fitness']
  reads = _reads_candidates(fitness.func)
  if not reads:
    fitness = lambda logits, label, candidates, reference, f=fitness: f(logits, label)
  return Operators(**{**bound, 'fitness': fitness}, reads_candidates=reads)


def operators_id(operators: cfglib.OperatorsConfig) -> str:
  """What identifies the code of a search's operators, beyond their names and parameters
  (which the search config holds): 'library' if all are the library's own, else a hash of
  the others' :func:`code_id`."""
  custom = {kind: code_id(fn) for kind in KINDS
            if not getattr(fn := get(kind, getattr(operators, kind).name), '__module__',
                           '').startswith(_LIBRARY)}
  return 'library' if not custom else f'custom-{cfglib.hash_dict(custom)}'


def code_id(fn: Callable) -> str:
  """16 hex digits identifying what ``fn`` computes, as far as its code shows: its bytecode,
  constants and names (nested functions' too), default arguments, the values it closes over,
  and the module globals it names that are values or functions of the caller's own (library
  and modules are named, not followed). Equal for the same code run again; different for
  another lambda, an edited body, or another captured value."""
  return cfglib.hash_dict(_describe(fn, set()))


def _describe(obj: Any, seen: set[int]) -> Any:
  """A JSON-ready description of ``obj`` for :func:`code_id`."""
  if obj is None or isinstance(obj, (bool, int, float, str, bytes, complex)):
    return repr(obj)
  if isinstance(obj, types.ModuleType):
    return f'module {obj.__name__}'
  if id(obj) in seen:
    return 'recursive'
  seen = seen | {id(obj)}
  if isinstance(obj, (list, tuple)):
    return [_describe(x, seen) for x in obj]
  if isinstance(obj, dict):
    return {str(k): _describe(v, seen) for k, v in obj.items()}
  if hasattr(obj, 'shape') and hasattr(obj, 'dtype'):
    array = np.ascontiguousarray(obj)
    return {'array': f'{array.dtype}{array.shape}',
            'bytes': hashlib.sha256(array.tobytes()).hexdigest()}
  if isinstance(obj, functools.partial):
    return {'partial': _describe(obj.func, seen), 'args': _describe(obj.args, seen),
            'keywords': _describe(obj.keywords, seen)}
  if isinstance(obj, types.CodeType):
    return {'code': obj.co_code.hex(), 'names': list(obj.co_names),
            'consts': [_describe(c, seen) for c in obj.co_consts]}
  if isinstance(obj, types.FunctionType):
    if obj.__module__ and obj.__module__.startswith(_LIBRARY):
      return f'{obj.__module__}.{obj.__qualname__}'
    referenced = {name: obj.__globals__[name] for name in _global_names(obj.__code__)
                  if name in obj.__globals__}
    return {'code': _describe(obj.__code__, seen),
            'defaults': _describe(obj.__defaults__, seen),
            'kwdefaults': _describe(obj.__kwdefaults__, seen),
            'closure': [_describe(c.cell_contents, seen) for c in obj.__closure__ or ()],
            'globals': {k: _describe(v, seen) for k, v in referenced.items()
                        if _followed(v)}}
  # Library callables (jnp functions, ...) and other objects: by type and name.
  kind = type(obj)
  return f'{kind.__module__}.{kind.__qualname__}:{getattr(obj, "__qualname__", "")}'


def _global_names(code: types.CodeType) -> set[str]:
  """The names ``code`` and the code nested in it refer to."""
  found = set(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      found |= _global_names(const)
  return found


def _followed(value: Any) -> bool:
  """Whether a global a function names is part of its identity: values and the caller's own
  functions are; modules, classes and the library's functions are named by the code."""
  if isinstance(value, (types.ModuleType, type)):
    return False
  if isinstance(value, (types.FunctionType, functools.partial)):
    module = getattr(value, '__module__', None) or ''
    return not (module.startswith(_LIBRARY) or module.startswith(('jax', 'numpy', 'flax')))
  return value is None or isinstance(value, (bool, int, float, str, tuple, np.ndarray))
