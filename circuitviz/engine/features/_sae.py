"""Sparse autoencoders (and transcoders) as plain torch objects that know where they read.

An :class:`SAE` holds its weights and the hook it reads (``hook_name``); a transcoder also
names the hook whose value it predicts (``output_hook``). Analyses place an SAE by its hook,
so the user never wires hooks. :class:`SAESet` is an ordered collection keyed by hook name.

Conventions (SAELens's): ``encode(x) = act(x @ W_enc + b_enc)`` (``x - b_dec`` first when
``apply_b_dec_to_input``), ``decode(f) = f @ W_dec + b_dec``. Activations:
``"relu"``, ``"topk"`` (keep the ``k`` largest pre-activations, then ReLU) and
``"jumprelu"`` (keep pre-activations above a per-latent ``threshold``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from .._pairs import InputError

Activation = Literal["relu", "topk", "jumprelu"]
ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "jumprelu")


@dataclass(eq=False)
class SAE:
    """One sparse autoencoder (or transcoder) over one hook of a model.

    Attributes:
        hook_name: the hook it reads, e.g. ``"blocks.11.hook_resid_post"``.
        W_enc: ``[d_in, d_sae]``.
        b_enc: ``[d_sae]``.
        W_dec: ``[d_sae, d_out]`` (``d_out == d_in`` for an SAE).
        b_dec: ``[d_out]``.
        activation: ``"relu"``, ``"topk"`` or ``"jumprelu"``.
        k: the number of active latents, for ``"topk"``.
        threshold: ``[d_sae]``, for ``"jumprelu"``.
        output_hook: for a transcoder, the hook whose value it predicts (e.g.
            ``"blocks.3.hook_mlp_out"``); ``None`` for an SAE.
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        name: a short name for labels (``"L11 resid_post"`` by default).
        meta: free-form provenance (format, release, training settings).
    """

    hook_name: str
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: Activation = "relu"
    k: int | None = None
    threshold: torch.Tensor | None = None
    output_hook: str | None = None
    apply_b_dec_to_input: bool = False
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise InputError(
                f"SAE activation must be one of {ACTIVATIONS}, got {self.activation!r}."
            )
        d_in, d_sae = self.W_enc.shape if self.W_enc.ndim == 2 else (None, None)
        problems = []
        if self.W_enc.ndim != 2:
            problems.append(f"W_enc must be 2-D [d_in, d_sae], got shape {tuple(self.W_enc.shape)}")
        elif tuple(self.b_enc.shape) != (d_sae,):
            problems.append(f"b_enc has shape {tuple(self.b_enc.shape)}, expected ({d_sae},)")
        if self.W_dec.ndim != 2 or self.W_dec.shape[0] != d_sae:
            problems.append(f"W_dec has shape {tuple(self.W_dec.shape)}, expected ({d_sae}, d_out)")
        elif tuple(self.b_dec.shape) != (self.W_dec.shape[1],):
            problems.append(
                f"b_dec has shape {tuple(self.b_dec.shape)}, expected ({self.W_dec.shape[1]},)"
            )
        if self.output_hook is None and self.W_dec.ndim == 2 and self.W_dec.shape[1] != d_in:
            problems.append(
                f"an SAE decodes to its input width {d_in}, W_dec gives {self.W_dec.shape[1]}"
            )
        if self.activation == "topk" and not (
            isinstance(self.k, int) and 0 < self.k <= (d_sae or 0)
        ):
            problems.append(f"a topk SAE needs 0 < k <= d_sae={d_sae}, got k={self.k!r}")
        if self.activation == "jumprelu" and (
            self.threshold is None or tuple(self.threshold.shape) != (d_sae,)
        ):
            problems.append(f"a jumprelu SAE needs a threshold of shape ({d_sae},)")
        for t_name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, t_name)
            if t is not None and not torch.isfinite(t).all():
                problems.append(f"{t_name} has non-finite values (a corrupt weight file?)")
        if problems:
            raise InputError(f"Bad SAE for {self.hook_name!r}: " + "; ".join(problems) + ".")
        if not self.name:
            self.name = default_name(self.hook_name)

    # -- shape ---------------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def layer(self) -> int | None:
        """The block index in ``hook_name`` (``blocks.{L}.…``), or ``None``."""
        return hook_layer(self.hook_name)

    @property
    def is_transcoder(self) -> bool:
        return self.output_hook is not None

    # -- maths ---------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``x`` ``[..., d_in]``."""
        pre = self.pre_activations(x)
        if self.activation == "topk":
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold)
        return torch.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    __call__ = forward

    def to(self, device=None, dtype: torch.dtype | None = None) -> SAE:
        """A copy on ``device`` / in ``dtype`` (floating tensors only)."""

        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)

        return SAE(
            hook_name=self.hook_name,
            W_enc=move(self.W_enc),
            b_enc=move(self.b_enc),
            W_dec=move(self.W_dec),
            b_dec=move(self.b_dec),
            activation=self.activation,
            k=self.k,
            threshold=move(self.threshold),
            output_hook=self.output_hook,
            apply_b_dec_to_input=self.apply_b_dec_to_input,
            name=self.name,
            meta=dict(self.meta),
        )

    def __repr__(self) -> str:
        kind = "transcoder" if self.is_transcoder else "SAE"
        extra = f", k={self.k}" if self.activation == "topk" else ""
        return f"{kind}({self.hook_name!r}, d_in={self.d_in}, d_sae={self.d_sae}, {self.activation}{extra})"


def hook_layer(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def default_name(hook_name: str) -> str:
    layer = hook_layer(hook_name)
    site = hook_name.split(".")[-1].removeprefix("hook_")
    return site if layer is None else f"L{layer} {site}"


class SAESet(Mapping[str, SAE]):
    """SAEs keyed by the hook they read, in model order. ``saes[11]`` also finds the SAE of
    block 11 when there is exactly one there.

    Attributes:
        name: where the set came from (``"demo"``, a directory, a release id).
        stats: optional per-SAE feature statistics (top snippets, histograms, labels), keyed
            by hook name; filled by the loaders of sets that ship them.
    """

    def __init__(self, saes: Iterable[SAE], *, name: str = "", stats: dict | None = None):
        items = list(saes)
        if not items:
            raise InputError("An SAE set needs at least one SAE.")
        by_hook: dict[str, SAE] = {}
        for sae in items:
            if not isinstance(sae, SAE):
                raise InputError(f"SAESet takes SAE objects, got {type(sae).__name__}.")
            if sae.hook_name in by_hook:
                raise InputError(f"Two SAEs read the same hook {sae.hook_name!r}; keep one.")
            by_hook[sae.hook_name] = sae
        order = sorted(by_hook, key=lambda h: (hook_layer(h) is None, hook_layer(h) or 0, h))
        self._saes = {h: by_hook[h] for h in order}
        self.name = name
        self.stats = dict(stats or {})

    def __getitem__(self, key: str | int) -> SAE:
        if isinstance(key, int) and not isinstance(key, bool):
            found = [s for s in self._saes.values() if s.layer == key]
            if len(found) == 1:
                return found[0]
            raise KeyError(
                f"{len(found)} SAEs in block {key}; index by hook name: {list(self._saes)}"
            )
        return self._saes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._saes)

    def __len__(self) -> int:
        return len(self._saes)

    @property
    def hooks(self) -> list[str]:
        return list(self._saes)

    def to(self, device=None, dtype: torch.dtype | None = None) -> SAESet:
        return SAESet(
            (s.to(device, dtype) for s in self._saes.values()), name=self.name, stats=self.stats
        )

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self._saes.values())
        return f"SAESet({self.name!r}: {inner})"


def as_sae_set(saes: SAE | SAESet | Iterable[SAE]) -> SAESet:
    """Accept one SAE, a set, or an iterable of SAEs."""
    if isinstance(saes, SAESet):
        return saes
    if isinstance(saes, SAE):
        return SAESet([saes])
    if isinstance(saes, (str, bytes)) or not isinstance(saes, Iterable):
        raise InputError(
            f"saes must be an SAE, an SAESet or a list of SAEs (load them with "
            f"circuitviz.load_saes(...)), got {type(saes).__name__}."
        )
    return SAESet(saes)
