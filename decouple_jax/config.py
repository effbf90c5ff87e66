"""Typed, frozen configuration of every part of the library.

Launch scripts build an ``ml_collections.ConfigDict`` (see ``configs/``) and turn it into these
dataclasses with :func:`from_dict`; library code only ever sees the dataclasses, so everything is
usable from a notebook without flags. Unknown or misspelt keys are refused with the list of valid
ones, so a typo in ``--config.a.b=value`` never passes silently.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import types
import typing
from typing import Any, Mapping

import jax
import numpy as np


class ConfigError(ValueError):
  """A configuration that is inconsistent or names unknown fields."""


# The choices of every enumerated field; the code that acts on a field uses the same constant.
CIFAR100_LABELS = ('fine', 'coarse')
CONVS_PER_BLOCK = (2, 4, 6)
HEADS = ('flatten', 'maxpool')
TAPS = ('post_gelu', 'pre_gelu')
CONV_IMPLS = ('xla', 'matmul', 'auto')
SCHEDULES = ('constant', 'triangle')
REFINE_POOLS = ('parents_and_explorers', 'parents')
SEED_NEXT = ('best', 'population')
BLUR_PADDINGS = ('zeros', 'valid')
BLUR_TARGETS = ('candidate', 'noise')
SEARCH_METHODS = ('evolution', 'gradient')
ALPHA_SCHEDULES = ('constant', 'linear', 'cosine')
BN_STATS_SOURCES = ('recompute', 'running')
BN_MODES = ('inference', 'batch')
STORE_DTYPES = ('float32', 'float16', 'bfloat16')
COMPUTE_DTYPES = ('auto', 'float32', 'bfloat16')
STUDENT_VARIANTS = ('all_layers', 'skip_block0')
MSE_REDUCTIONS = ('mean', 'sum')
AUGMENTED_TARGETS = ('reuse', 'flip', 'follow')
ENSEMBLE_FAMILIES = ('searches', 'searches_one_network', 'searches_and_seeds', 'student_seeds',
                     'sgd')

# The metadata key of a field that changes how fast a result comes, not what it is: how the same
# computation is batched, placed, decomposed or saved. Its values agree to float rounding (the
# order XLA sums in), as on another number of devices, which no identity records either. Every
# identity (decouple_jax.identity) leaves such fields out, so changing one reuses finished runs.
SPEED_ONLY = 'speed_only'


def speed_only(default: Any) -> Any:
  """A dataclass field with ``default`` that is :data:`SPEED_ONLY`."""
  return dataclasses.field(default=default, metadata={SPEED_ONLY: True})


# The metadata key of a field added after runs were recorded, whose default is the one
# computation there was before it. Identities record such a field only away from its default,
# so the runs made before it existed keep theirs.
ADDED_LATER = 'added_later'


def added_later(default: Any) -> Any:
  """A dataclass field with ``default`` that is :data:`ADDED_LATER`."""
  return dataclasses.field(default=default, metadata={ADDED_LATER: True})


# Every check below raises a message that starts with the field's name; from_dict puts the
# field's path in front (config.search.layers.block0.generations=-1: ...), so the message says
# which flag to change. A new field gets its check by one more call in its class's
# __post_init__.


class FrozenDict(dict):
  """A mapping field of a frozen config (the search layers, an operator's params): a dict that
  cannot change and hashes by its items, so a config stays hashable. Change one with
  ``dataclasses.replace``."""

  def __hash__(self):
    return hash(tuple(self.items()))

  def __reduce__(self):
    return FrozenDict, (dict(self),)

  def _refuse(self, *args, **kwargs):
    raise TypeError('a config mapping cannot change: build a new one (dataclasses.replace)')
  __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


def tap_names(num_blocks: int) -> tuple[str, ...]:
  """The taps of a network of ``num_blocks`` blocks, in order: 'block0', 'block1', ... then
  'logits'. The search layers (``search.layers``) are keyed by them."""
  return tuple(f'block{i}' for i in range(num_blocks)) + ('logits',)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ConfigError(f'{name}={value!r} is not one of {choices}')


def _check_counts(cfg, minimum: int, *names: str) -> None:
  """Integer fields that must be at least ``minimum``."""
  for name in names:
    value = getattr(cfg, name)
    if value < minimum:
      raise ConfigError(f'{name}={value!r}: must be an integer >= {minimum}')


def _check_amounts(cfg, *names: str, positive: bool = False) -> None:
  """Float fields that must be finite and >= 0 (``positive``: > 0)."""
  for name in names:
    value = getattr(cfg, name)
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
      raise ConfigError(f'{name}={value!r}: must be a finite number '
                        f'{"> 0" if positive else ">= 0"}')


def _check_fraction(cfg, name: str, *, below_one: bool = False) -> None:
  """A float field in [0, 1] (``below_one``: [0, 1))."""
  value = getattr(cfg, name)
  if not (0 <= value < 1 if below_one else 0 <= value <= 1):
    raise ConfigError(f'{name}={value!r}: must be in [0, {"1)" if below_one else "1]"}')


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data set, where its files are, and how the training set is split.

  Attributes:
    name: the data set: 'mnist', 'cifar10' or 'cifar100', or with ``source='folder'`` any
      label of your own (classes then in sorted folder order). Any directory of MNIST-format
      IDX files loads as 'mnist' (fashion-MNIST, KMNIST, ...).
    dir: directory holding the files: the four IDX .gz files for MNIST, the CIFAR archive, or
      an image folder's train/ and test/.
    source: how the files are read: 'files' (default: the original files), 'folder' (an image
      folder, train/<class>/*.png|jpg and test/<class>/...) or 'tfds' (tensorflow-datasets,
      needs the ``tfds`` extra and either internet or prepared data). The choices, and which
      names each source reads, are those registered in :mod:`decouple_jax.data.sources`;
      ``load_dataset`` refuses others with the list.
    holdout: number of training images held out for model selection (paper: 4000).
    split_seed: seed of the deterministic hold-out permutation.
    cifar100_labels: 'fine' (default) or 'coarse'.
    train_limit: if > 0, keep only the first ``train_limit`` images of the training split
      (after the hold-out is removed); for scaled-down runs. 0 keeps all.
    test_limit: if > 0, evaluate on the first ``test_limit`` test images only.
    verify: check the sha256 of the original files against the published values. Turn off
      only for files you made yourself (tests, MNIST-format data sets of your own). Ignored by
      'folder' and 'tfds', which have no published files to check.
  """
  name: str = 'mnist'
  dir: str = 'data/mnist'
  source: str = 'files'
  holdout: int = 4000
  split_seed: int = 0
  cifar100_labels: str = 'fine'
  train_limit: int = 0
  test_limit: int = 0
  verify: bool = True

  def __post_init__(self):
    _check_choice('cifar100_labels', self.cifar100_labels, CIFAR100_LABELS)
    _check_counts(self, 0, 'holdout', 'train_limit', 'test_limit')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The airbench-derived network family (paper appendix A.1; docs/method.md section 2).

  Attributes:
    widths: channels of the three blocks (paper: 256, 256, 256; airbench94: 64, 256, 256).
    convs_per_block: 2, 4 or 6 convolutions per block (1, 2 or 3 ConvGroups); only the first
      ConvGroup of a block pools.
    head: 'flatten' (paper: flatten the last block, then Linear) or 'maxpool' (airbench94:
      global max-pool, then Linear).
    logit_scale: multiplies the logits (paper 1.0, airbench94 1/9).
    head_bias: whether the final Linear has a bias (airbench: no).
    bn_momentum: BatchNorm running-average momentum, Flax convention (new = m * old +
      (1 - m) * batch); paper 0.6.
    bn_eps: BatchNorm epsilon (paper 1e-12).
    whiten_eps: added to the patch-covariance eigenvalues of the whitening stem (5e-4).
    whiten_images: number of training images whose 2x2 patches set the whitening filters.
    tap_scale: if True, the block-output taps get a learnable per-channel scale (learning
      network only; see docs/method.md section 4). The search network never has one.
    tap: where a block's output is read for the taps: 'post_gelu' (the block's output, which
      the next block consumes) or 'pre_gelu' (the last BatchNorm's output before its GELU).
    conv_impl: how the 3x3 convs are computed (decouple_jax/models/conv.py): 'xla' (XLA's
      conv and its gradient), 'matmul' (for XLA:CPU: wide convs over L2-sized batch chunks,
      matmul-shaped kernel gradient; faster than 'xla' there, see BENCHMARKS.md) or 'auto'
      (default: 'matmul' on CPU, 'xla' on GPU/TPU, whose conv kernels are tuned).
      The parameters are identical, so checkpoints are unaffected, and the search always
      computes with 'xla', so targets are too. Values and gradients agree to float32
      rounding, not bitwise: XLA:CPU may block a chunk of the batch otherwise than the whole
      (bitwise equal on one AMD EPYC, 3.1e-6 apart on another). Speed-only: in no identity.
  """
  widths: tuple[int, ...] = (256, 256, 256)
  convs_per_block: int = 2
  head: str = 'flatten'
  logit_scale: float = 1.0
  head_bias: bool = False
  bn_momentum: float = 0.6
  bn_eps: float = 1e-12
  whiten_eps: float = 5e-4
  whiten_images: int = 5000
  tap_scale: bool = False
  tap: str = 'post_gelu'
  conv_impl: str = speed_only('auto')

  def __post_init__(self):
    if len(self.widths) != 3 or min(self.widths) < 1:
      raise ConfigError(f'widths={self.widths!r}: give one positive width per block, e.g. '
                        '(16, 16, 16)')
    _check_choice('convs_per_block', self.convs_per_block, CONVS_PER_BLOCK)
    _check_choice('head', self.head, HEADS)
    _check_choice('tap', self.tap, TAPS)
    _check_choice('conv_impl', self.conv_impl, CONV_IMPLS)
    _check_amounts(self, 'logit_scale', 'bn_eps', 'whiten_eps', positive=True)
    _check_fraction(self, 'bn_momentum')
    _check_counts(self, 1, 'whiten_images')

  @property
  def tap_names(self) -> tuple[str, ...]:
    """This network's taps, e.g. ('block0', 'block1', 'block2', 'logits')."""
    return tap_names(len(self.widths))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Nesterov SGD in airbench's decoupled units.

  ``lr`` and ``weight_decay`` are in airbench's units: the loss is summed over the batch and the
  step is ``lr / (1024 * (1 + 1 / (1 - momentum)))`` per summed-loss gradient, i.e. the lr per
  1024 examples with the momentum's gain divided out. :func:`decouple_jax.learn.optim.plain_lr`
  gives the equivalent learning rate on a batch-mean loss.

  Attributes:
    lr: peak learning rate, decoupled units (paper: 4.0).
    momentum: Nesterov momentum (paper: 0.85).
    nesterov: use Nesterov momentum (paper: yes).
    weight_decay: decoupled L2 weight decay, airbench units (paper: not stated; default 0).
    schedule: 'constant' or 'triangle' (airbench: linear warm-up from ``lr_start`` x lr to lr
      over ``warmup`` of training, then linear decay to ``lr_end`` x lr).
    warmup: fraction of training spent warming up (triangle only).
    lr_start: start factor of the warm-up.
    lr_end: end factor of the decay.
    batch_size: examples per step (paper: 2000).
    epochs: passes over the training split (paper: 90 CIFAR, 1000 MNIST).
    label_smoothing: cross-entropy label smoothing for the SGD baseline (paper: none).
    clip_norm: if > 0, clip the batch-mean gradient to this global norm (paper: none). A
      channel that is constant over a batch (MNIST's blank background survives max-pooling
      into block 2) passes the gradient through each BatchNorm with gain ~1/sqrt(bn_eps),
      past float32's range with 6 convs per block; clipping tames the first steps until the
      channel varies, and works on a scaled gradient (``learn.optim.unscale_and_clip``).
  """
  lr: float = 4.0
  momentum: float = 0.85
  nesterov: bool = True
  weight_decay: float = 0.0
  schedule: str = 'triangle'
  warmup: float = 0.2
  lr_start: float = 0.2
  lr_end: float = 0.0
  batch_size: int = 2000
  epochs: int = 90
  label_smoothing: float = 0.0
  clip_norm: float = 0.0

  def __post_init__(self):
    _check_choice('schedule', self.schedule, SCHEDULES)
    _check_amounts(self, 'lr', 'weight_decay', 'lr_start', 'lr_end', 'clip_norm')
    _check_fraction(self, 'momentum', below_one=True)
    _check_fraction(self, 'label_smoothing', below_one=True)
    _check_fraction(self, 'warmup')
    _check_counts(self, 1, 'batch_size', 'epochs')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How a training run is driven (shared by the SGD baseline and the student).

  Attributes:
    optim: the optimiser.
    augment: random horizontal flip and random crop from ``crop_pad``-pixel padding.
    crop_pad: padding of the random crop (paper: 2).
    flip: random horizontal flips when augmenting (off for digits, where a flip changes the
      class).
    eval_batch: batch size of evaluation (batch-statistics BatchNorm sees this many images).
    eval_every: evaluate on the hold-out split every this many epochs (and at the end).
    checkpoint_every: save a resumable checkpoint every this many epochs.
    seed: seed of initialisation, shuffling and augmentation.
    bn_batch_stats: normalise with batch statistics in training and evaluation (paper:
      "no running statistics"); False uses running averages at evaluation.
    compute_dtype: the dtype of the network's forward and backward pass: 'float32',
      'bfloat16' or 'auto' (default: bfloat16 on GPU and TPU, whose matrix units run it at
      several times the float32 rate, float32 on CPU, which has no such gain). Parameters,
      optimiser state, BatchNorm statistics and the losses stay float32 either way.
  """
  optim: OptimConfig = OptimConfig()
  augment: bool = False
  crop_pad: int = 2
  flip: bool = True
  eval_batch: int = 2000
  eval_every: int = 1
  checkpoint_every: int = speed_only(1)
  seed: int = 0
  bn_batch_stats: bool = True
  compute_dtype: str = 'auto'

  def __post_init__(self):
    _check_choice('compute_dtype', self.compute_dtype, COMPUTE_DTYPES)
    _check_counts(self, 0, 'crop_pad')
    _check_counts(self, 1, 'eval_batch', 'eval_every', 'checkpoint_every')


def compute_dtype_name(name: str) -> str:
  """The dtype ``TrainConfig.compute_dtype`` = ``name`` computes in on this backend ('auto':
  bfloat16 on GPU and TPU, float32 on CPU)."""
  if name == 'auto':
    return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return name


@dataclasses.dataclass(frozen=True)
class SGDConfig:
  """The SGD baseline: a network of the family trained end to end with cross-entropy.

  The paper tries 2, 4 and 6 convs per block and reports the best; ``model.convs_per_block``
  picks one here (``launch/reproduce.py`` can sweep them).

  Attributes:
    model, train: the network and its training.
    frozen_blocks: blocks kept at their initial, untrained weights (kernels and BatchNorm
      biases): a control beyond the paper, for what a block that never learns costs (e.g.
      block 0, whose searched targets can stay close to the untrained activation). Default
      none: the paper's SGD.
  """
  model: ModelConfig = ModelConfig(convs_per_block=6)
  train: TrainConfig = TrainConfig()
  frozen_blocks: tuple[int, ...] = added_later(())

  def __post_init__(self):
    blocks = range(len(self.model.widths))
    if any(b not in blocks for b in self.frozen_blocks):
      raise ConfigError(f'frozen_blocks: {self.frozen_blocks} names a block the network does not '
                        f'have (it has blocks {list(blocks)})')


def _tuple_fields(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_default(cls, name: str) -> Any:
  """The default of field ``name`` of dataclass ``cls`` (None if it has none)."""
  field = {f.name: f for f in dataclasses.fields(cls)}[name]
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return None if field.default is dataclasses.MISSING else field.default


def _convert(tp: Any, value: Any, path: str, base: Any) -> Any:
  if dataclasses.is_dataclass(tp):
    return from_dict(tp, value, path, base)
  origin = typing.get_origin(tp)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f'{path}: expected a sequence, got {value!r}')
    (elem, *_) = typing.get_args(tp)
    # Element i of a partial tuple starts from the base's element i.
    bases = tuple(base) if isinstance(base, tuple) else ()
    return tuple(_convert(elem, v, f'{path}[{i}]', bases[i] if i < len(bases) else None)
                 for i, v in enumerate(value))
  if origin in (dict, collections.abc.Mapping):
    return _convert_mapping(typing.get_args(tp)[1], value, path, base)
  if origin in (typing.Union, types.UnionType):
    return value
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if tp in (int, float, str, bool) and not isinstance(value, tp):
    raise ConfigError(f'{path}: expected {tp.__name__}, got {value!r}')
  return value


def _convert_mapping(elem: Any, value: Any, path: str, base: Any) -> dict:
  """A mapping field: configs keyed by name (the search layers) update the base's, so an
  override may name one layer, and a name the base lacks is refused; plain values (an
  operator's params) replace the base's."""
  if not isinstance(value, Mapping):
    raise ConfigError(f'{path}: expected a mapping, got {value!r}')
  if not dataclasses.is_dataclass(elem):
    return dict(value)
  bases = dict(base) if isinstance(base, Mapping) else {}
  unknown = [k for k in value if k not in bases]
  if bases and unknown:
    raise ConfigError(f'{path}: unknown name(s) {unknown}; valid names: {list(bases)}')
  return {**bases, **{k: _convert(elem, v, f'{path}.{k}', bases.get(k))
                      for k, v in value.items()}}


def from_dict(cls, d: Mapping[str, Any] | Any, path: str = 'config', base: Any = None):
  """Builds dataclass ``cls`` from a (nested) mapping such as a ConfigDict.

  Missing keys keep the values of ``base`` (default: the dataclass defaults), at every level:
  a nested mapping starts from its parent's value of that field, so
  ``from_dict(StudentConfig, {'model': {'widths': (16, 16, 16)}})`` keeps the student's own
  model defaults (tap 'pre_gelu', 6 convs per block), not :class:`ModelConfig`'s. Unknown keys
  raise :class:`ConfigError` naming the valid ones; an invalid value raises one naming its
  path, e.g. ``config.search.layers.block0.generations=-1: must be an integer >= 0``.
  """
  if dataclasses.is_dataclass(d):
    return d
  if hasattr(d, 'to_dict'):
    d = d.to_dict()
  if not isinstance(d, Mapping):
    raise ConfigError(f'{path}: expected a mapping for {cls.__name__}, got {d!r}')
  fields = _tuple_fields(cls)
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ConfigError(f'{path}: unknown field(s) {unknown} for {cls.__name__}; '
                      f'valid fields: {sorted(fields)}')
  kwargs = {k: _convert(fields[k], v, f'{path}.{k}',
                        field_default(cls, k) if base is None else getattr(base, k))
            for k, v in d.items()}
  try:
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
  except ConfigError as e:  # the checks name the field; say where it sits
    raise ConfigError(f'{path}.{e}') from None
  except TypeError as e:  # a required field missing
    raise ConfigError(f'{path}: {e}') from None


def to_dict(cfg) -> dict[str, Any]:
  """A nested dict of a config dataclass; tuples stay tuples, so a ConfigDict made from it
  accepts ``--config.a.b='(1, 2)'`` overrides (config_flags cannot override lists), and
  mappings (the search layers) are plain dicts, so ``--config.search.layers.block1.alpha=0.2``
  names one entry."""
  return _plain(dataclasses.asdict(cfg))


def _plain(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {k: _plain(v) for k, v in obj.items()}
  return obj


def hash_dict(obj: Any) -> str:
  """A short, stable hash of a JSON-ready object."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def hash_tree(tree: Any) -> str:
  """16 hex digits identifying a pytree of arrays by every leaf's path, dtype, shape and bytes
  (e.g. a network's variables, or a checkpointed train state).

  A ``jax.Array`` spread over several processes must be replicated (as a trained state is):
  it is hashed by this process's copy, so every process gets the same hash.
  """
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      if not leaf.is_fully_replicated:
        raise ValueError(f'hash_tree: {jax.tree_util.keystr(path)} is sharded over processes; '
                         'only replicated arrays can be hashed by one process')
      leaf = leaf.addressable_data(0)
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def as_json(obj: Any) -> Any:
  """``obj`` as it reads back from JSON (tuples become lists), so a recorded config compares
  equal to a freshly built one."""
  return json.loads(json.dumps(obj, sort_keys=True))


def differences(expected: Any, found: Any, path: str = '') -> list[str]:
  """One 'a.b: expected ..., found ...' line per leaf where two JSON-like configs differ.

  Nested dicts are compared key by key, so a mismatch names the very fields that changed;
  a key present on one side only is shown as missing.
  """
  if isinstance(expected, Mapping) and isinstance(found, Mapping):
    lines = []
    for key in sorted(set(expected) | set(found), key=str):
      where = f'{path}.{key}' if path else str(key)
      if key not in found:
        lines.append(f'{where}: expected {expected[key]!r}, missing')
      elif key not in expected:
        lines.append(f'{where}: not expected, found {found[key]!r}')
      else:
        lines += differences(expected[key], found[key], where)
    return lines
  expected, found = as_json(expected), as_json(found)
  return [] if expected == found else [f'{path}: expected {expected!r}, found {found!r}']


@dataclasses.dataclass(frozen=True)
class AlphaSchedule:
  """How a layer's mutation strength moves over its generations, as evosax's ``std_schedule``:
  an optax schedule read at the generation counter
  (:func:`decouple_jax.search.layer.alpha_schedule`).

  Attributes:
    name: 'constant' (the paper: ``alpha`` at every generation), 'linear' or 'cosine' (from
      ``alpha`` at the layer's first generation to ``end`` x ``alpha`` at its last).
    end: the last generation's alpha as a fraction of ``alpha`` ('linear' and 'cosine').
  """
  name: str = 'constant'
  end: float = 1.0

  def __post_init__(self):
    _check_choice('name', self.name, ALPHA_SCHEDULES)
    _check_amounts(self, 'end')
    if self.name == 'constant' and self.end != 1.0:
      raise ConfigError(f"end={self.end!r}: a 'constant' schedule has no end; set name to "
                        "'linear' or 'cosine'")


@dataclasses.dataclass(frozen=True)
class LayerSchedule:
  """Search settings of one search layer (paper appendix A.2; docs/method.md section 3).

  Attributes:
    generations: G_l.
    alpha: mutation strength of refinement children (at the first generation; see
      ``alpha_schedule``).
    boost: exploratory children mutate with alpha * boost.
    blur: passes of 3x3 average pooling after mutation (0 for the logits).
    alpha_schedule: how alpha moves over the generations (default: constant).
  """
  generations: int
  alpha: float
  boost: float
  blur: int
  alpha_schedule: AlphaSchedule = AlphaSchedule()

  def __post_init__(self):
    _check_counts(self, 0, 'generations', 'blur')
    _check_amounts(self, 'alpha', 'boost')


# The paper's search layers, keyed by the search network's taps (``ModelConfig.tap_names``).
PAPER_SCHEDULE = {
    'block0': LayerSchedule(generations=300, alpha=0.3, boost=5.0, blur=5),
    'block1': LayerSchedule(generations=100, alpha=0.2, boost=3.0, blur=1),
    'block2': LayerSchedule(generations=100, alpha=0.1, boost=3.0, blur=1),
    'logits': LayerSchedule(generations=10, alpha=0.1, boost=1.0, blur=0),
}


def _check_layers(name: str, layers: Mapping[str, Any], taps: tuple[str, ...]) -> dict:
  """``layers`` in tap order, refused unless it has one :class:`LayerSchedule` per tap."""
  if set(layers) != set(taps):
    raise ConfigError(f'{name}: needs one schedule per tap of the search network {list(taps)}, '
                      f'got {list(layers)}')
  wrong = [k for k, v in layers.items() if not isinstance(v, LayerSchedule)]
  if wrong:
    raise ConfigError(f'{name}: {wrong} must be LayerSchedule(generations, alpha, boost, blur)')
  return FrozenDict((k, layers[k]) for k in taps)


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
  """One search operator, chosen by name from the registry
  (:mod:`decouple_jax.search.registry`), and its parameters.

  Attributes:
    name: a name registered for the operator's kind (``registry.names(kind)`` lists them).
    params: the operator's keyword arguments (numbers, strings, booleans). The name and
      params are part of the search config, so of every store's and run's identity.
  """
  name: str
  params: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, 'params', FrozenDict(self.params))
    bad = {k: v for k, v in self.params.items()
           if not isinstance(v, (bool, int, float, str)) or
           (isinstance(v, float) and not math.isfinite(v))}
    if bad:
      raise ConfigError(f'params={bad!r}: an operator parameter must be a finite number, a '
                        'string or a boolean')


@dataclasses.dataclass(frozen=True)
class OperatorsConfig:
  """The search's operators by kind (signatures in :mod:`decouple_jax.search.registry`); the
  defaults are the paper's.

  Attributes:
    mutation: the unit perturbation of every child of a generation ('gaussian').
    crossover: a child from its two parents ('mean').
    smoothing: the 3x3 blur of block activations ('box').
    selection: the parents kept each generation ('top_k').
    fitness: a candidate's LOSS ('cross_entropy'; 'anchored' adds ``weight`` x its distance
      from the image's own activation, beyond the paper).
  """
  mutation: OperatorConfig = OperatorConfig('gaussian')
  crossover: OperatorConfig = OperatorConfig('mean')
  smoothing: OperatorConfig = OperatorConfig('box')
  selection: OperatorConfig = OperatorConfig('top_k')
  fitness: OperatorConfig = OperatorConfig('cross_entropy')


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """The layer-wise evolutionary search (paper section 3.1, appendices A.2 and A.4;
  docs/method.md section 3).

  Attributes:
    model: the untrained search network (paper: 1 ConvGroup = 2 convs per block).
    layers: one :class:`LayerSchedule` per search layer, keyed by the search network's taps
      (``model.tap_names``: 'block0', 'block1', 'block2', 'logits'), so
      ``--config.search.layers.block1.generations=100`` changes one layer.
    operators: the operators, by registered name and parameters (:class:`OperatorsConfig`).
    population: n_pop; must equal top_k + n_explore + n_refine (paper: 240).
    top_k: parents kept unchanged each generation (elitism; paper: 20).
    n_explore: exploratory children, mutation alpha * boost (paper: 100).
    n_refine: refinement children, mutation alpha (paper: 120).
    refine_pool: where refinement parents come from: 'parents_and_explorers' (the paper's
      pseudo-code; default) or 'parents' (its prose).
    init_noise: std of the initial population's input noise, as a fraction of each channel's
      spatial std in the (normalised) input image.
    seed_next: how layer l+1's population starts: 'best' (the best candidate's downstream
      activation copied n_pop times; default) or 'population' (the final population's own
      downstream activations).
    blur_padding: 'zeros' (zero padding counted in the average, as PyTorch's avg_pool2d;
      default) or 'valid' (average over the in-image neighbours only).
    blur_target: what the spatial smoothing acts on (the paper reads both ways): 'noise'
      (default: only the mutation noise, then added to the crossover; section 3.1's wording)
      or 'candidate' (the whole child after mutation, the appendix's operator order, which
      compounds along a lineage; the gap study in BENCHMARKS.md measured the two).
    method: how each layer's candidates are improved: 'evolution' (the paper's search) or
      'gradient' (a control: descent on the activation through the same network and fitness,
      one step per candidate evolution would score; :mod:`decouple_jax.search.gradient`).
    bn_mode: search-network BatchNorm: 'inference' (initial statistics; candidates stay
      independent; default) or 'batch' (statistics over each image's population).
    norm_eps: epsilon of the per-sample normalisation (1e-5).
    seed: base seed; every image's randomness derives from (seed, its dataset index).
    network_seed: seed of the untrained search network's random filters; None (default):
      ``seed``, so a search seed also picks its network unless this fixes one (many searches
      in one network; a value equal to ``seed`` is kept as None). Read it as
      :attr:`untrained_network_seed`.
    average_of: R, searches per image (a count, >= 1; beyond the paper): each image's targets
      are the elementwise mean of R searches of it that differ only in their randomness, all
      in the one network of :attr:`untrained_network_seed`; 1 (default) is the paper's single
      search. Costs R times the search's compute; what the searches agree on survives the
      mean, their seed-specific drift shrinks (by about 1/sqrt(R) if independent).
    batch_images: images searched at once per device: 'auto' (default) as many as the
      compiled search fits in the device's memory (:mod:`decouple_jax.memory`), or a number,
      checked against that memory. A string of digits (what ``--config.search.batch_images=16``
      gives, the field's default being a string) counts as that number. Speed-only (an
      image's targets move only by float rounding with its batch): in no identity.
    skip_identity_convs: skip convolutions whose kernel is exactly the identity (checked once
      on the actual weights).
    store_dtype: 'float32', 'float16' or 'bfloat16' for the cached targets.
    chunk_size: images per store chunk (the unit of resumption).
  """
  model: ModelConfig = ModelConfig()
  layers: dict[str, LayerSchedule] = dataclasses.field(
      default_factory=lambda: dict(PAPER_SCHEDULE))
  operators: OperatorsConfig = OperatorsConfig()
  population: int = 240
  top_k: int = 20
  n_explore: int = 100
  n_refine: int = 120
  refine_pool: str = 'parents_and_explorers'
  init_noise: float = 0.1
  seed_next: str = 'best'
  blur_padding: str = 'zeros'
  blur_target: str = 'noise'
  method: str = 'evolution'
  bn_mode: str = 'inference'
  norm_eps: float = 1e-5
  seed: int = 0
  network_seed: int | None = added_later(None)
  average_of: int = added_later(1)
  batch_images: int | str = speed_only('auto')
  skip_identity_convs: bool = True
  store_dtype: str = 'float32'
  chunk_size: int = 1024

  def __post_init__(self):
    if isinstance(self.batch_images, str) and self.batch_images.isdigit():
      object.__setattr__(self, 'batch_images', int(self.batch_images))
    if self.batch_images != 'auto' and not (isinstance(self.batch_images, int) and
                                            self.batch_images >= 1):
      raise ConfigError(f"batch_images={self.batch_images!r}: must be 'auto' or an integer "
                        '>= 1')
    _check_counts(self, 1, 'top_k', 'chunk_size', 'average_of')
    _check_counts(self, 0, 'n_explore', 'n_refine')
    if self.n_explore + self.n_refine < 1:
      raise ConfigError(f'n_explore={self.n_explore} and n_refine={self.n_refine}: a '
                        'generation needs at least one child; raise either')
    if self.top_k + self.n_explore + self.n_refine != self.population:
      raise ConfigError(
          f'population={self.population} != top_k {self.top_k} + n_explore '
          f'{self.n_explore} + n_refine {self.n_refine}; make the parts add up '
          f'(e.g. population={self.top_k + self.n_explore + self.n_refine})')
    object.__setattr__(self, 'layers', _check_layers('layers', self.layers,
                                                     self.model.tap_names))
    _check_choice('refine_pool', self.refine_pool, REFINE_POOLS)
    _check_choice('seed_next', self.seed_next, SEED_NEXT)
    _check_choice('blur_padding', self.blur_padding, BLUR_PADDINGS)
    _check_choice('blur_target', self.blur_target, BLUR_TARGETS)
    _check_choice('method', self.method, SEARCH_METHODS)
    _check_choice('bn_mode', self.bn_mode, BN_MODES)
    _check_choice('store_dtype', self.store_dtype, STORE_DTYPES)
    _check_amounts(self, 'init_noise')
    _check_amounts(self, 'norm_eps', positive=True)
    if self.network_seed is not None and not (isinstance(self.network_seed, int) and
                                              self.network_seed >= 0):
      raise ConfigError(f'network_seed={self.network_seed!r}: must be None (the search\'s '
                        'seed) or an integer >= 0')
    if self.network_seed == self.seed:
      # The seed's own network: one computation, so one config and one identity.
      object.__setattr__(self, 'network_seed', None)

  @property
  def untrained_network_seed(self) -> int:
    """The seed the untrained search network's random filters are drawn from:
    ``network_seed``, or ``seed`` when that is None."""
    return self.seed if self.network_seed is None else self.network_seed


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  """The learning phase: regress block outputs onto searched targets (paper section 4.2,
  appendix A.3; docs/method.md section 4).

  Attributes:
    model: the learning network; its block widths must equal the search network's, since the
      targets have the search network's shapes. ``tap``/``tap_scale`` choose where the
      student is compared with the targets (see docs/method.md section 4).
    train: optimiser and run settings.
    variant: 'all_layers' (MSE on blocks 0, 1, 2; default) or 'skip_block0' (blocks 1, 2).
    mse_coef: coefficient of each block's MSE (paper: 1.0); the block terms are averaged over
      the supervised blocks.
    mse_reduction: 'mean' (squared error averaged over a target's elements; default) or 'sum'
      (summed over its elements); both are averaged over the batch.
    kl_weight: lambda of the KL(p_hat || softmax(head(stop_gradient(block 2)))) term (0.03).
    augmented_targets: what a view made by ``train.augment`` regresses onto: 'reuse' (its
      image's cached targets unchanged; the paper), or beyond the paper, so that a target stays
      over the part of the view it was searched for: 'flip' (mirrored left-right when the
      view was; needs ``train.flip``) or 'follow' (also shifted with the view's crop, to the
      nearest cell of each block's map; a shift under half a cell moves nothing, so on 32-pixel
      CIFAR with 2-pixel crops only block 0's 15x15 map moves, and with skip_block0 'follow'
      trains exactly as 'flip').
    device_targets_gb: keep the whole target store on the device when it needs at most this
      many GB; otherwise stream batches from disk with prefetch.
  """
  model: ModelConfig = ModelConfig(convs_per_block=6, tap='pre_gelu', tap_scale=True)
  train: TrainConfig = TrainConfig()
  variant: str = 'all_layers'
  mse_coef: float = 1.0
  mse_reduction: str = 'mean'
  kl_weight: float = 0.03
  augmented_targets: str = added_later('reuse')
  device_targets_gb: float = speed_only(4.0)

  def __post_init__(self):
    _check_choice('variant', self.variant, STUDENT_VARIANTS)
    _check_choice('mse_reduction', self.mse_reduction, MSE_REDUCTIONS)
    _check_choice('augmented_targets', self.augmented_targets, AUGMENTED_TARGETS)
    moves = {'flip': self.train.augment and self.train.flip, 'follow': self.train.augment}
    if not moves.get(self.augmented_targets, True):
      raise ConfigError(
          f'augmented_targets={self.augmented_targets!r} moves the targets with the augmented '
          'views, but this student sees no such view: set train.augment=True (and for '
          "'flip', train.flip=True) or augmented_targets='reuse'")
    _check_amounts(self, 'mse_coef', 'kl_weight', 'device_targets_gb')


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
  """What ``launch/reproduce.py`` runs per seed (paper section 4.3; docs/method.md section 6).

  Attributes:
    sgd_convs: convs per block of the SGD baselines tried; the table reports the one with the
      best mean hold-out accuracy (paper: best of 2, 4 and 6).
    variants: student variants trained ('all_layers', 'skip_block0').
    holdout_search: also search the hold-out split, so the student's diagnostics include
      how well it fits targets of images it never trained on (costs holdout/train of the
      training search).
  """
  sgd_convs: tuple[int, ...] = (2, 4, 6)
  variants: tuple[str, ...] = ('all_layers', 'skip_block0')
  holdout_search: bool = True

  def __post_init__(self):
    if not self.sgd_convs or not self.variants:
      raise ConfigError('sgd_convs and variants: each needs at least one entry')
    if not set(self.sgd_convs) <= set(CONVS_PER_BLOCK):
      raise ConfigError(f'sgd_convs={self.sgd_convs}: convs per block must be 2, 4 or 6')
    for variant in self.variants:
      _check_choice('variants', variant, STUDENT_VARIANTS)


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  """What ``launch/analyze.py`` measures (paper sections 3.2, 4.4, 4.5; docs/method.md section 7).

  Attributes:
    n_images: first training images searched by the scaling and diversity analyses (paper:
      1000).
    populations: population sizes of the scaling and accuracy sweeps; empty: half, one and two
      times the search's.
    generations: multipliers of every layer's generations in those sweeps.
    n_runs: independent search runs of the diversity analysis.
    threshold: true-class probability a diversity run's candidate must exceed to be kept.
    train_images: if > 0, the accuracy and trajectory analyses search and train on only the
      first ``train_images`` training images (they search the whole split otherwise).
    probe_images: training images, and as many hold-out images (searched too), on which the
      trajectory analysis measures the block outputs after every epoch.
  """
  n_images: int = 1000
  populations: tuple[int, ...] = ()
  generations: tuple[float, ...] = (0.5, 1.0, 2.0)
  n_runs: int = 4
  threshold: float = 0.5
  train_images: int = 0
  probe_images: int = 1000

  def __post_init__(self):
    _check_counts(self, 1, 'n_images', 'n_runs', 'probe_images')
    _check_counts(self, 0, 'train_images')
    _check_fraction(self, 'threshold')
    if not self.generations or not all(math.isfinite(g) and g > 0 for g in self.generations):
      raise ConfigError(f'generations={self.generations}: needs finite positive multipliers')
    if any(p < 3 for p in self.populations):
      raise ConfigError(f'populations={self.populations}: a population needs at '
                        'least 3 candidates (parents, explorers, refiners)')


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
  """Search and learning in a loop (``launch/feedback.py``; the paper's open question 1).

  Round 1 is the paper's pipeline: search in the untrained network, train a student. Round r
  searches every training image again, in round r-1's trained student (its taps are the search
  space, its head the fitness), and trains round r's student on those targets.

  Attributes:
    rounds: how many rounds (>= 1).
    warm_start: round r's student starts from round r-1's weights (True) or afresh (False).
    bn_stats: the BatchNorm statistics a trained student is searched with (inference form):
      'recompute' (averaged over a training-mode pass of whole batches of the training
      split; :mod:`decouple_jax.learn.bn_stats`) or 'running' (the running averages training
      left, which with momentum 0.6 remember only the last few batches).
    bn_eps: BatchNorm epsilon of a trained student while it is searched in. Its own 1e-12
      is harmless under batch statistics, where a channel constant over the data (MNIST's
      blank background) is also constant over the batch; in inference form a candidate's
      deviation in such a channel is multiplied by ~1e6, and noisy inputs gave logits of
      1e30. 1e-4 caps that at 100x and moves a channel of variance 0.01 by 0.5%.
    layers: the search schedule of rounds >= 2 (a trained network starts much closer to its
      targets), keyed as ``search.layers``; empty: ``search.layers``.
  """
  rounds: int = 3
  warm_start: bool = True
  bn_stats: str = 'recompute'
  bn_eps: float = 1e-4
  layers: dict[str, LayerSchedule] = dataclasses.field(default_factory=FrozenDict)

  def __post_init__(self):
    object.__setattr__(self, 'layers', FrozenDict(self.layers))
    _check_counts(self, 1, 'rounds')
    _check_choice('bn_stats', self.bn_stats, BN_STATS_SOURCES)
    _check_amounts(self, 'bn_eps', positive=True)


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
  """What ``launch/ensemble.py`` trains and measures (the paper's open question 2: do diverse
  searches give diverse models?); :mod:`decouple_jax.ensemble`.

  Member i (i = 0 .. members - 1) of each family, with n the search network's seed
  (``search.untrained_network_seed``: ``search.network_seed``, by default ``search.seed``):
    'searches': a student (train seed ``student.train.seed``) on the search with seed
      ``search.seed + i`` in the network of seed n + i: the members differ by their targets
      alone, which differ by their search and by the random network they were searched in.
    'searches_one_network': a student (train seed ``student.train.seed``) on the search with
      seed ``search.seed + i`` in the one network of seed n: the targets differ by their
      search alone (the paper's many solutions in one network). Member 0 is that of
      'searches'.
    'searches_and_seeds': a student with train seed ``student.train.seed + i`` on the search
      of 'searches' member i: both vary.
    'student_seeds': a student with train seed ``student.train.seed + i`` on the one search
      with seed ``search.seed`` in the network of seed n: what training alone varies, at the
      searches' cost.
    'sgd': the student's network trained end to end with SGD, train seed
      ``sgd.train.seed + i`` (a deep ensemble).

  Attributes:
    members: K, the members of each family (>= 2: diversity needs pairs).
    families: which families run, from :data:`ENSEMBLE_FAMILIES`.
    ece_bins: equal-width confidence bins of the expected calibration error.
    cka_images: first test images whose block outputs linear CKA compares (all test images
      if fewer).
  """
  members: int = 4
  families: tuple[str, ...] = ENSEMBLE_FAMILIES
  ece_bins: int = 15
  cka_images: int = 1000

  def __post_init__(self):
    _check_counts(self, 2, 'members', 'cka_images')
    _check_counts(self, 1, 'ece_bins')
    if not self.families or len(set(self.families)) != len(self.families):
      raise ConfigError(f'families={self.families!r}: name each family once, at least one, '
                        f'from {ENSEMBLE_FAMILIES}')
    for family in self.families:
      _check_choice('families', family, ENSEMBLE_FAMILIES)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything one experiment needs; ``configs/*.py`` build this as a ConfigDict.

  Attributes:
    name: label used in tables and plots (e.g. 'mnist:cpu').
    scale: 'paper' for the paper's settings, otherwise a note that the run is scaled down
      (printed next to every number it produces).
    data: the data set and its splits.
    sgd: the end-to-end SGD baseline.
    search: the search phase.
    student: the learning phase on the searched targets.
    seeds: seeds of repeated runs (tables report mean +- std over them).
    reproduce: what ``launch/reproduce.py`` runs for each seed.
    analysis: what ``launch/analyze.py`` measures.
    feedback: the search-learn loop of ``launch/feedback.py``.
    ensemble: the ensembles of ``launch/ensemble.py``.
  """
  name: str = 'experiment'
  scale: str = 'paper'
  data: DataConfig = DataConfig()
  sgd: SGDConfig = SGDConfig()
  search: SearchConfig = SearchConfig()
  student: StudentConfig = StudentConfig()
  seeds: tuple[int, ...] = (0,)
  reproduce: ReproduceConfig = ReproduceConfig()
  analysis: AnalysisConfig = AnalysisConfig()
  feedback: FeedbackConfig = FeedbackConfig()
  ensemble: EnsembleConfig = EnsembleConfig()

  def __post_init__(self):
    if not self.seeds:
      raise ConfigError('seeds=(): give at least one seed, e.g. (0,)')
    if self.feedback.layers:
      _check_layers('feedback.layers', self.feedback.layers, self.search.model.tap_names)
