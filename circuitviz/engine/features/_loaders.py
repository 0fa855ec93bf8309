"""Loading SAEs and transcoders from the formats they are published in.

:func:`load_saes` takes ``"demo"`` (the set shipped with circuitviz), a local path, or
``hf://org/repo[/subdir]``, and returns an :class:`~circuitviz.engine.features.SAESet`.
Local formats, recognised by their files:

- **SAELens**: a directory with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc``
  ``[d_in, d_sae]``, ``b_enc``, ``W_dec`` ``[d_sae, d_in]``, ``b_dec``, and ``threshold`` for
  JumpReLU). Architectures ``standard`` (ReLU), ``topk`` and ``jumprelu``.
- **Gemma Scope**: ``params.npz`` (JumpReLU, same orientation as SAELens). The hook is not in
  the file: pass ``hook_name=``, or it is read from the path — ``layer_<L>`` in it gives the
  block; a release named ``…-mlp…`` reads ``blocks.<L>.hook_mlp_out``, one named
  ``…transcoders…`` is a transcoder from ``blocks.<L>.mlp.hook_in`` to
  ``blocks.<L>.hook_mlp_out``, anything else ``blocks.<L>.hook_resid_post``.
- **circuit-tracer per-layer transcoders**: a directory with ``config.yaml``
  (``model_kind: transcoder_set``, ``feature_input_hook``, ``feature_output_hook``, optional
  ``transcoders:`` list of files, ``activation``, ``k``) and ``layer_<i>.safetensors`` files
  (``W_enc`` and ``W_dec`` both ``[d_transcoder, d_model]``, ``b_enc``, ``b_dec``, optional
  ``activation_function.threshold``). Layer ``i`` becomes
  ``SAE(hook_name="blocks.<i>.<feature_input_hook>", output_hook="blocks.<i>.<feature_output_hook>")``:
  circuit-tracer's hook names are TransformerLens's, which the bridge keeps
  (``hook_resid_mid``, ``mlp.hook_in``, ``ln2.hook_normalized``, ``hook_mlp_out``).
- A directory of such directories (any depth ≤ 4) is one set.

Every file problem (missing, truncated, corrupt, missing keys, wrong shapes, non-finite
weights, unsupported options) is an :class:`InputError` naming the file and the fix.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .._models import default_device
from .._pairs import InputError
from ._sae import SAE, SAESet

__all__ = ["DEMO_DIR", "check_saes", "load_saes"]

#: Where the shipped demo SAEs live (one SAELens directory per hook).
DEMO_DIR = Path(str(resources.files("circuitviz.data"))) / "saes" / "demo"
_SAELENS_CFG, _SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
_MAX_DEPTH = 4
_FIX = "re-download or re-export it"


# -- reading files ----------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path} is missing; {_FIX}.")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise InputError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: "
            f"{str(err)[:100]}); it is probably truncated or corrupt: {_FIX}."
        ) from None


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise InputError(
            f"{path} is not a readable .npz file ({type(err).__name__}: {str(err)[:100]}); "
            f"it is probably truncated or corrupt: {_FIX}."
        ) from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({str(err)[:100]}); {_FIX}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} should hold a JSON object, got {type(data).__name__}; {_FIX}.")
    return data


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"{path} is not valid YAML ({str(err)[:100]}); {_FIX}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} should hold a YAML mapping; {_FIX}.")
    return data


def _need(weights: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in weights]
    if missing:
        raise InputError(
            f"{path} lacks {', '.join(missing)} (it has {', '.join(sorted(weights)) or 'nothing'}); "
            f"it is not an SAE weight file of this format, or it is incomplete: {_FIX}."
        )


def _build(path: Path, **kwargs) -> SAE:
    """An :class:`SAE`, with the file named in any error about its weights."""
    try:
        return SAE(**kwargs)
    except InputError as err:
        raise InputError(f"{path}: {err} Fix or {_FIX}.") from None


# -- SAELens ----------------------------------------------------------------------------


def _saelens(directory: Path, hook_name: str | None) -> SAE:
    cfg_path = directory / _SAELENS_CFG
    cfg = _read_json(cfg_path)
    arch = cfg.get("architecture", "standard")
    act_fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "standard" and act_fn == "topk":  # older SAELens: topk as an activation
        arch = "topk"
    activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if activation is None:
        raise InputError(
            f"{cfg_path}: architecture {arch!r} is not supported (circuitviz reads "
            "'standard', 'topk' and 'jumprelu' SAEs); convert it to one of those."
        )
    if arch == "standard" and act_fn not in (None, "relu"):
        raise InputError(
            f"{cfg_path}: activation_fn {act_fn!r} is not supported for a standard SAE "
            "(only 'relu')."
        )
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none"):
        raise InputError(
            f"{cfg_path}: normalize_activations={norm!r} is not supported: the SAE expects "
            "rescaled inputs. Fold the scale into W_enc/W_dec (SAELens: "
            "sae.fold_activation_norm_scaling_factor) and save with 'none'."
        )
    if cfg.get("hook_head_index") is not None:
        raise InputError(
            f"{cfg_path}: SAEs on one attention head (hook_head_index) are not supported."
        )
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise InputError(
            f"{cfg_path}: rescale_acts_by_decoder_norm is not supported; fold the decoder "
            "norms into the weights first."
        )
    weights = _read_safetensors(directory / _SAELENS_WEIGHTS)
    wpath = directory / _SAELENS_WEIGHTS
    _need(weights, ("W_enc", "b_enc", "W_dec", "b_dec"), wpath)
    threshold = weights.get("threshold")
    if activation == "jumprelu" and threshold is None and "log_threshold" in weights:
        threshold = weights["log_threshold"].exp()
    if activation == "jumprelu" and threshold is None:
        _need(weights, ("threshold",), wpath)
    k = cfg.get("k", kwargs.get("k"))
    if activation == "topk" and k is None:
        raise InputError(f"{cfg_path}: a topk SAE needs k (activation_fn_kwargs.k or k).")
    hook = hook_name or cfg.get("hook_name") or cfg.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise InputError(f"{cfg_path} names no hook_name; pass load_saes(..., hook_name=...).")
    for key, dim in (("d_in", 0), ("d_sae", 1)):
        if (
            key in cfg
            and cfg[key] != weights["W_enc"].shape[dim if weights["W_enc"].ndim == 2 else 0]
        ):
            raise InputError(
                f"{cfg_path} says {key}={cfg[key]} but W_enc in {wpath.name} has shape "
                f"{tuple(weights['W_enc'].shape)}; the files don't belong together: {_FIX}."
            )
    return _build(
        wpath,
        hook_name=hook,
        W_enc=weights["W_enc"],
        b_enc=weights["b_enc"],
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        activation=activation,
        k=(int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else k)
        if activation == "topk"
        else None,
        threshold=threshold if activation == "jumprelu" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
        meta={"format": "saelens", "path": str(directory), "cfg": cfg},
    )


# -- Gemma Scope ------------------------------------------------------------------------


def infer_gemma_scope_hook(path: Path) -> tuple[str, str | None]:
    """``(hook_name, output_hook)`` of a Gemma Scope ``params.npz`` from its path, or an
    :class:`InputError` when the path does not say."""
    parts = path.resolve().parts if path.exists() else path.parts
    layers = {int(m.group(1)) for p in parts if (m := re.fullmatch(r"layer_(\d+)", p))}
    if len(layers) != 1:
        found = "no layer_<L> folder" if not layers else f"several: {sorted(layers)}"
        raise InputError(
            f"Can't tell which hook {path} reads ({found} in its path). Pass "
            "load_saes(path, hook_name='blocks.<L>.hook_resid_post')."
        )
    (layer,) = layers
    release = " ".join(p.lower() for p in parts)
    if "transcoder" in release:
        return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"
    if re.search(r"-(att|attn)\b", release):
        raise InputError(
            f"{path} is an attention-output SAE (it reads each head's z, flattened), which "
            "circuitviz does not splice; use a residual-stream or MLP release."
        )
    if re.search(r"-mlp\b", release):
        return f"blocks.{layer}.hook_mlp_out", None
    return f"blocks.{layer}.hook_resid_post", None


def _gemma_scope(path: Path, hook_name: str | None) -> SAE:
    weights = _read_npz(path)
    _need(weights, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), path)
    hook, output_hook = (hook_name, None) if hook_name else infer_gemma_scope_hook(path)
    return _build(
        path,
        hook_name=hook,
        W_enc=weights["W_enc"],
        b_enc=weights["b_enc"],
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        activation="jumprelu",
        threshold=weights["threshold"],
        output_hook=output_hook,
        meta={"format": "gemma-scope", "path": str(path)},
    )


# -- circuit-tracer ---------------------------------------------------------------------


def _circuit_tracer(directory: Path, fetch: Callable[[str], Path]) -> list[SAE]:
    cfg_path = directory / "config.yaml"
    cfg = _read_yaml(cfg_path)
    kind = cfg.get("model_kind")
    if kind != "transcoder_set":
        raise InputError(
            f"{cfg_path}: model_kind {kind!r} is not supported (circuitviz reads per-layer "
            "transcoders, model_kind: transcoder_set; cross-layer transcoders are not "
            "supported)."
        )
    hooks_ = {h: cfg.get(h) for h in ("feature_input_hook", "feature_output_hook")}
    for h, v in hooks_.items():
        if not isinstance(v, str) or not v:
            raise InputError(f"{cfg_path} needs {h} (e.g. 'hook_resid_mid' / 'hook_mlp_out').")
    if "transcoders" in cfg:
        listed = cfg["transcoders"]
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise InputError(f"{cfg_path}: transcoders must be a list of file paths.")
        files = [fetch(p) if p.startswith("hf://") else directory / p for p in listed]
    else:
        found = {
            int(m.group(1)): p
            for p in directory.glob("layer_*.safetensors")
            if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))
        }
        if not found:
            raise InputError(f"{directory} has a config.yaml but no layer_<i>.safetensors files.")
        missing = sorted(set(range(max(found) + 1)) - set(found))
        if missing:
            raise InputError(
                f"{directory} lacks layer_{missing[0]}.safetensors (layers {missing}); {_FIX}."
            )
        files = [found[i] for i in range(len(found))]
    activation, k = cfg.get("activation"), cfg.get("k")
    out = []
    for layer, f in enumerate(files):
        w = _read_npz(f) if f.suffix == ".npz" else _read_safetensors(f)
        _need(w, ("W_enc", "b_enc", "W_dec", "b_dec"), f)
        if "W_skip" in w or "affine_skip_connection" in w:
            raise InputError(
                f"{f} has a skip connection (W_skip), which circuitviz's transcoders don't "
                "model; use transcoders without one."
            )
        W_enc = w["W_enc"]
        if f.suffix != ".npz":  # circuit-tracer keeps W_enc as [d_transcoder, d_model]
            W_enc = W_enc.T.contiguous()
        threshold = w.get("activation_function.threshold", w.get("threshold"))
        act = "jumprelu" if threshold is not None else activation or "relu"
        layer_k = int(w["k"].item()) if "k" in w else k
        out.append(
            _build(
                f,
                hook_name=f"blocks.{layer}.{hooks_['feature_input_hook']}",
                output_hook=f"blocks.{layer}.{hooks_['feature_output_hook']}",
                W_enc=W_enc,
                b_enc=w["b_enc"],
                W_dec=w["W_dec"],
                b_dec=w["b_dec"],
                activation=act,
                k=layer_k if act == "topk" else None,
                threshold=threshold,
                meta={"format": "circuit-tracer", "path": str(f)},
            )
        )
    return out


# -- finding what a path holds ----------------------------------------------------------


def _find(path: Path, depth: int = 0) -> list[tuple[str, Path]]:
    """``(format, location)`` of every SAE source at or under ``path``."""
    if path.is_file():
        if path.suffix == ".npz":
            return [("gemma-scope", path)]
        if path.name == _SAELENS_CFG or path.name == _SAELENS_WEIGHTS:
            return [("saelens", path.parent)]
        if path.name == "config.yaml":
            return [("circuit-tracer", path.parent)]
        return []
    if (path / "config.yaml").is_file():
        return [("circuit-tracer", path)]
    if (path / _SAELENS_CFG).is_file() or (path / _SAELENS_WEIGHTS).is_file():
        return [("saelens", path)]
    if (path / "params.npz").is_file():
        return [("gemma-scope", path / "params.npz")]
    if depth >= _MAX_DEPTH:
        return []
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += _find(child, depth + 1)
    return found


def _fetch_hf(uri: str) -> Path:
    """A local copy of ``hf://org/repo[/subdir or file]`` (Hugging Face hub)."""
    rest = uri.removeprefix("hf://").strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts[:2]) or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"{uri!r} is not a Hugging Face address; write hf://org/repo or "
            "hf://org/repo/subfolder."
        )
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise InputError(
            f"Loading {uri} needs huggingface_hub (pip install huggingface_hub)."
        ) from None
    try:
        local = snapshot_download(repo_id, allow_patterns=[sub, f"{sub}/**"] if sub else None)
    except Exception as err:  # offline, missing repo, gated repo: all end here
        raise InputError(
            f"Could not download {uri} from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err)[:100]}). Without a network, download it where you have one "
            f"(huggingface-cli download {repo_id}) and pass the local directory to load_saes."
        ) from None
    target = Path(local) / sub if sub else Path(local)
    if not target.exists():
        raise InputError(f"{repo_id} has no {sub!r}; check the path after hf://{repo_id}/.")
    return target


def _demo_stats(directory: Path) -> dict:
    """The shipped feature statistics (``scripts/feature_stats_demo.py``), keyed by hook."""
    from ._stats import load_feature_stats

    path = directory / "feature_stats.npz"
    return load_feature_stats(path) if path.is_file() else {}


def load_saes(
    source: str | Path,
    *,
    hook_name: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SAESet:
    """Load SAEs or transcoders as an :class:`SAESet`.

    Args:
        source: ``"demo"`` (TopK SAEs on the demo model's residual stream, shipped), a
            local file or directory (SAELens, Gemma Scope ``params.npz``, circuit-tracer
            transcoders, or a directory of these), or ``"hf://org/repo[/subdir]"``.
        hook_name: the hook a single SAE reads, overriding its config (needed for a Gemma
            Scope file whose path has no ``layer_<L>``).
        device: where the weights go (default: CUDA when present, else CPU).
        dtype: their dtype (default: float32, whatever the file stores).
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype={dtype!r} must be a floating torch dtype, e.g. torch.float32.")
    if hook_name is not None and (not isinstance(hook_name, str) or not hook_name):
        raise InputError(f"hook_name must be a hook name string, got {hook_name!r}.")
    try:
        device = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError):
        raise InputError(f"device={device!r} is not a torch device; use 'cpu' or 'cuda'.") from None
    if isinstance(source, str) and source.startswith("hf://"):
        path, name = _fetch_hf(source), source
    elif source == "demo":
        path, name = DEMO_DIR, "demo"
        if not list(DEMO_DIR.glob(f"*/{_SAELENS_WEIGHTS}")):
            raise InputError(
                f"The demo SAE weights are not installed ({DEMO_DIR}/<hook>/{_SAELENS_WEIGHTS} "
                "missing): reinstall circuitviz, or rebuild them with "
                "`python scripts/train_demo_saes.py --train`."
            )
    elif isinstance(source, (str, Path)):
        path, name = Path(source).expanduser(), str(source)
    else:
        raise InputError(
            f"load_saes takes 'demo', a path or 'hf://org/repo', got {type(source).__name__}."
        )
    if not path.exists():
        raise InputError(f"{path} does not exist; pass 'demo', a local path or 'hf://org/repo'.")
    found = _find(path)
    if not found:
        raise InputError(
            f"No SAE found at {path}: expected cfg.json + sae_weights.safetensors (SAELens), "
            "params.npz (Gemma Scope) or config.yaml + layer_<i>.safetensors (circuit-tracer)."
        )
    n_saes = len(found) if all(f != "circuit-tracer" for f, _ in found) else 2
    if hook_name is not None and n_saes > 1:
        raise InputError(
            f"hook_name= names the hook of one SAE, but {path} holds several; leave it out "
            "(each SAE's own config names its hook)."
        )
    saes: list[SAE] = []
    where: dict[str, Path] = {}
    for fmt, loc in found:
        if fmt == "saelens":
            batch = [_saelens(loc, hook_name)]
        elif fmt == "gemma-scope":
            batch = [_gemma_scope(loc, hook_name)]
        else:
            batch = _circuit_tracer(loc, _fetch_hf)
        for sae in batch:
            if sae.hook_name in where:
                raise InputError(
                    f"{where[sae.hook_name]} and {loc} both read {sae.hook_name!r}; load them "
                    "separately (pass one of the directories)."
                )
            where[sae.hook_name] = loc
            saes.append(sae.to(device, dtype or torch.float32))
    stats = _demo_stats(path) if name == "demo" else {}
    return SAESet(saes, name=name, stats=stats)


# -- checking SAEs against a model ------------------------------------------------------

# Hooks whose last dimension is known from the config: d_model or d_mlp.
_D_MODEL_SITES = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_mlp_in",
    "mlp.hook_in",
    "mlp.hook_out",
    "ln1.hook_normalized",
    "ln2.hook_normalized",
)
_D_MLP_SITES = ("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")


def _static_width(model, hook: str) -> int | None:
    if hook in ("hook_embed", "ln_final.hook_normalized"):
        return int(model.cfg.d_model)
    site = re.sub(r"^blocks\.\d+\.", "", hook)
    if site == hook:
        return None
    if site in _D_MODEL_SITES:
        return int(model.cfg.d_model)
    if site in _D_MLP_SITES and getattr(model.cfg, "d_mlp", None):
        return int(model.cfg.d_mlp)
    return None


def _measured_widths(model, names: list[str]) -> dict[str, int]:
    """The last dimension of each hook's activation, from one forward pass on 2 tokens."""
    from .._hooks import hooks

    widths: dict[str, int] = {}

    def recorder(name):
        def fn(x, hook):
            widths[name] = int(x.shape[-1])

        return fn

    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad(), hooks(model, [(h, recorder(h)) for h in names]):
        model(tokens, return_type="logits")
    return widths


def check_saes(model, saes) -> SAESet:
    """The SAEs as an :class:`SAESet` if each fits ``model``, else an :class:`InputError`.

    Each hook (and a transcoder's output hook) must exist in ``model.hook_dict``, and each
    SAE's input (output) width must equal that hook's activation width: from ``model.cfg``
    for residual, attention-output and MLP hooks, otherwise measured in one forward pass on
    2 tokens. The model is left as it was.
    """
    from difflib import get_close_matches

    from .._models import check_bridge
    from ._sae import as_sae_set

    check_bridge(model)
    saes = as_sae_set(saes)
    wanted: list[tuple[SAE, str, int, str]] = []
    for sae in saes.values():
        wanted.append((sae, sae.hook_name, sae.d_in, "reads"))
        if sae.output_hook is not None:
            wanted.append((sae, sae.output_hook, sae.d_out, "writes"))
    for sae, hook, _, role in wanted:
        if hook not in model.hook_dict:
            near = get_close_matches(hook, list(model.hook_dict), n=3)
            hint = f" Close names: {near}." if near else ""
            raise InputError(
                f"The SAE {sae.name!r} {role} {hook!r}, which this model has no hook for "
                f"({model.cfg.n_layers} layers).{hint} Load SAEs made for this model, or pass "
                "hook_name= to load_saes."
            )
    model_device = torch.device(model.cfg.device or "cpu")
    for sae in saes.values():
        if sae.W_enc.device.type != model_device.type:
            raise InputError(
                f"The SAE {sae.name!r} is on {sae.W_enc.device}, the model on {model_device}; "
                f"move the SAEs: saes = saes.to({model_device.type!r})."
            )
    widths = {h: w for _, h, _, _ in wanted if (w := _static_width(model, h)) is not None}
    unknown = sorted({h for _, h, _, _ in wanted if h not in widths})
    if unknown:
        widths.update(_measured_widths(model, unknown))
    for sae, hook, width, role in wanted:
        if hook in widths and widths[hook] != width:
            raise InputError(
                f"The SAE {sae.name!r} {role} {hook!r} with width {width}, but that hook's "
                f"activations have width {widths[hook]} in this model: the SAE was made for "
                "another model (or another hook)."
            )
    return saes
