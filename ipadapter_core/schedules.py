"""Per-layer weights: the named schedules users know, and a readable text form for any layer.

Schedules are written against the SpatialTransformer index t (`LayerSite.spatial_index`: 0-15 on SD1.5,
0-10 on SDXL, in execution order input, middle, output), as ComfyUI_IPAdapter_plus defines them
(reference peers.md §1.5). One difference: the middle block is patched here (that pack never reaches it), so
"weak middle" and "strong middle" act on it as their names say.

InstantStyle (Wang et al. 2024) found the SDXL blocks that carry style (up_blocks.0.attentions.1 = output 1,
t=6) and layout (down_blocks.2.attentions.1 = input 8, t=3); for SD1.5 the pack's style blocks are t 0-3 and
9-15, composition t 4 (x0.25) and 5.
"""

import math
import re
from dataclasses import dataclass

from .layers import LAYERS

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
)
STYLE = {"sd15": {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 9: 1.0, 10: 1.0, 11: 1.0, 12: 1.0, 13: 1.0, 14: 1.0, 15: 1.0},
         "sdxl": {6: 1.0}}
COMPOSITION = {"sd15": {4: 0.25, 5: 1.0}, "sdxl": {3: 1.0}}
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass(frozen=True)
class LayerWeights:
    """The weight of each layer (LAYERS order) and the layers whose cond and uncond tokens are swapped."""

    weights: tuple
    swapped: frozenset = frozenset()  # checkpoint indices N; the precise types push those layers away from the image


def curve(weight_type, t, n):
    """The smooth schedules: a multiplier from 0.05 to 1 across the n SpatialTransformers."""
    half = n / 2
    return {
        "linear": 1.0,
        "ease in": 0.05 + 0.95 * (1 - t / n),
        "ease out": 0.05 + 0.95 * t / n,
        "ease in-out": 0.05 + 0.95 * (1 - abs(t - half) / half),
        "reverse in-out": 0.05 + 0.95 * abs(t - half) / half,
    }[weight_type]


def schedule(weight_type, family, weight, composition_weight=None, boost=None) -> LayerWeights:
    """Per-layer weights for a named schedule. `composition_weight` is the composition layers' weight for
    "style and composition" (default: weight); `boost` is the style_boost / composition_boost of the precise types."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown weight type {weight_type!r}; expected one of {', '.join(WEIGHT_TYPES)}")
    sites = LAYERS[family]
    n = len({s.spatial_index for s in sites})
    style, comp = STYLE[family], COMPOSITION[family]
    wc = weight if composition_weight is None else composition_weight
    swapped = set()

    def weight_at(site):
        t = site.spatial_index
        if weight_type in ("linear", "ease in", "ease out", "ease in-out", "reverse in-out"):
            return weight * curve(weight_type, t, n)
        if weight_type.startswith(("weak", "strong middle")):
            weak = {"weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",),
                    "strong middle": ("input", "output")}[weight_type]
            return weight * (0.2 if site.block_name in weak else 1.0)
        if weight_type == "style transfer":
            return weight * style.get(t, 0.0)
        if weight_type == "composition":
            return weight * comp.get(t, 0.0)
        if weight_type == "strong style transfer":
            return 0.0 if t in comp else weight
        if weight_type == "style and composition":
            return wc * comp[t] if t in comp else weight * style.get(t, 0.0)
        if weight_type == "style transfer precise":
            if t in comp:
                swapped.add(site.index)
                return (weight if boost is None else boost) * comp[t]
            return weight * style.get(t, 0.0)
        # composition precise: the composition layers follow the image, every other layer is pushed away from it
        b = 0.0 if boost is None else boost
        if t in comp:
            return weight * comp[t]
        swapped.add(site.index)
        return b if (family == "sdxl" and t == 6) or (family == "sd15" and t in style) else 0.1 * b

    weights = tuple(weight_at(site) for site in sites)
    return LayerWeights(weights, frozenset(i for i in swapped))


class LayerWeightsError(ValueError):
    """A layer_weights text that cannot be read; the message names the entry and says what is allowed."""


ENTRY = re.compile(r"^(all|input|middle|output)(?:\s+(\d+))?(?:\.(\d+))?\s*[=:]\s*(\S+)$")


def split_entries(text):
    """layer_weights text -> its entries: separated by commas, semicolons or new lines, blanks dropped."""
    return [e.strip() for e in re.split(r"[,;\n]", text or "") if e.strip()]


def entry_value(where, text):
    """The VALUE of a 'BLOCK = VALUE' entry: a finite number, or LayerWeightsError naming the entry."""
    try:
        value = float(text)
    except ValueError:
        raise LayerWeightsError(f"{where}: '{text}' is not a number.") from None
    if not math.isfinite(value):
        raise LayerWeightsError(f"{where}: the value must be a finite number, got {value}.")
    return value


def apply_layer_weights(text, family, base: LayerWeights, weight) -> LayerWeights:
    """Override per-layer weights from text such as "all = 0, output 1 = 1, input 8.3 = 0.5".

    Entries are separated by commas, semicolons or new lines and applied in order; each sets the matching layers
    to value x weight. A selector is `all`, a block kind (`input`, `middle`, `output`), a block (`input 7`), or
    one transformer block inside it (`input 7.3`, SDXL's 2- and 10-deep blocks; `middle.4` for the middle).
    """
    sites = LAYERS[family]
    weights = list(base.weights)
    for number, entry in enumerate(split_entries(text), 1):
        where = f"layer_weights entry {number} '{entry}'"
        m = ENTRY.match(re.sub(r"\s+", " ", entry.lower()).replace("middle.", "middle 0."))
        if not m:
            raise LayerWeightsError(
                f"{where}: expected 'BLOCK = VALUE', where BLOCK is all, input, middle, output, a block such as "
                "'output 1', or a transformer inside one such as 'input 7.3'; for example 'all = 0, output 1 = 1'.")
        kind, block_id, inner, value = m.groups()
        value = entry_value(where, value)
        matched = [i for i, s in enumerate(sites)
                   if kind in ("all", s.block_name)
                   and (block_id is None or int(block_id) == s.block_id)
                   and (inner is None or int(inner) == s.transformer_index)]
        if not matched:
            raise LayerWeightsError(f"{where}: {describe_missing(kind, block_id, inner, family)}")
        for i in matched:
            weights[i] = value * weight
    return LayerWeights(tuple(weights), base.swapped)


def describe_missing(kind, block_id, inner, family):
    sites = LAYERS[family]
    if block_id is None:
        return f"no {kind} block of {FAMILY_NAMES[family]} has a transformer block {inner}."
    blocks = sorted({s.block_id for s in sites if s.block_name == kind})
    if int(block_id) not in blocks:
        listing = ", ".join(f"{kind} {b}" for b in blocks)
        return f"{FAMILY_NAMES[family]} has no cross-attention in {kind} block {block_id}; it has {listing}."
    depth = max(s.transformer_index for s in sites if s.block_name == kind and s.block_id == int(block_id)) + 1
    return (f"{kind} block {block_id} of {FAMILY_NAMES[family]} has {depth} transformer block(s), "
            f"numbered 0 to {depth - 1}; there is no {inner}.")


def block_weights(text, names, weight, kinds=("double", "single")):
    """The DiT families' layer_weights (Flux: double / single blocks; SD3.5: joint blocks), from text such as
    "all = 0, double 5 = 1, single = 0.5", applied in order, each entry setting the matching blocks to value x weight.
    `names` are the patched blocks ("double 0", ..., "single 37"; "block 0", ...); returns one weight per name."""
    entry_form = re.compile(rf"^(all|{'|'.join(kinds)})(?:\s+(\d+))?\s*[=:]\s*(\S+)$")
    example = " or ".join(f"'{k} {n}'" for k, n in zip(kinds, (5, 20)))
    weights = [weight] * len(names)
    for number, entry in enumerate(split_entries(text), 1):
        where = f"layer_weights entry {number} '{entry}'"
        m = entry_form.match(re.sub(r"\s+", " ", entry.lower()))
        if not m:
            raise LayerWeightsError(f"{where}: expected 'BLOCK = VALUE', where BLOCK is all, {', '.join(kinds)}, or one "
                                    f"block such as {example}; for example 'all = 0, {kinds[0]} 5 = 1'.")
        kind, index, value = m.groups()
        value = entry_value(where, value)
        matched = [i for i, name in enumerate(names) if kind == "all" or name == f"{kind} {index}"
                   or (index is None and name.startswith(kind + " "))]
        if not matched:
            counts = {k: sum(n.startswith(k + " ") for n in names) for k in kinds}
            has = ", ".join(f"{k} 0 to {c - 1}" for k, c in counts.items() if c) or "none"
            missing = f"{kind} {index or ''}".rstrip()
            raise LayerWeightsError(f"{where}: this adapter patches {has}; there is no {missing}.")
        for i in matched:
            weights[i] = value * weight
    return weights
