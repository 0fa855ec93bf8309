"""Shape checks for graph JSON (``circuitviz.graph/1``, docs/graph_schema.md) read from a file
or a page: what a shared file declares is checked against its node list and sane bounds before
anything is allocated from it, so ``n_layers = 10**9`` is an InputError, not a hung kernel.

Node-only graph JSON (drawn by CircuitView, not a whole ``circuitviz.circuit`` graph) passes
with its optional fields left out; ``whole=True`` (``Graph.from_json``) also requires them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._badges import role_map
from .._pairs import InputError
from .._sites import SITE_HOOKS

#: Bounds far above any real model (Llama-3-405B: 126 layers, 128 heads) and prompt a graph is
#: built on, and far below what exhausts memory.
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_TOKENS = 16_384
MAX_NODES = 1_000_000
MAX_EDGES = 10_000_000
#: ``Graph.from_json`` holds ``senders × receivers × positions`` scores (float32 + bool):
#: 2**28 cells is about 1.3 GB.
MAX_DENSE_CELLS = 2**28
MAX_ID_CHARS = 64
MAX_TEXT_CHARS = 1000
NODE_TYPES = ("embed", "head", "mlp", "logits", "feature", "error", "supernode")
#: Latents per SAE a feature graph may declare (the largest public SAEs have ~2**24).
MAX_FEATURES = 2**24
#: The metadata of a whole graph (``Graph.to_dict``) besides its nodes and edges.
GRAPH_META = (
    "model",
    "method",
    "metric",
    "per_position",
    "n_layers",
    "n_heads",
    "tokens",
    "clean",
    "corrupted",
    "prompts",
    "columns",
)
WHOLE_KEYS = (*[k for k in GRAPH_META if k != "columns"], "nodes", "edges")
#: Prompts a graph's ``columns`` (mixed-length pairs: each prompt's token per column) may list.
MAX_PROMPTS = 4096


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:79]}…"


def _int(data: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(
            f"Graph JSON: {key!r} must be a whole number in {low}–{high}, got {_short(value)}."
        )
    return value


def _text(value: Any, where: str, limit: int = MAX_TEXT_CHARS) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise InputError(f"Graph JSON: {where} must be a string of at most {limit} characters.")


def _number(value: Any, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InputError(f"Graph JSON: {where} must be a number or null, got {_short(value)}.")


def check_graph_json(data: Any, *, whole: bool = False) -> None:
    """Refuse graph JSON whose shapes do not fit its node list or sane bounds.

    Checks the declared sizes (``n_layers`` ≤ 1024, ``n_heads`` ≤ 1024, ``n_kv_heads`` dividing
    ``n_heads``, ≤ 16,384 ``tokens``, ≤ 1,000,000 nodes, ≤ 10,000,000 edges, and for
    ``whole`` graphs the dense score tensor ``Graph.from_json`` builds), and every node: a unique
    string ``id``, a known ``type``, a ``layer``/``head``/``pos`` inside the declared (or
    bounded) shape, a numeric ``score``; ``roles``, when present, maps head ids inside the
    shape to known role names (:func:`circuitviz.engine._badges.role_map`). Edges pointing at nodes that are not listed are allowed
    (a pruned graph keeps them); their fields must still be well-formed. ``whole=True`` also
    requires every field of a ``circuitviz.circuit`` graph. Raises :class:`InputError` naming
    the field and the bound."""
    if not isinstance(data, Mapping):
        raise InputError(f"Graph JSON must be an object, got {type(data).__name__}.")
    schema = data.get("schema", "circuitviz.graph/1")
    if not isinstance(schema, str) or not schema.startswith("circuitviz.graph/"):
        raise InputError(f"Not a circuitviz graph (schema {_short(schema)}).")
    if whole:
        missing = [k for k in WHOLE_KEYS if k not in data]
        if missing:
            raise InputError(f"Graph JSON lacks {missing}: write it with Graph.to_json().")
    for key in ("model", "method", "metric"):
        if data.get(key) is not None:
            _text(data[key], repr(key))
    for key in ("clean", "corrupted"):
        _number(data.get(key), repr(key))
    per_position = data.get("per_position", False)
    if not isinstance(per_position, bool):
        raise InputError("Graph JSON: 'per_position' must be true or false.")
    n_layers = _int(data, "n_layers", 1, MAX_LAYERS)
    n_heads = _int(data, "n_heads", 1, MAX_HEADS)
    n_kv = _int(data, "n_kv_heads", 1, MAX_HEADS)
    if n_kv is not None and (n_heads is None or n_heads % n_kv):
        raise InputError(f"Graph JSON: 'n_kv_heads' ({n_kv}) must divide 'n_heads' ({n_heads}).")
    _int(data, "steps", 1, 10_000)

    tokens = data.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or len(tokens) > MAX_TOKENS:
            raise InputError(f"Graph JSON: 'tokens' must be a list of at most {MAX_TOKENS}.")
        for i, tok in enumerate(tokens):
            _text(tok, f"tokens[{i}]")
    if whole and per_position and not tokens:
        raise InputError("Graph JSON: a per-position graph needs its 'tokens'.")
    n_pos = len(tokens) if tokens else None
    _check_columns(data.get("columns"), n_pos)

    d_sae = _check_saes(data.get("saes"), n_layers)
    if whole and n_layers is not None and n_heads is not None and d_sae is None:
        kv = n_kv or n_heads
        senders = 1 + n_layers * (n_heads + 1)
        receivers = n_layers * (n_heads + 2 * kv + 1) + 1
        cells = senders * receivers * (n_pos if per_position and n_pos else 1)
        if cells > MAX_DENSE_CELLS:
            raise InputError(
                f"Graph JSON: {n_layers} layers × {n_heads} heads"
                f"{f' × {n_pos} positions' if per_position else ''} needs {cells:,} edge scores; "
                f"at most {MAX_DENSE_CELLS:,} are read."
            )

    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not (nodes or whole):  # a Graph pruned to nothing
        raise InputError("The graph has no nodes: 'nodes' must be a non-empty list.")
    if len(nodes) > MAX_NODES:
        raise InputError(f"Graph JSON has {len(nodes):,} nodes; at most {MAX_NODES:,} are read.")
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        _check_node(node, i, n_layers, n_heads, n_pos, seen)
        if node.get("type") in ("feature", "error"):
            _check_feature_node(node, i, d_sae)

    if data.get("roles") is not None:  # head roles (Graph.to_json(with_roles=...))
        role_map(data["roles"], n_layers=n_layers, n_heads=n_heads, where="Graph JSON: 'roles'")
    edges = data.get("edges", [])
    if edges is None:
        return
    if not isinstance(edges, list) or len(edges) > MAX_EDGES:
        raise InputError(f"Graph JSON: 'edges' must be a list of at most {MAX_EDGES:,}.")
    for i, edge in enumerate(edges):
        if not isinstance(edge, Mapping):
            raise InputError(f"Graph JSON: edges[{i}] must be an object.")
        for key in ("source", "target"):
            _text(edge.get(key), f"edges[{i}].{key}", MAX_ID_CHARS)
        if edge.get("input") is not None:
            _text(edge["input"], f"edges[{i}].input", MAX_ID_CHARS)
        _number(edge.get("weight"), f"edges[{i}].weight")
        targets = edge.get("targets")
        if targets is not None and (not isinstance(targets, list) or len(targets) > MAX_HEADS):
            raise InputError(f"Graph JSON: edges[{i}].targets must be a list of node ids.")


def _check_columns(columns: Any, n_pos: int | None) -> None:
    """Mixed-length pairs' ``columns``: ``tokens``, one row per prompt (at most
    :data:`MAX_PROMPTS`) of one token string or null (padding) per entry of ``tokens``."""
    if columns is None:
        return
    rows = columns.get("tokens") if isinstance(columns, Mapping) else None
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_PROMPTS:
        raise InputError(
            f"Graph JSON: 'columns' must hold 'tokens', a list of 1–{MAX_PROMPTS} prompts."
        )
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_pos:
            raise InputError(
                f"Graph JSON: columns.tokens[{i}] must list one token (or null) per entry of "
                f"'tokens' ({n_pos})."
            )
        for j, tok in enumerate(row):
            if tok is not None:
                _text(tok, f"columns.tokens[{i}][{j}]")


def _check_saes(saes: Any, n_layers: int | None) -> dict[str, int] | None:
    """A feature graph's ``saes`` list (``[{"hook", "d_sae", "name"}]``) -> {hook: d_sae}."""
    if saes is None:
        return None
    if not isinstance(saes, list) or not 0 < len(saes) <= MAX_LAYERS:
        raise InputError(f"Graph JSON: 'saes' must be a list of 1–{MAX_LAYERS} SAEs.")
    out: dict[str, int] = {}
    for i, sae in enumerate(saes):
        if not isinstance(sae, Mapping):
            raise InputError(f"Graph JSON: saes[{i}] must be an object with 'hook' and 'd_sae'.")
        _text(sae.get("hook"), f"saes[{i}].hook", MAX_ID_CHARS)
        _int(sae, "d_sae", 1, MAX_FEATURES)
        if sae.get("d_sae") is None:
            raise InputError(f"Graph JSON: saes[{i}].d_sae is missing.")
        if sae.get("name") is not None:
            _text(sae["name"], f"saes[{i}].name")
        if sae.get("site") is not None and sae["site"] not in SITE_HOOKS:
            raise InputError(
                f"Graph JSON: saes[{i}].site is {_short(sae['site'])}; expected one of "
                f"{sorted(SITE_HOOKS)} (engine._sites)."
            )
        out[sae["hook"]] = sae["d_sae"]
    return out


def _check_feature_node(node: Mapping[str, Any], i: int, d_sae: dict[str, int] | None) -> None:
    """A feature node's ``feature`` index (within its SAE's ``d_sae`` when the graph lists its
    SAEs) and ``hook``; an error node's ``hook``."""
    where = f"nodes[{i}] ({_short(node.get('id'))})"
    hook = node.get("hook")
    if hook is not None:
        _text(hook, f"{where}.hook", MAX_ID_CHARS)
    if node.get("type") != "feature":
        return
    limit = MAX_FEATURES if d_sae is None or hook not in d_sae else d_sae[hook]
    value = node.get("feature")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InputError(
            f"Graph JSON: {where} has feature {_short(value)}; expected 0–{limit - 1}"
            + (" (its SAE's d_sae)." if d_sae and hook in d_sae else ".")
        )


def _check_node(
    node: Any,
    i: int,
    n_layers: int | None,
    n_heads: int | None,
    n_pos: int | None,
    seen: set[str],
) -> None:
    where = f"nodes[{i}]"
    if not isinstance(node, Mapping):
        raise InputError(f"Graph JSON: {where} must be an object with a string 'id'.")
    node_id = node.get("id")
    _text(node_id, f"{where}.id", MAX_ID_CHARS)
    if node_id in seen:
        raise InputError(f"Duplicate graph node id {_short(node_id)}.")
    seen.add(node_id)
    kind = node.get("type", "head")
    if kind not in NODE_TYPES:
        raise InputError(f"Graph JSON: {where}.type must be one of {list(NODE_TYPES)}.")
    top = MAX_LAYERS if n_layers is None else n_layers  # the logits' layer
    layer = node.get("layer", 0)
    low, high = {"embed": (-1, -1), "logits": (0, top)}.get(kind, (0, top - 1))
    if kind == "embed" and "layer" not in node:
        layer = -1
    if isinstance(layer, bool) or not isinstance(layer, int) or not low <= layer <= high:
        raise InputError(
            f"Graph JSON: {where} ({_short(node_id)}) has layer {_short(layer)}; a {kind} node's "
            f"layer is in {low}–{high}"
            + (" (n_layers)." if n_layers is not None else " (at most MAX_LAYERS).")
        )
    for key, limit in (("head", n_heads or MAX_HEADS), ("pos", n_pos or MAX_TOKENS)):
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise InputError(
                f"Graph JSON: {where} ({_short(node_id)}) has {key} {_short(value)}; "
                f"expected 0–{limit - 1}"
                + (" (the graph's tokens)." if key == "pos" and n_pos else ".")
            )
    score = node.get("score")
    _number(score, f"{where}.score")
    if node.get("label") is not None:
        _text(node["label"], f"{where}.label")
