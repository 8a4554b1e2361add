"""Flan mixtures: examples-proportional rates with per-task caps, and weighted submixtures.

    add_mixture("cot", [("gsm8k", 100_000), ("esnli", 100_000)])        # rate = min(examples, cap)
    add_mixture("flan", [("flan2021", 0.4), ("t0", 0.32), ("cot", 0.05)])  # submixtures scaled to weights

Rates are computed when first needed (counting examples may read data), then cached.
"""

import functools

import seqio

from flan_jax.errors import UserError

_COMPONENTS: dict[str, list] = {}


def add_mixture(name: str, components: list, split: str = "train") -> seqio.Mixture:
  """Register a mixture of (task, cap) pairs, or of (mixture, weight) pairs. A cap of None means no cap."""
  if not components:
    raise UserError(f"mixture {name}: no components")
  kinds = {"mixture" if c in seqio.MixtureRegistry.names() else "task" for c, _ in components}
  for component, _ in components:
    if component not in seqio.MixtureRegistry.names() and component not in seqio.TaskRegistry.names():
      raise UserError(f"mixture {name}: {component!r} is neither a registered task nor mixture")
  if len(kinds) > 1:
    raise UserError(f"mixture {name}: mix either (task, cap) pairs or (mixture, weight) pairs, not both")
  _COMPONENTS[name] = (list(components), split)
  rates.cache_clear()
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  task_names = list(rates_names(name))
  return seqio.MixtureRegistry.add(
      name, [(t, functools.partial(_rate_of, name, t)) for t in task_names])


def rates_names(name: str) -> list[str]:
  """The leaf task names of a mixture built here, in order."""
  components, _ = _COMPONENTS[name]
  names = []
  for component, _ in components:
    names += rates_names(component) if component in _COMPONENTS else [component]
  return names


def _num_examples(task_name: str, split: str) -> int:
  n = seqio.get_mixture_or_task(task_name).num_input_examples(split)
  if n is None:
    raise UserError(f"task {task_name}: number of {split!r} examples unknown, so its rate cannot be computed")
  return n


def any_rates(name: str) -> dict:
  """task name -> rate of any registered mixture: built here (rates below), or with seqio directly."""
  if name in _COMPONENTS:
    return rates(name)
  mixture = seqio.get_mixture_or_task(name)
  return {task.name: float(mixture.get_rate(task)) for task in mixture.tasks}


@functools.lru_cache(maxsize=None)
def rates(name: str) -> dict:
  """task name -> sampling rate. Caps: min(examples, cap). Weights: each submixture sums to its weight."""
  components, split = _COMPONENTS[name]
  out = {}
  for component, number in components:
    if component in _COMPONENTS:
      sub = rates(component)
      total = sum(sub.values())
      for task, rate in sub.items():
        out[task] = out.get(task, 0.0) + number * rate / total
    else:
      n = _num_examples(component, split)
      out[component] = float(n if number is None else min(n, number))
  return out


def _rate_of(mixture: str, task_name: str, task=None) -> float:
  del task
  return rates(mixture)[task_name]
