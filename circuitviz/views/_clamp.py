"""CircuitView's feature controls: click to ablate / clamp a feature node, and supernodes.

Protocol (mirrors ``js/src/clamp.ts``)::

    view → kernel  {"type": "steer", "node": "L11F12:P5" | "S1", "mode": "clamp" | "ablate",
                    "scale": 4, "everywhere": true, "request": 3}
    kernel → view  trait ``steering`` = the continuation (``stage: "continuation"``), then
                   the same with the metric on the view's pairs (``stage: "done"``);
                   {"type": "steering", "request": 3, "stage": ...} after each.
    view → kernel  {"type": "suggest_supernodes", "request": 4}
    kernel → view  trait ``suggested_supernodes``; {"type": "suggested", "request": 4}

Groups are the ``supernodes`` trait, written by Python or the page and validated by
:func:`circuitviz.engine.features.check_supernodes` either way. The kernel draws each group
as one node (:func:`collapse`) in what it sends, so the page, ``shown_graph`` and ``.save``
show the same picture.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import traitlets as t

from ..engine import InputError
from ..engine._sites import site_name
from ..engine.features import as_sae_set, check_supernodes, steer, suggest_supernodes
from ..engine.features._steer import (
    DEFAULT_SCALE,
    SteerResult,
    edit_metric,
    feature_edits,
    parse_features,
    warm,
)
from ._base import MAX_TEXT, error_text, quote
from ._codec import decode, encode
from ._head_preview import column_prompt

#: Clamp multiples the page may ask for.
MAX_SCALE = 1000.0
STEER_TOKENS = 20


class FeatureSteering(t.HasTraits):
    """Mixed into CircuitView: feature steering and supernodes (needs ``saes=``)."""

    can_steer = t.Bool(False).tag(sync=True)
    """Whether a model, pairs and SAEs are attached, so feature nodes can be clamped."""

    clamp_scale = t.Float(DEFAULT_SCALE).tag(sync=True)
    """The "Clamp × N" multiple: a clamped latent is set to N × its maximum activation."""

    steering = t.Dict().tag(sync=True)
    """The last clamp or ablation of features (``SteerResult.to_dict()`` plus ``node``, the
    page's ``request`` tag, ``stage``: ``"continuation"`` while the metric is still computed,
    then ``"done"``)."""

    steer_job = t.Dict().tag(sync=True)
    """The last steer's job (keys as ``AblationView.job``; ``remote``: an NDIF job, which
    the page can cancel)."""

    supernodes = t.List(t.Dict()).tag(sync=True)
    """Groups of feature nodes drawn as one: ``[{"id": "S1", "label", "members": [...]}]``."""

    suggested_supernodes = t.List(t.Dict()).tag(sync=True)
    """Groups the kernel suggests (same site and position, similar logit effects or
    co-activation; see ``suggest_supernodes``), with a ``reason`` each; kernel-owned."""

    def _init_steering(self, saes: Any) -> None:
        self._saes = None if saes is None else as_sae_set(saes)
        self._steer_result: SteerResult | None = None
        self.can_steer = bool(self._saes is not None and self.can_ablate)
        if self.can_steer:  # the unedited side, once: the first click then costs one generation
            try:
                warm(
                    self._model,
                    self._steer_prompt(),
                    self._saes,
                    n_tokens=STEER_TOKENS,
                    prepend_bos=self._pairs.prepend_bos,
                )
            except Exception as err:  # the view still draws; a click will say what is wrong
                self.error = error_text(err)

    def _steer_prompt(self) -> str:
        """The clean prompt a steer generates from: the one whose positions are the graph's
        columns (:func:`._head_preview.column_prompt`)."""
        return column_prompt(self._model, self._pairs)

    # -- validation --------------------------------------------------------------------------
    @t.validate("clamp_scale")
    def _check_scale(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not math.isfinite(value) or abs(value) > MAX_SCALE:
            raise t.TraitError(f"clamp_scale={quote(value)}: use a number in ±{MAX_SCALE:g}.")
        return value

    @t.validate("supernodes")
    def _check_supernodes(self, proposal: Any) -> list[dict[str, Any]]:
        try:
            return check_supernodes(proposal["value"], self._nodes)
        except InputError as err:
            raise t.TraitError(str(err)) from None

    # -- steering ----------------------------------------------------------------------------
    @property
    def steer_result(self) -> SteerResult | None:
        """The last :class:`~circuitviz.SteerResult` (``view.steering`` is its dict)."""
        return self._steer_result

    def _features_of(self, node: Any, everywhere: bool) -> list[str]:
        if not isinstance(node, str) or len(node) > MAX_TEXT:
            raise InputError(f"node must be a feature node id like 'L11F12:P5', got {quote(node)}.")
        groups = {g["id"]: g["members"] for g in self.supernodes}
        members = groups.get(node, [node])
        return list(dict.fromkeys(m.split(":")[0] if everywhere else m for m in members))

    def clamp(
        self, node: str, *, scale: float | None = None, everywhere: bool = True
    ) -> SteerResult:
        """Clamp a feature node (or every member of a supernode ``"S1"``) to ``scale`` × its
        maximum activation (default :attr:`clamp_scale`) and show the continuations before
        and after; ``everywhere=False`` clamps only at the node's position."""
        return self.steer_node(node, mode="clamp", scale=scale, everywhere=everywhere)

    def ablate_feature(self, node: str, *, everywhere: bool = True) -> SteerResult:
        """Set a feature node's latent (or a supernode's) to 0 and show the continuations."""
        return self.steer_node(node, mode="ablate", everywhere=everywhere)

    def steer_node(
        self,
        node: str,
        *,
        mode: str = "clamp",
        scale: float | None = None,
        everywhere: bool = True,
        request: Any = None,
    ) -> SteerResult:
        """What the panel's Ablate / Clamp × N buttons run: :func:`circuitviz.steer` on the
        pairs' first clean prompt (mixed lengths: the longest, whose positions are the
        columns), the continuation sent first, then the metric on the pairs."""
        features, tag = self._steer_request(node, mode, scale, everywhere, request)
        out: list[SteerResult] = []
        self._steer_work(features, mode, tag, out.append)(lambda fn: fn())
        return out[0]

    def _steer_request(
        self, node: Any, mode: str, scale: Any, everywhere: Any, request: Any
    ) -> tuple[list[str], dict[str, Any]]:
        """Check a steer (setting ``clamp_scale`` for a clamp); its features and its tag."""
        if not self.can_steer:
            raise InputError("Steering features needs model=, pairs= and saes= on the view.")
        if not isinstance(everywhere, bool):
            raise InputError("everywhere must be true or false.")
        scale = self.clamp_scale if scale is None else scale
        if mode == "clamp":
            self._set("clamp_scale", scale)  # validated like a page write
        features = self._features_of(node, everywhere)
        return features, {
            "node": node,
            "request": request if isinstance(request, (int, str)) else None,
        }

    def _steer_work(
        self, features: list[str], mode: str, tag: dict[str, Any], keep: Any = None
    ) -> Any:
        """The steer's work as a ``_tasks`` job: the continuation, then the metric on the
        pairs, each shown (``deliver``) as soon as it is in."""
        pairs, saes, scale, metric = self._pairs, self._saes, self.clamp_scale, self.metric
        request = tag["request"]

        def show(res: SteerResult, stage: str) -> None:
            self._steer_result = res
            self.error = ""
            self.steering = {**res.to_dict(), **tag, "stage": stage}
            self.send({"type": "steering", "request": request, "stage": stage})

        def work(deliver: Any) -> None:
            res = steer(
                self._model,
                self._steer_prompt(),
                features=features,
                saes=saes,
                scale=scale,
                mode=mode,  # type: ignore[arg-type]
                n_tokens=STEER_TOKENS,
                prepend_bos=pairs.prepend_bos,
                progress=False,  # the panel shows the job's state
            )
            first = dataclasses.replace(res)  # the continuation stage, as it was
            deliver(lambda: show(first, "continuation"))
            edits = feature_edits(parse_features(res.features, saes), res.values)
            name, before, after = edit_metric(self._model, pairs, saes, edits, metric=metric)
            res.metric, res.metric_before, res.metric_after = name, before, after
            deliver(lambda: show(res, "done"))
            if keep is not None:
                keep(res)

        return work

    def _msg_steer(self, content: dict[str, Any]) -> None:
        mode = content.get("mode", "clamp")
        if mode not in ("clamp", "ablate"):
            raise InputError(f"Unknown steering mode {quote(mode)}: use 'clamp' or 'ablate'.")
        scale = content.get("scale", self.clamp_scale)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise InputError(f"scale must be a number, got {quote(scale)}.")
        features, tag = self._steer_request(
            content.get("node"),
            mode,
            scale,
            content.get("everywhere", True),
            content.get("request"),
        )
        # on a remote model a job off the message loop, with state and Cancel (_tasks)
        self._run_task("steer", tag["request"], self._steer_work(features, mode, tag))  # type: ignore[attr-defined]

    def _set(self, name: str, value: Any) -> None:
        """Set a trait from Python; what its validator refuses is an InputError."""
        try:
            setattr(self, name, value)
        except t.TraitError as err:
            raise InputError(str(err)) from None

    # -- supernodes --------------------------------------------------------------------------
    def suggest_supernodes(self, *, with_pairs: bool = True) -> list[dict[str, Any]]:
        """Fill :attr:`suggested_supernodes` by the engine's rule (co-activation on the view's
        pairs too, unless ``with_pairs=False``) and return them; accept one with
        :meth:`accept_suggestion`."""
        if self._saes is None or self._model is None:
            raise InputError("Suggesting supernodes needs model= and saes= on the view.")
        taken = {m for g in self.supernodes for m in g["members"]}
        found = suggest_supernodes(
            self._model, self._saes, self._nodes, pairs=self._pairs if with_pairs else None
        )
        found = [g for g in found if not taken & set(g["members"])]
        self.suggested_supernodes = found
        return found

    def group(self, members: Iterable[str], *, label: str | None = None) -> dict[str, Any]:
        """Group feature nodes into a new supernode; returns it."""
        used = {int(g["id"][1:]) for g in self.supernodes}
        gid = f"S{next(i for i in range(1, len(used) + 2) if i not in used)}"
        group = {"id": gid, "members": list(members)}
        if label is not None:
            group["label"] = label
        self._set("supernodes", [*self.supernodes, group])
        return self.supernodes[-1]

    def ungroup(self, gid: str) -> None:
        """Remove supernode ``gid`` (its members are drawn on their own again)."""
        if gid not in {g["id"] for g in self.supernodes}:
            raise InputError(
                f"No supernode {quote(gid)}; there are {[g['id'] for g in self.supernodes]}."
            )
        self._set("supernodes", [g for g in self.supernodes if g["id"] != gid])

    def accept_suggestion(self, gid: str) -> dict[str, Any]:
        """Turn suggested group ``gid`` into a supernode."""
        found = [g for g in self.suggested_supernodes if g["id"] == gid]
        if not found:
            raise InputError(f"No suggested supernode {quote(gid)}.")
        new = self.group(found[0]["members"], label=found[0]["label"])
        self.suggested_supernodes = [g for g in self.suggested_supernodes if g["id"] != gid]
        return new

    def _msg_suggest_supernodes(self, content: dict[str, Any]) -> None:
        self.suggest_supernodes()
        self.send({"type": "suggested", "request": content.get("request")})


def collapse(payload: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The shown subgraph with each supernode's shown members drawn as one node: edges to
    and from members go to the group (parallel ones summed, those inside a group dropped)."""
    nodes = payload["nodes"]
    owner = {m: g for g in groups for m in g["members"]}
    if not any(n["id"] in owner for n in nodes):
        return payload
    new_nodes: list[dict[str, Any]] = []
    where: dict[str, int] = {}
    remap = np.zeros(len(nodes), dtype=np.int64)
    for i, n in enumerate(nodes):
        g = owner.get(n["id"])
        if g is None:
            remap[i] = len(new_nodes)
            new_nodes.append(n)
            continue
        if g["id"] not in where:
            where[g["id"]] = len(new_nodes)
            shown = [m for m in nodes if owner.get(m["id"]) is g]
            new_nodes.append(supernode_dict(g, shown))
        remap[i] = where[g["id"]]
    out = dict(payload)
    out["nodes"] = new_nodes
    e = payload.get("edges")
    if e:
        src, dst = remap[decode(e["source"])], remap[decode(e["target"])]
        weight, kind = decode(e["weight"]).astype(np.float64), decode(e["input"])
        merged: dict[tuple[int, int, int], float] = {}
        for a, b, w, k in zip(
            src.tolist(), dst.tolist(), weight.tolist(), kind.tolist(), strict=True
        ):
            if a != b:
                merged[(a, b, k)] = merged.get((a, b, k), 0.0) + w
        keys = sorted(merged, key=lambda key: -abs(merged[key]))
        out["edges"] = None
        if keys:
            arr = np.array(keys, dtype=np.int64)
            idx = "uint16" if len(new_nodes) < 2**16 else "uint32"
            out["edges"] = {
                "source": encode(arr[:, 0], idx),
                "target": encode(arr[:, 1], idx),
                "weight": encode(np.array([merged[k] for k in keys]), "float32"),
                "input": encode(arr[:, 2], "uint8"),
                "inputs": list(e["inputs"]),
            }
    return out


def supernode_dict(group: dict[str, Any], shown: list[dict[str, Any]]) -> dict[str, Any]:
    """One drawn node for a group: at its members' layer (and position, when they share
    one), scored by the sum of their scores; ``members`` lists every member."""
    scores = [n["score"] for n in shown if n.get("score") is not None]
    positions = {n.get("pos") for n in shown}
    sites = sorted({(n["layer"], n.get("site") or "") for n in shown})
    # The drawn label names its SAE site(s): groups at two sites may share a label.
    where = " + ".join(site_name(layer, site) for layer, site in sites)
    label = group["label"] if group["label"].startswith(where) else f"{where}: {group['label']}"
    return {
        "id": group["id"],
        "type": "supernode",
        "layer": round(float(np.mean([n["layer"] for n in shown]))),
        # the first member's slot, where the kernel gives feature nodes one
        "head": min((n["head"] for n in shown if n.get("head") is not None), default=None),
        "pos": positions.pop() if len(positions) == 1 else None,
        "label": label,
        "site": sites[0][1] if len(sites) == 1 else "",
        "score": float(sum(scores)) if scores else None,
        "ablates": None,
        "members": list(group["members"]),
        "shown_members": [n["id"] for n in shown],
    }
