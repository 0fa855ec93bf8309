"""Supernodes: groups of feature nodes that a feature circuit shows as one.

A group is ``{"id": "S1", "label": "…", "members": ["L11F12:P5", "L11F40:P5"]}``;
:func:`check_supernodes` is the one validator (the view runs it on every write, from Python
or from the page). :func:`suggest_supernodes` proposes groups for the user to accept, by one
rule: two feature nodes are linked when they read the **same site** (SAE hook) **at the same
position** and either

- their **logit effects** point the same way: the cosine of ``W_dec[i] @ W_U`` and
  ``W_dec[j] @ W_U`` (each latent's direct effect on the logits, through the unembedding,
  the final norm left out) is at least ``logit_threshold`` (:data:`LOGIT_COSINE`), or
- given ``pairs``, they **co-activate**: the correlation (Pearson) of their activations over
  every clean prompt and position of the pairs is at least ``coact_threshold``
  (:data:`COACTIVATION`). Centred, because activations are never negative: an uncentred
  cosine of two latents that both fire is high whatever they do.

Linked nodes are grouped transitively (connected components); groups of two or more are
suggested, largest first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from .. import _devices, _hooks
from .._pairs import InputError, PromptPairs, tokenize
from .._sites import FEATURE_ID, SITE_HOOKS, site_code, site_name
from ._sae import SAESet, as_sae_set, hook_layer

#: Suggest a group when the cosine of two latents' direct logit effects is at least this.
LOGIT_COSINE = 0.7
#: …or, given pairs, when the correlation of their activations over the pairs is at least this.
COACTIVATION = 0.8
MAX_GROUPS = 256
MAX_LABEL = 64


def feature_nodes(nodes: Any) -> dict[str, dict[str, Any]]:
    """Feature nodes by id, from a Graph, graph JSON, or a list of node dicts / ids; each as
    ``{"id", "hook", "feature", "pos"}`` (fields from the node, else parsed from its id
    ``"L{L}F{index}:P{pos}"``: the grammar of ``engine._sites``; a transcoder's node needs
    its ``hook``)."""
    if hasattr(nodes, "nodes") and not isinstance(nodes, Mapping):
        nodes = [n.to_dict() if hasattr(n, "to_dict") else n for n in nodes.nodes]
    elif isinstance(nodes, Mapping):
        nodes = nodes.get("nodes", [])
    out: dict[str, dict[str, Any]] = {}
    for n in nodes:
        if isinstance(n, str):
            n = {"id": n, "type": "feature"}
        if not isinstance(n, Mapping) or n.get("type", "feature") != "feature":
            continue
        m = FEATURE_ID.fullmatch(str(n.get("id", "")))
        named = m is not None and m[2] != "tc"
        hook = n.get("hook") or (f"blocks.{m[1]}.{SITE_HOOKS[m[2] or '']}" if named else None)
        index = n.get("feature", int(m[3]) if m else None)
        pos = n.get("pos", int(m[4]) if m and m[4] is not None else None)
        if hook is None or index is None:
            continue
        out[str(n["id"])] = {"id": str(n["id"]), "hook": hook, "feature": int(index), "pos": pos}
    return out


def check_supernodes(groups: Any, nodes: Any) -> list[dict[str, Any]]:
    """``groups`` validated against the graph's feature ``nodes``: a list of
    ``{"id", "label", "members"}`` with at least two known feature nodes each, no node in two
    groups, unique ids. Returns them normalised (label defaults to the members' ids);
    raises InputError naming the first problem."""
    known = feature_nodes(nodes)
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Iterable):
        raise InputError("supernodes must be a list of {'id', 'label', 'members'} groups.")
    groups = list(groups)
    if len(groups) > MAX_GROUPS:
        raise InputError(f"{len(groups)} supernodes; at most {MAX_GROUPS}.")
    out, seen_ids, owner = [], set(), {}
    for k, g in enumerate(groups):
        if not isinstance(g, Mapping):
            raise InputError(f"supernodes[{k}] must be an object with 'id' and 'members'.")
        gid = g.get("id", f"S{k + 1}")
        if not isinstance(gid, str) or not re.fullmatch(r"S\d{1,6}", gid):
            raise InputError(f"supernodes[{k}]: id {gid!r:.40} must look like 'S1'.")
        if gid in seen_ids:
            raise InputError(f"Two supernodes have the id {gid!r}.")
        members = g.get("members")
        if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
            raise InputError(f"Supernode {gid}: members must be a list of feature node ids.")
        members = list(dict.fromkeys(members))
        if len(members) < 2:
            raise InputError(f"Supernode {gid} has {len(members)} member(s): a group needs two.")
        for m in members:
            if m not in known:
                raise InputError(
                    f"Supernode {gid}: {str(m)[:40]!r} is not a feature node of this graph "
                    "(only feature nodes can be grouped)."
                )
            if m in owner:
                raise InputError(f"{m} is in supernodes {owner[m]} and {gid}; ungroup it first.")
            owner[m] = gid
        label = g.get("label") or " + ".join(str(m).split(":")[0] for m in members)
        if not isinstance(label, str):
            raise InputError(f"Supernode {gid}: label must be text.")
        seen_ids.add(gid)
        out.append({"id": gid, "label": label[:MAX_LABEL], "members": members})
    return out


def logit_effects(model: TransformerBridge, saes: SAESet, hook: str, index: Sequence[int]):
    """Each latent's direct logit effect ``W_dec[i] @ W_U`` ``[n, d_vocab]``."""
    W_dec = saes[hook].W_dec[list(index)].float()
    (W_U,) = _devices.read(model, model.unembed, "W_U")  # offloaded: read while onloaded
    return W_dec.to(W_U.device) @ W_U.float()


def _cosines(x: torch.Tensor) -> torch.Tensor:
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def _activations(model: TransformerBridge, saes: SAESet, pairs: PromptPairs, hooks_: list[str]):
    """Latent activations over every clean prompt and position: hook -> [tokens, d_sae]
    (mixed lengths: left-padded and masked, padding left out)."""
    tokens = tokenize(model, pairs, pad=True)
    store: dict[str, torch.Tensor] = {}

    def read(h: str):
        def fn(x: torch.Tensor, hook: object) -> None:
            store[h] = tokens.real_rows(saes[h].encode(x).float())

        return fn

    with torch.inference_mode():
        _hooks.run(
            model,
            tokens.clean,
            [(h, read(h)) for h in hooks_],
            attention_mask=tokens.attention_mask,
        )
    return store


def suggest_supernodes(
    model: TransformerBridge,
    saes: Any,
    nodes: Any,
    *,
    pairs: PromptPairs | None = None,
    logit_threshold: float = LOGIT_COSINE,
    coact_threshold: float = COACTIVATION,
) -> list[dict[str, Any]]:
    """Suggested groups of ``nodes``' feature nodes (the rule in the module docstring), as
    ``{"id", "label", "members", "reason"}``, largest first; ids ``S1…`` in that order."""
    saes = as_sae_set(saes)
    for name, v in (("logit_threshold", logit_threshold), ("coact_threshold", coact_threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1 <= v <= 1:
            raise InputError(f"{name}={v!r} must be a cosine in [-1, 1].")
    known = feature_nodes(nodes)
    sites: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for n in known.values():
        if n["hook"] not in saes:
            raise InputError(
                f"Feature node {n['id']} reads {n['hook']!r}, but no SAE in saes does: pass the "
                "SAE set the graph was built with."
            )
        sites.setdefault((n["hook"], n["pos"]), []).append(n)
    acts = None
    if pairs is not None:
        acts = _activations(model, saes, pairs, sorted({h for h, _ in sites}))
    groups = []
    with torch.inference_mode():
        for (hook, _pos), members in sites.items():
            if len(members) < 2:
                continue
            idx = [m["feature"] for m in members]
            logit = _cosines(logit_effects(model, saes, hook, idx))
            coact = None
            if acts is not None:
                a = acts[hook][:, idx].T
                coact = _cosines(a - a.mean(-1, keepdim=True))
            parent = list(range(len(members)))

            def find(a: int, parent: list[int] = parent) -> int:
                while parent[a] != a:
                    parent[a] = parent[parent[a]]
                    a = parent[a]
                return a

            why: dict[int, list[str]] = {}
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    reasons = []
                    if float(logit[a, b]) >= logit_threshold:
                        reasons.append(f"logit cosine {float(logit[a, b]):.2f}")
                    if coact is not None and float(coact[a, b]) >= coact_threshold:
                        reasons.append(f"co-activation {float(coact[a, b]):.2f}")
                    if reasons:
                        ra, rb = find(a), find(b)
                        parent[rb] = ra
                        why.setdefault(a, []).extend(reasons)
            comps: dict[int, list[int]] = {}
            for a in range(len(members)):
                comps.setdefault(find(a), []).append(a)
            for comp in comps.values():
                if len(comp) >= 2:
                    reasons = sorted({r for a in comp for r in why.get(a, [])})
                    groups.append((hook, [members[a]["id"] for a in comp], reasons))
    groups.sort(key=lambda g: (-len(g[1]), g[1]))
    out = []
    for k, (hook, ids, reasons) in enumerate(groups[:MAX_GROUPS]):
        layer, code = hook_layer(hook), site_code(saes[hook])
        site = site_name(layer, code) if layer is not None and code is not None else hook
        out.append(
            {
                "id": f"S{k + 1}",
                "label": f"{site} ×{len(ids)}",
                "members": ids,
                "reason": "; ".join(reasons[:3]),
            }
        )
    return out
