"""Attention sparsity by layer, head and key kind, and the fidelity of a compressed step.

The paper's argument for uniform budgets rests on one measurement: in GUI prompts, attention is
sparse, and about equally sparse in every layer. This module measures it on any model guikv loads.

Every statistic is a ratio of sums over a set of query rows (the observation window by default, or
every prompt row with `full_attention_counts`), so samples and chunks add up exactly. For one layer
and head, with `a[i, j]` the softmax weight of query row i on key j and V the causally visible
(i, j) pairs (j <= i):

- sparsity: the share of visible weights at most `threshold` (VL-Cache's rule);
- keys_for_mass: the share of visible keys needed to hold `mass` of each row's attention, i.e.
  for every row the fewest keys, largest weights first, whose weights sum to at least `mass`
  (the row's "mass set"), counted over all rows.

Split by key kind (text, an earlier screenshot, the current screenshot; see `TokenLayout`):

- sparsity of a kind: the share of that kind's visible weights at most `threshold`;
- mass_share: the share of the rows' attention mass that lands on that kind's keys;
- set_share: the share of the mass sets' members that are that kind's keys;
- keys_for_mass of a kind: the share of that kind's visible keys that are in the mass sets;
- key_share: the share of visible keys that are that kind's (what mass_share would be if
  attention were uniform).

The window statistics come from forward hooks that rebuild the last `window` queries from each
layer's input, exactly as compression scores them, so any attention implementation and any prompt
size work, chunk by chunk. `full_attention_counts` reads eager attention weights instead.

For `guikv compare`, `compare_methods` (or `iter_compare_methods`, one result at a time) runs one
input under several (method, budget) pairs and measures each output's fidelity to the full cache
(`token_agreement`, `kl_divergence`) and, on request, the share of the positions decoding needed
that each method kept (`guikv.recall`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guikv.attention import iter_window_probs, window_queries
from guikv.config import CompressionConfig
from guikv.hooks import LayerForward, attention_hooks
from guikv.layout import TokenLayout
from guikv.models.adapters import adapter_for, text_config
from guikv.recall import NO_DECODE_STEP, oracle_recall
from guikv.step import StepResult, run_step

KINDS: tuple[str, ...] = ("text", "previous", "current")
"""Key kinds, indexed like `TokenLayout.token_kinds()`: text, an earlier screenshot, the current one."""

DEFAULT_THRESHOLD = 0.01
"""VL-Cache's sparsity threshold: a weight at most this is counted as negligible."""

DEFAULT_MASS = 0.9
"""The share of each row's attention the mass set must hold."""

HIGH_SPARSITY = 0.8
"""Mean layer sparsity from which the verdict calls sparsity high."""

UNIFORM_SPREAD = 0.10
"""Largest max - min spread of layer sparsity the verdict still calls nearly uniform (10 points)."""

CONCENTRATED_SHARE = 0.5
"""Attention counts as concentrated when its mass set needs under this share of what uniform
attention would need (`mass` of the keys)."""

FULL_MAX_BYTES = 4 << 30
"""Largest total size of the eager attention weights (all layers, heads, L x L) `--full` accepts."""

CHUNK_ELEMENTS = 1 << 23
"""Attention probabilities processed at once (32 MiB in fp32): sorting them needs a few times that."""


def count_rows(
    probs: torch.Tensor, positions: torch.Tensor, kinds: torch.Tensor, threshold: float, mass: float
) -> dict[str, torch.Tensor]:
    """The sums behind every statistic, for some query rows of one layer.

    `probs` [H, R, L] are softmax rows (entries a row cannot see may hold anything: they are
    masked here), `positions` [R] the rows' token positions, `kinds` [L] each key's kind.
    Returns float64 tensors: `rows` [H], and per kind `visible`, `low` (weights <= threshold),
    `mass` (attention mass) and `needed` (members of the rows' mass sets), each [H, len(KINDS)].
    """
    heads, rows, length = probs.shape
    device = probs.device
    probs = probs.float()
    onehot = F.one_hot(kinds.to(device), len(KINDS)).float()
    visible = torch.arange(length, device=device)[None, :] <= positions.to(device)[:, None]
    probs = probs.masked_fill(~visible, 0.0)
    visible_f = visible.float()
    low = ((probs <= threshold) & visible).float() @ onehot
    ordered, order = probs.sort(dim=-1, descending=True, stable=True)
    before = ordered.cumsum(dim=-1) - ordered
    member = torch.zeros_like(probs).scatter_(-1, order, (before < mass).float()) * visible_f
    return {
        "rows": torch.full((heads,), float(rows), dtype=torch.float64),
        "visible": (visible_f @ onehot).sum(dim=0).double().cpu().expand(heads, -1).clone(),
        "low": low.sum(dim=1).double().cpu(),
        "mass": (probs @ onehot).sum(dim=1).double().cpu(),
        "needed": (member @ onehot).sum(dim=1).double().cpu(),
    }


@dataclass
class AttentionCounts:
    """Per layer and head, the sums of `count_rows` over every query row seen so far.

    `rows` is [layers, heads]; `visible`, `low`, `mass` and `needed` are [layers, heads, kinds].
    Sums add, so counts of several chunks or samples merge with `merge`.
    """

    rows: torch.Tensor
    visible: torch.Tensor
    low: torch.Tensor
    mass: torch.Tensor
    needed: torch.Tensor

    @classmethod
    def zeros(cls, num_layers: int, num_heads: int) -> AttentionCounts:
        """Empty counts for a model shape."""
        per_kind = (num_layers, num_heads, len(KINDS))
        return cls(
            rows=torch.zeros(num_layers, num_heads, dtype=torch.float64),
            visible=torch.zeros(per_kind, dtype=torch.float64),
            low=torch.zeros(per_kind, dtype=torch.float64),
            mass=torch.zeros(per_kind, dtype=torch.float64),
            needed=torch.zeros(per_kind, dtype=torch.float64),
        )

    @property
    def num_layers(self) -> int:
        """Layers counted."""
        return int(self.rows.shape[0])

    @property
    def num_heads(self) -> int:
        """Query heads per layer."""
        return int(self.rows.shape[1])

    def add(
        self,
        layer: int,
        probs: torch.Tensor,
        positions: torch.Tensor,
        kinds: torch.Tensor,
        threshold: float,
        mass: float,
    ) -> None:
        """Count query rows `probs` [H, R, L] (at token `positions` [R]) of one layer."""
        sums = count_rows(probs, positions, kinds, threshold, mass)
        for name, value in sums.items():
            getattr(self, name)[layer] += value

    def merge(self, other: AttentionCounts) -> None:
        """Add another sample's counts (same model shape)."""
        for name in ("rows", "visible", "low", "mass", "needed"):
            getattr(self, name).add_(getattr(other, name))

    def per_head(self) -> dict[str, Any]:
        """The statistics per layer and head: overall [layers, heads] tensors under `sparsity` and
        `keys_for_mass`, and per kind [layers, heads] tensors under `kinds[kind][statistic]`.
        A ratio with nothing to count (a kind absent from the prompt) is NaN."""
        visible = self.visible.sum(-1)
        needed = self.needed.sum(-1)
        kinds = {}
        for index, kind in enumerate(KINDS):
            kinds[kind] = {
                "key_share": _ratio(self.visible[..., index], visible),
                "sparsity": _ratio(self.low[..., index], self.visible[..., index]),
                "mass_share": _ratio(self.mass[..., index], self.rows),
                "set_share": _ratio(self.needed[..., index], needed),
                "keys_for_mass": _ratio(self.needed[..., index], self.visible[..., index]),
            }
        return {
            "sparsity": _ratio(self.low.sum(-1), visible),
            "keys_for_mass": _ratio(needed, visible),
            "kinds": kinds,
        }


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, NaN where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.nan)


@dataclass
class SampleAttention:
    """One prompt's counts and what it held: its id, length, screenshots, tokens per kind and
    how many query rows were counted (the window, or every row)."""

    sample_id: str
    prompt_tokens: int
    num_images: int
    tokens: dict[str, int]
    query_rows: int
    counts: AttentionCounts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the fields and this sample's layer sparsity (mean over heads)."""
        layer_sparsity = self.counts.per_head()["sparsity"].nanmean(dim=1)
        return {
            "sample_id": self.sample_id,
            "prompt_tokens": self.prompt_tokens,
            "num_images": self.num_images,
            "tokens": self.tokens,
            "query_rows": self.query_rows,
            "layer_sparsity": [_number(v) for v in layer_sparsity.tolist()],
        }


def _layout_kinds(model: nn.Module, inputs: dict[str, Any]) -> tuple[TokenLayout, torch.Tensor]:
    """The layout of the sequence the decoder layers see for `inputs`, and each token's kind."""
    layout = adapter_for(model).prompt_layout(model.config, inputs["input_ids"], inputs)
    return layout, layout.token_kinds()


def _sample(
    sample_id: str, layout: TokenLayout, kinds: torch.Tensor, query_rows: int, counts: AttentionCounts
) -> SampleAttention:
    """A `SampleAttention` with the prompt's token count per kind."""
    tokens = {kind: int((kinds == index).sum()) for index, kind in enumerate(KINDS)}
    return SampleAttention(sample_id, layout.length, layout.num_images, tokens, query_rows, counts)


class _WindowProbe:
    """Hook state: after each layer's prefill, count its window rows' attention."""

    def __init__(
        self, model: nn.Module, kinds: torch.Tensor, window: int, threshold: float, mass: float
    ) -> None:
        self.attentions = adapter_for(model).attention_modules(model)
        self.kinds = kinds
        self.window = window
        self.threshold = threshold
        self.mass = mass
        heads = text_config(model.config).num_attention_heads
        self.counts = AttentionCounts.zeros(len(self.attentions), heads)

    def after_prefill(self, prefill: LayerForward) -> None:
        """Count one layer's window rows, from the prefill's own inputs."""
        queries = window_queries(
            prefill.attention, prefill.hidden_states, prefill.position_embeddings, self.window
        )
        first = prefill.length - self.window
        scaling = getattr(prefill.attention, "scaling", None)
        for start, probs in iter_window_probs(queries, prefill.keys, scaling, max_elements=CHUNK_ELEMENTS):
            positions = torch.arange(first + start, first + start + probs.shape[2])
            self.counts.add(prefill.index, probs[0], positions, self.kinds, self.threshold, self.mass)


def window_attention_counts(
    model: nn.Module,
    inputs: dict[str, Any],
    *,
    window: int = 8,
    threshold: float = DEFAULT_THRESHOLD,
    mass: float = DEFAULT_MASS,
    sample_id: str = "",
) -> SampleAttention:
    """Count the attention of the last `window` prompt rows in every layer, from one prefill.

    The queries are rebuilt from each attention module's input by a forward hook (as compression
    does), so the model may use any attention implementation; only logits for the last position
    are computed. `inputs` are the processor's outputs for one prompt (batch 1).
    """
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"expected one prompt, got a batch of {input_ids.shape[0]}")
    if not 1 <= window <= input_ids.shape[1]:
        raise ValueError(f"window {window} must be between 1 and the prompt length {input_ids.shape[1]}")
    layout, kinds = _layout_kinds(model, inputs)
    probe = _WindowProbe(model, kinds, window, threshold, mass)
    with torch.no_grad(), attention_hooks(probe.attentions, on_prefill=probe.after_prefill):
        model(**inputs, use_cache=True, logits_to_keep=1)
    if not bool((probe.counts.rows > 0).all()):
        raise ValueError("a decoder layer ran no prefill with a cache: no window attention was recorded")
    return _sample(sample_id, layout, kinds, window, probe.counts)


def full_attention_bytes(model: nn.Module, prompt_tokens: int) -> int:
    """Bytes of the eager attention weights of one prompt (every layer, head and L x L entry)."""
    text = text_config(model.config)
    itemsize = torch.finfo(model.dtype).bits // 8
    return text.num_hidden_layers * text.num_attention_heads * prompt_tokens**2 * itemsize


def full_attention_counts(
    model: nn.Module,
    inputs: dict[str, Any],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    mass: float = DEFAULT_MASS,
    last_rows: int | None = None,
    sample_id: str = "",
) -> SampleAttention:
    """Count eager attention weights (`output_attentions=True`) over every prompt row, or only
    the last `last_rows` rows. The model must use eager attention; weights of all layers are
    held at once (see `full_attention_bytes`)."""
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"expected one prompt, got a batch of {input_ids.shape[0]}")
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "eager":
        raise ValueError(f"full attention weights need eager attention, the model uses {implementation}")
    layout, kinds = _layout_kinds(model, inputs)
    length = layout.length
    rows = length if last_rows is None else min(last_rows, length)
    with torch.no_grad():
        attentions = model(**inputs, use_cache=False, output_attentions=True, logits_to_keep=1).attentions
    if not attentions or attentions[0] is None:
        raise ValueError("the model returned no attention weights (is it using eager attention?)")
    heads = attentions[0].shape[1]
    counts = AttentionCounts.zeros(len(attentions), heads)
    step = max(1, CHUNK_ELEMENTS // (heads * length))
    for layer, weights in enumerate(attentions):
        for start in range(length - rows, length, step):
            stop = min(start + step, length)
            counts.add(layer, weights[0, :, start:stop], torch.arange(start, stop), kinds, threshold, mass)
    return _sample(sample_id, layout, kinds, rows, counts)


def _number(value: float) -> float | None:
    """A JSON-safe float (NaN becomes None)."""
    return None if math.isnan(value) else float(value)


def _grid(values: torch.Tensor) -> list[list[float | None]]:
    """A [layers, heads] tensor as JSON-safe nested lists."""
    return [[_number(v) for v in row] for row in values.tolist()]


def _quantiles(values: torch.Tensor) -> dict[str, float | None]:
    """min, q1, median, q3 and max of a 1-D tensor, NaN-aware."""
    finite = values[~values.isnan()]
    if finite.numel() == 0:
        return dict.fromkeys(("min", "q1", "median", "q3", "max"))
    q = torch.quantile(finite, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=finite.dtype))
    return dict(zip(("min", "q1", "median", "q3", "max"), (float(v) for v in q), strict=True))


def _layer_mean(values: torch.Tensor) -> float | None:
    """Mean over heads of one layer's values, None when all are NaN."""
    return _number(float(values.nanmean())) if not values.isnan().all() else None


def _mean_of(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def verdict(
    layer_sparsity: Sequence[float], keys_for_mass: float, mass: float = DEFAULT_MASS
) -> dict[str, Any]:
    """Whether the measurements support the paper's claim that GUI attention is sparse, and about
    equally sparse in every layer.

    Three tests, all needed: high (mean layer sparsity at least `HIGH_SPARSITY`), nearly uniform
    (max - min at most `UNIFORM_SPREAD`) and concentrated (the mass set needs less than
    `CONCENTRATED_SHARE` of what uniform attention would, `mass` of the keys): in a long prompt even
    evenly spread attention puts every weight under the threshold, which the threshold rule alone
    would call sparse. The line also states the budget ratios VL-Cache would derive,
    `(1 - s_l) / mean(1 - s)`: a small sparsity spread can still mean very different layer budgets.
    """
    values = list(layer_sparsity)
    mean = statistics.fmean(values)
    low_layer = min(range(len(values)), key=values.__getitem__)
    high_layer = max(range(len(values)), key=values.__getitem__)
    spread = values[high_layer] - values[low_layer]
    density = [1.0 - v for v in values]
    mean_density = statistics.fmean(density)
    ratios = [d / mean_density for d in density] if mean_density > 0 else [1.0] * len(values)
    high = mean >= HIGH_SPARSITY
    uniform = spread <= UNIFORM_SPREAD
    concentrated = keys_for_mass < CONCENTRATED_SHARE * mass
    supports = high and uniform and concentrated
    line = (
        f"{'Supports' if supports else 'Does not support'} the paper's claim: sparsity is "
        f"{'high' if high else 'not high'} (mean {mean:.1%} {'>=' if high else '<'} {HIGH_SPARSITY:.0%}) and "
        f"{'nearly uniform' if uniform else 'not uniform'} across layers (spread {100 * spread:.1f} points "
        f"{'<=' if uniform else '>'} {100 * UNIFORM_SPREAD:.0f}; lowest layer {low_layer} at "
        f"{values[low_layer]:.1%}, highest layer {high_layer} at {values[high_layer]:.1%}); attention is "
        f"{'concentrated' if concentrated else 'diffuse'}: {mass:.0%} of it sits on {keys_for_mass:.1%} of "
        f"the keys (uniform attention: {mass:.0%}); VL-Cache would give layers {min(ratios):.2f}x to "
        f"{max(ratios):.2f}x the uniform budget."
    )
    return {
        "sparsity_mean": mean,
        "sparsity_min": values[low_layer],
        "sparsity_min_layer": low_layer,
        "sparsity_max": values[high_layer],
        "sparsity_max_layer": high_layer,
        "sparsity_spread": spread,
        "sparsity_std": statistics.pstdev(values),
        "vlcache_budget_ratio_min": min(ratios),
        "vlcache_budget_ratio_max": max(ratios),
        "keys_for_mass_mean": keys_for_mass,
        "high": high,
        "uniform": uniform,
        "concentrated": concentrated,
        "supports_claim": supports,
        "verdict": line,
    }


def sparsity_report(
    samples: Sequence[SampleAttention], *, threshold: float, mass: float, **meta: Any
) -> dict[str, Any]:
    """The JSON-ready report of `guikv analyze-attention` over one or more samples.

    Counts are pooled over every counted row of every sample; per head values are ratios of the
    pooled sums, layer values their mean over heads (as VL-Cache averages head sparsity), with
    the spread over heads as quantiles. `meta` (model, mode, window_size, ...) is stored as is.
    """
    if not samples:
        raise ValueError("no samples to report on")
    counts = AttentionCounts.zeros(samples[0].counts.num_layers, samples[0].counts.num_heads)
    for sample in samples:
        counts.merge(sample.counts)
    heads = counts.per_head()
    layers = []
    for layer in range(counts.num_layers):
        layers.append(
            {
                "layer": layer,
                "sparsity": _layer_mean(heads["sparsity"][layer]),
                "sparsity_heads": _quantiles(heads["sparsity"][layer]),
                "keys_for_mass": _layer_mean(heads["keys_for_mass"][layer]),
                "keys_for_mass_heads": _quantiles(heads["keys_for_mass"][layer]),
                "kinds": {
                    kind: {name: _layer_mean(values[layer]) for name, values in stats.items()}
                    for kind, stats in heads["kinds"].items()
                },
            }
        )
    layer_sparsity = [layer["sparsity"] for layer in layers if layer["sparsity"] is not None]
    keys_for_mass = _mean_of([layer["keys_for_mass"] for layer in layers])
    summary = verdict(layer_sparsity, keys_for_mass if keys_for_mass is not None else math.nan, mass)
    by_kind = {
        kind: {
            "tokens": sum(sample.tokens[kind] for sample in samples),
            **{
                name: _mean_of([layer["kinds"][kind][name] for layer in layers])
                for name in ("key_share", "sparsity", "mass_share", "set_share", "keys_for_mass")
            },
        }
        for kind in KINDS
    }
    return {
        "format": "guikv-sparsity/1",
        **meta,
        "threshold": threshold,
        "mass": mass,
        "kinds": list(KINDS),
        "num_layers": counts.num_layers,
        "num_heads": counts.num_heads,
        "samples": [sample.to_dict() for sample in samples],
        "layers": layers,
        "by_kind": by_kind,
        "heads": {
            "sparsity": _grid(heads["sparsity"]),
            "keys_for_mass": _grid(heads["keys_for_mass"]),
            "kinds": {
                kind: {name: _grid(values) for name, values in stats.items()}
                for kind, stats in heads["kinds"].items()
            },
        },
        "summary": summary,
    }


# ----------------------------------------------------------------------------------------------
# Fidelity of compressed steps to the full cache


def token_agreement(reference: Sequence[int], other: Sequence[int]) -> float:
    """Share of positions, up to the shorter length, where `other` equals `reference`.

    Two empty outputs agree fully; an empty output against a non-empty one not at all.
    """
    length = min(len(reference), len(other))
    if length == 0:
        return 1.0 if len(reference) == len(other) else 0.0
    return sum(a == b for a, b in zip(reference[:length], other[:length], strict=True)) / length


def kl_divergence(reference_logits: torch.Tensor, other_logits: torch.Tensor) -> float:
    """KL(reference || other) in nats between the softmax distributions of two logit vectors."""
    log_p = torch.log_softmax(reference_logits.double(), dim=-1)
    log_q = torch.log_softmax(other_logits.double(), dim=-1)
    return max(0.0, float((log_p.exp() * (log_p - log_q)).sum()))


@dataclass
class Fidelity:
    """One (method, budget) run of a step against the full cache.

    `result` is None when the budget cannot hold the method's window (`reason` says why).
    `tokens` are the generated token ids, `agreement` their `token_agreement` with the full cache's,
    `exact_match` whether the texts are equal, `kl` KL(full || this) of the first decoding step's
    next-token distribution (None when either run stopped after one token), `action_match` whether
    the first parsed actions are equal, `recall_per_layer` the oracle recall of each layer (mean
    over KV heads; only when `compare_methods` was asked for it), `recall_reason` why recall was
    asked for but has no value (`guikv.recall.NO_DECODE_STEP`).
    """

    method: str
    budget: float
    result: StepResult | None = None
    reason: str | None = None
    tokens: list[int] = field(default_factory=list)
    decode_logits: torch.Tensor | None = None
    agreement: float | None = None
    exact_match: bool | None = None
    kl: float | None = None
    action_match: bool | None = None
    action: str | None = None
    recall_per_layer: list[float] | None = None
    recall_reason: str | None = None

    @property
    def runnable(self) -> bool:
        """Whether the method could run at this budget."""
        return self.result is not None

    @property
    def recall(self) -> float | None:
        """Oracle recall, mean over layers and KV heads (None when not measured)."""
        layers = self.recall_per_layer
        return statistics.fmean(layers) if layers else None


def run_with_fidelity_probe(
    model: nn.Module,
    processor: Any,
    messages: Sequence[dict[str, Any]],
    config: CompressionConfig,
    max_new_tokens: int,
    record_positions: bool = False,
) -> Fidelity:
    """One step under `config`, with its output tokens and first decoding step's logits (and kept
    positions, with `record_positions`); a budget smaller than the window becomes a not-runnable
    `Fidelity` instead of an error."""
    try:
        result = run_step(
            model,
            processor,
            messages,
            config,
            max_new_tokens=max_new_tokens,
            keep_first_decode_logits=True,
            record_positions=record_positions,
        )
    except ValueError as error:
        if "fewer than window_size" not in str(error):
            raise
        return Fidelity(config.method, config.budget, reason=str(error))
    return Fidelity(
        config.method,
        config.budget,
        result,
        tokens=result.generated_ids,
        decode_logits=result.first_decode_logits,
    )


def iter_compare_methods(
    model: nn.Module,
    processor: Any,
    messages: Sequence[dict[str, Any]],
    pairs: Sequence[tuple[str, float]],
    *,
    max_new_tokens: int = 32,
    action_key: Callable[[str], tuple[Any, ...]] | None = None,
    base: CompressionConfig | None = None,
    progress: Callable[[str, float], None] | None = None,
    recall: bool = False,
) -> Iterator[Fidelity]:
    """Run one input with the full cache (once) and under every (method, budget) pair, yielding the
    full-cache run first and then one `Fidelity` per pair as each finishes, in order (so a caller
    can keep each result the moment it exists); a `full` pair reuses the reference run instead of
    running again. `action_key(text)` turns an output into a comparable tuple whose first item names
    the action (e.g. the first parsed action's fields); without it actions are not compared. `base`
    supplies the other config fields (window size, alpha, ...). `progress(method, budget)` is called
    before each run.

    With `recall=True` every run also gets its oracle recall (`Fidelity.recall_per_layer`): one more
    full-cache run, untimed so the reference's decode times stay clean, collects the decode steps'
    attention mass, and each run's kept positions are measured against it (then dropped). When the
    full-cache answer is one token there is no decode step to measure: every run's recall is None
    and its `recall_reason` says why.
    """
    base_fields = (base or CompressionConfig()).to_dict()

    def run(method: str, budget: float) -> Fidelity:
        if progress:
            progress(method, budget)
        config = CompressionConfig(**{**base_fields, "method": method, "budget": budget})
        return run_with_fidelity_probe(model, processor, messages, config, max_new_tokens, recall)

    reference = run("full", 100.0)
    if reference.result is None:
        raise ValueError(f"the full-cache run failed: {reference.reason}")
    mass = None
    if recall:
        if progress:
            progress("full (oracle attention)", 100.0)
        config = CompressionConfig(**{**base_fields, "method": "full", "budget": 100.0})
        oracle = run_step(model, processor, messages, config, max_new_tokens=max_new_tokens, oracle_mass=True)
        mass = oracle.oracle_mass
        if mass is None:
            reference.recall_reason = NO_DECODE_STEP
        else:
            reference.recall_per_layer = oracle_recall(reference.result.kept_positions, mass)
        reference.result.kept_positions.clear()
    reference_key = action_key(reference.result.text) if action_key else None
    if reference_key:
        reference.action = str(reference_key[0])
    yield reference
    for method, budget in pairs:
        if method == "full":
            fidelity = Fidelity(
                "full",
                budget,
                reference.result,
                tokens=reference.tokens,
                decode_logits=reference.decode_logits,
                recall_per_layer=reference.recall_per_layer,
                recall_reason=reference.recall_reason,
            )
        else:
            fidelity = run(method, budget)
            if fidelity.result is not None and recall:
                if mass is None:
                    fidelity.recall_reason = NO_DECODE_STEP
                else:
                    fidelity.recall_per_layer = oracle_recall(fidelity.result.kept_positions, mass)
                fidelity.result.kept_positions.clear()
        if fidelity.result is not None:
            fidelity.agreement = token_agreement(reference.tokens, fidelity.tokens)
            fidelity.exact_match = fidelity.result.text == reference.result.text
            if reference.decode_logits is not None and fidelity.decode_logits is not None:
                fidelity.kl = kl_divergence(reference.decode_logits, fidelity.decode_logits)
            if action_key is not None:
                key = action_key(fidelity.result.text)
                fidelity.action = str(key[0]) if key else None
                fidelity.action_match = key == reference_key
        yield fidelity


def compare_methods(
    model: nn.Module,
    processor: Any,
    messages: Sequence[dict[str, Any]],
    pairs: Sequence[tuple[str, float]],
    *,
    max_new_tokens: int = 32,
    action_key: Callable[[str], tuple[Any, ...]] | None = None,
    base: CompressionConfig | None = None,
    progress: Callable[[str, float], None] | None = None,
    recall: bool = False,
) -> tuple[Fidelity, list[Fidelity]]:
    """`iter_compare_methods` run to the end: the full-cache run and one `Fidelity` per pair, in
    order."""
    reference, *runs = iter_compare_methods(
        model,
        processor,
        messages,
        pairs,
        max_new_tokens=max_new_tokens,
        action_key=action_key,
        base=base,
        progress=progress,
        recall=recall,
    )
    return reference, runs
