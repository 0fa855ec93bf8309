"""nnsight as a backend: a request is one nnsight session, run here or on NDIF.

Every run of a request is a trace inside one ``model.session(...)``; locally the session runs
in this process, and with ``remote=True`` the same session — the same code — is serialised
and sent to NDIF as one job, so a whole analysis costs one request and only the readouts
(metric inputs, never full-vocabulary logits unless a custom metric needs them) come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from .._pairs import InputError
from . import (
    _edges,
    _feature_graph_program,
    _feature_program,
    _local_fast,
    _program,
    _stats_program,
    _toolkit_program,
)
from ._base import Output, Run, StatusCallback

#: The HF architectures whose modules map onto circuitviz's sites.
ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}
#: Sites that can be written (the pattern is computed inside the attention function, not
#: at a module boundary, so nnsight can read it but not patch it).
WRITABLE = ("resid_pre", "q", "k", "v", "z", "attn_out", "mlp_out")


class BridgeOnly(InputError, AttributeError):
    """An analysis reached for what only a TransformerLens bridge has (``hook_dict``,
    ``run_with_cache`` …). An ``AttributeError`` too, so ``hasattr`` stays False."""


class RemoteJobError(InputError):
    """A remote (NDIF) job could not run: no API key, model not served, it failed, timed out
    or was cancelled. The message names the cause and the fix."""


class JobCancelled(RemoteJobError):
    """The remote job was cancelled from this side (``model.cancel()``)."""


def _state(status: str) -> str | None:
    """NDIF's job status as one of the states views show."""
    if status in ("RECEIVED", "QUEUED", "PROVISIONING", "DEPLOYING"):
        return "queued"
    if status in ("DISPATCHED", "RUNNING"):
        return "running"
    return {"COMPLETED": "done", "ERROR": "error"}.get(status)


class JobScope:
    """The jobs one caller submits inside ``model.watching(callback, scope)`` — a view's
    click, its faithfulness, its steer — so that caller can cancel its own and no other:
    :meth:`cancel` stops waiting for the scope's job in flight, and refuses its later ones
    (also one still waiting for the model to be free) with :class:`JobCancelled`."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self.callback: StatusCallback | None = None

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def _cancelled_error(how: str = "its caller cancelled it") -> JobCancelled:
    return JobCancelled(
        f"Stopped waiting for the NDIF job ({how}): its result, if the server still "
        "finishes it, is dropped. Run the analysis again to resubmit."
    )


class _JobWatch:
    """Stands in for nnsight's status display: reports each update to the model's callback,
    and — called every ~0.1 s while nnsight waits on the server — enforces the timeout and a
    cancel request."""

    enabled = True  # makes nnsight poll with a short timeout, so refresh() runs while waiting

    def __init__(self, model: NNsightModel, bar: tqdm, scope: JobScope | None):
        self.model, self.bar, self.scope = model, bar, scope
        self.start = time.monotonic()
        self.state: str | None = None

    def update(self, response: Any) -> None:
        status = getattr(response.status, "value", str(response.status))
        state = _state(status)
        if state is not None and state != self.state:  # RECEIVED and QUEUED are one state
            self.state = state
            self.model._report(state, response.description or "", self.scope)
            self.bar.set_postfix_str(state)
        self.refresh()

    def refresh(self) -> None:
        # model.cancel() stops the job in flight, whoever's; a scope's cancel only its own
        wide = self.model._cancel.is_set()
        if wide or (self.scope is not None and self.scope.cancelled):
            self.model._report("cancelled", "cancelled from this side", self.scope)
            raise _cancelled_error("model.cancel()" if wide else "its caller cancelled it")
        limit = self.model.timeout_s
        if limit is not None and time.monotonic() - self.start > limit:
            self.model._report("error", "timed out", self.scope)
            raise RemoteJobError(
                f"The NDIF job did not finish within timeout_s={limit:g} s (the queue may be "
                "long, or the model is still loading): raise model.timeout_s, or check the "
                "deployment with nnsight.status()."
            )


def _remote_backend(model: NNsightModel, bar: tqdm, scope: JobScope | None):
    """An nnsight ``RemoteBackend`` whose waiting reports job states; with a ``transport``
    (a test's fake NDIF) the serialised request goes there instead of the network."""
    from nnsight.intervention.backends.remote import RemoteBackend

    class CircuitvizRemote(RemoteBackend):
        def request(self, request, tracer):
            if model.transport is None:
                return super().request(request, tracer)
            blob = self._serialize(tracer)
            return model.transport.run(self, request, blob)

    key = model.transport.model_key(model) if model.transport else model.lm.to_model_key()
    backend = CircuitvizRemote(
        key, api_key=model.api_key, host=getattr(model.transport, "host", None)
    )
    backend.display = _JobWatch(model, bar, scope)
    return backend


class NNsightModel:
    """A model run through nnsight — locally, or on NDIF with ``remote=True``.

    Offers what the analyses read from a model (``cfg``, the tokenizer, ``to_tokens`` …) and
    the :class:`Backend` that runs requests. ``on_status(state, detail)`` is called with each
    remote job state (``queued``, ``running``, ``done``, ``error``, ``cancelled``);
    ``cancel()`` stops waiting for the job in flight; ``timeout_s`` bounds the wait.
    """

    backend_name = "nnsight"

    def __init__(
        self,
        lm: Any,
        *,
        repo_id: str | None = None,
        remote: bool = False,
        api_key: str | None = None,
        timeout_s: float | None = None,
        on_status: StatusCallback | None = None,
        transport: Any = None,
        default_prepend_bos: bool = True,
        model_name: str | None = None,
    ):
        config = lm.config
        kind = ARCHS.get(getattr(config, "model_type", ""))
        if kind is None:
            raise InputError(
                f"circuitviz's nnsight backend knows Llama-style (llama, mistral, qwen2) and "
                f"GPT-2 models, not model_type={config.model_type!r}: load it with "
                "circuitviz.load_model(name) (the TransformerLens bridge) instead."
            )
        self.lm, self.arch, self.remote = lm, kind, bool(remote)
        self.repo_id = (
            repo_id or getattr(lm, "repo_id", None) or getattr(config, "_name_or_path", "")
        )
        self.api_key, self.timeout_s, self.on_status = api_key, timeout_s, on_status
        self.transport = transport
        self.tokenizer = lm.tokenizer
        self.job_state: str | None = None
        self._cancel = threading.Event()
        # One request at a time: a view's worker thread (a click's ablation) and its message
        # loop (the faithfulness that click asks for) may both reach for the model.
        self._busy = threading.Lock()
        self._scopes = threading.local()  # this thread's JobScopes, innermost last
        self._memo: dict = {}
        n_heads = config.num_attention_heads if kind == "llama" else config.n_head
        d_model = config.hidden_size if kind == "llama" else config.n_embd
        param = next(iter(lm._module.parameters()), None)
        self.cfg = SimpleNamespace(
            n_layers=config.num_hidden_layers if kind == "llama" else config.n_layer,
            n_heads=n_heads,
            n_key_value_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_model=d_model,
            d_head=d_model // n_heads,
            d_mlp=getattr(config, "intermediate_size", None) or 4 * d_model,
            d_vocab=config.vocab_size,
            n_ctx=getattr(config, "max_position_embeddings", None) or config.n_positions,
            default_prepend_bos=default_prepend_bos,
            device=param.device if param is not None and not remote else torch.device("cpu"),
            dtype=param.dtype if param is not None else torch.float32,
            model_name=model_name or self.repo_id or "nnsight-model",
        )
        self._hooks0 = None if remote else _hook_counts(lm._module)
        self.backend = NNsightBackend(self)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: TransformerLens API that an analysis
        # not ported to nnsight uses. Say so, instead of an AttributeError deep inside it.
        if name.startswith("_") or name == "cfg":
            raise AttributeError(name)
        from ._base import PORTED

        raise BridgeOnly(
            f"This analysis runs on the TransformerLens bridge only (it uses model.{name}); on "
            f"an nnsight model circuitviz runs {', '.join(PORTED)}. Load the bridge for it: "
            f"circuitviz.load_model({self.cfg.model_name!r})."
        )

    def __repr__(self) -> str:
        where = "on NDIF" if self.remote else "local"
        return f"NNsightModel({self.cfg.model_name!r}, {where})"

    # -------------------------------------------------------------- tokenizer, as TL has it
    def to_tokens(self, text: str, prepend_bos: bool | None = None, truncate: bool = True):
        bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos:
            ids = [self.tokenizer.bos_token_id, *ids]
        return torch.tensor([ids], dtype=torch.long)

    def to_string(self, tokens: Any) -> str:
        if isinstance(tokens, int):
            tokens = [tokens]
        return self.tokenizer.decode(tokens)

    def to_str_tokens(self, text_or_tokens: Any, prepend_bos: bool | None = None) -> list[str]:
        if isinstance(text_or_tokens, str):
            text_or_tokens = self.to_tokens(text_or_tokens, prepend_bos=prepend_bos)[0]
        return [self.tokenizer.decode([int(t)]) for t in torch.as_tensor(text_or_tokens).flatten()]

    # -------------------------------------------------------------- remote jobs
    def cancel(self, scope: JobScope | None = None) -> None:
        """Stop waiting for the remote job in flight (it raises :class:`JobCancelled`),
        whoever submitted it; with ``scope``, only that scope's jobs (see :meth:`watching`)."""
        if scope is not None:
            scope.cancel()
        else:
            self._cancel.set()

    @contextmanager
    def watching(
        self, callback: StatusCallback, scope: JobScope | None = None
    ) -> Iterator[JobScope]:
        """Inside, on this thread: the jobs submitted belong to ``scope`` (a new one if not
        given), which is yielded — ``scope.cancel()`` stops them and no other caller's — and
        ``callback(state, detail)`` receives their states (next to ``on_status``, which stays
        the user's and hears every job's)."""
        scope = scope or JobScope()
        scope.callback = callback
        stack = self._scopes.__dict__.setdefault("stack", [])
        stack.append(scope)
        try:
            yield scope
        finally:
            stack.remove(scope)

    def _scope(self) -> JobScope | None:
        """The innermost scope this thread is watching, if any."""
        stack = self._scopes.__dict__.get("stack")
        return stack[-1] if stack else None

    def _report(self, state: str, detail: str, scope: JobScope | None = None) -> None:
        self.job_state = state
        for callback in [self.on_status, scope.callback if scope else None]:
            if callback is not None:
                callback(state, detail)

    def has_hooks(self) -> bool:
        """Whether any torch hook was left on the model since it was wrapped."""
        return self._hooks0 is not None and _hook_counts(self.lm._module) != self._hooks0


def _hook_counts(module: torch.nn.Module) -> tuple[int, ...]:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return tuple(sum(len(getattr(m, n, {})) for m in module.modules()) for n in names)


class NNsightBackend:
    """Runs a request as one nnsight session: local, or one NDIF job."""

    name = "nnsight"

    def __init__(self, model: NNsightModel):
        self.model = model

    @property
    def remote(self) -> bool:
        return self.model.remote

    def sites(self) -> tuple[str, ...]:
        return WRITABLE

    def execute(
        self, runs: Sequence[Run], *, desc: str = "", progress: bool = True
    ) -> list[Output]:
        model = self.model
        plain = [r.as_plain() for r in runs]
        for run in plain:  # one check here, not a failure deep inside a (remote) trace
            for site, _layer in run["writes"]:
                if site not in WRITABLE:
                    raise InputError(
                        f"Site {site!r} cannot be written on the nnsight backend (the "
                        f"attention pattern is not a module output there); writable sites: "
                        f"{WRITABLE}. Patch it on the TransformerLens bridge: "
                        "circuitviz.load_model(name)."
                    )
        scope = model._scope()
        _acquire(model, scope)
        try:
            return self._execute(plain, desc, progress, scope)
        finally:
            model._busy.release()

    def _execute(
        self, plain: list[dict], desc: str, progress: bool, scope: JobScope | None
    ) -> list[Output]:
        model, cfg = self.model, self.model.cfg
        shape = {
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_key_value_heads,
        }
        # Locally the bar moves run by run; a remote job is one step, with its state shown.
        total = 1 if model.remote else len(plain)
        bar = tqdm(total=total, desc=desc or "nnsight request", disable=not progress, leave=False)
        try:
            if model.remote:
                from . import _remote

                _remote.preflight(model)
                model._cancel.clear()
                backend = _remote_backend(model, bar, scope)
                _remote.ship_by_value()
            else:
                backend = None
                _program.TICK = bar.update
            try:
                # no_grad, not inference_mode: nnsight writes into activations in place.
                fast = (
                    nullcontext() if model.remote else _local_fast.skinny_linears(model.lm, plain)
                )
                with torch.no_grad(), fast:
                    results = _session(model.lm, backend, model.arch, shape, plain)
            except RemoteJobError:
                raise
            except Exception as err:  # the server's refusal or failure, as one error type
                if model.remote and _from_the_wire(err):
                    model._report("error", str(err), scope)
                    raise _remote.explain(err, model) from None
                raise
            if model.remote:
                bar.update()
        finally:
            _program.TICK = None
            bar.close()
        return [Output(_detach(r["out"]), _detach(r["back"])) for r in results]


def _acquire(model: NNsightModel, scope: JobScope | None) -> None:
    """Wait for the model to be free (it runs one request at a time); a scope cancelled
    meanwhile gives up at once, so its job is never sent."""
    waited = False
    while True:
        if scope is not None and scope.cancelled:  # only its caller hears: nothing was sent
            if scope.callback is not None:
                scope.callback("cancelled", "cancelled before it was sent")
            raise _cancelled_error()
        if model._busy.acquire(timeout=0.05):
            return
        if not waited and scope is not None and scope.callback is not None:
            scope.callback("queued", "waiting for this model's job in flight")
        waited = True


def _from_the_wire(err: Exception) -> bool:
    """Whether ``err`` is NDIF's answer or the network's (not a bug on this side)."""
    if type(err).__name__ == "RemoteError" or isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return type(err).__module__.split(".")[0] in ("websocket", "httpx", "httpcore")


def _detach(d: dict) -> dict:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def _session(lm, backend, arch: str, shape: dict, runs: list[dict]) -> list[dict]:
    """The request itself: the runs of one analysis as traces in one session. The body is
    what NDIF executes for ``remote=True``; locally it runs here, line for line the same."""
    import nnsight
    import torch

    with lm.session(backend=backend):
        saved = {}
        results = []
        for index, run in enumerate(runs):
            if index:  # earlier readouts: a later run's metric gradient reads its baselines
                saved[("readout", index - 1)] = results[-1]["out"]
            back = {}
            kind = run["grad"].get("kind")
            if kind == "senders":  # every sender's output (and the embeddings), kept here
                with lm.trace(run["tokens"], **_program.trace_kwargs(run)):
                    if run["grad"].get("embed"):  # EAP-IG's corrupted embeddings
                        embed = _program.embedding(lm, arch, run, saved)
                        saved[("embed",)] = embed.detach().clone()
                    saved[("senders",)] = _program.nnsight_senders(lm, arch, shape)
                    out = _program.readout(lm.lm_head.output[:, -1], run["readout"])
                if run["grad"].get("bring"):  # to be kept on the client (a local model)
                    back["senders"] = saved[("senders",)]
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if kind in ("interpolated", "circuits"):  # EAP-IG's step, circuits' pass
                with lm.trace(run["tokens"], **_program.trace_kwargs(run)):
                    if kind == "circuits":
                        out = _edges.nnsight_circuits(lm, arch, shape, run, saved)
                    else:
                        _program.embedding(lm, arch, run, saved)
                        out = _program.readout(lm.lm_head.output[:, -1], run["readout"])
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if kind == "unembed":  # SAE decoder directions' logit effects, off the weights
                out = _feature_program.unembed(lm, arch, run["grad"], saved)
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if kind == "activations":  # feature statistics: SAE hooks, real tokens only
                with lm.trace(run["tokens"]) as tracer:
                    out = _stats_program.read(lm, arch, run)
                    tracer.stop()  # nothing after the last SAE hook is needed
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if kind == "generate":  # greedy generation: one trace per new token
                spec = run["grad"]
                state = _toolkit_program.generation_start(spec, run["tokens"], spec["mask"])
                for step in range(spec["max_new_tokens"]):
                    with lm.trace({"input_ids": state["tokens"], "attention_mask": state["mask"]}):
                        _toolkit_program.intervene(lm, arch, shape, spec["intervention"])
                        logits = lm.lm_head.output[:, -1]
                    if _toolkit_program.generation_step(state, logits, step):
                        break
                results.append({"out": _toolkit_program.generation_result(state), "back": back})
                _program.tick()
                continue
            if kind in _feature_graph_program.KINDS:  # feature graphs: EAP(-IG), circuits
                with torch.set_grad_enabled(kind == "feature_eap"):
                    with lm.trace(run["tokens"], **_program.trace_kwargs(run)):
                        out = _feature_graph_program.carry_out(lm, arch, shape, run, saved, back)
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if kind in _toolkit_program.KINDS:  # logit lens, DLA, path patching
                with lm.trace(run["tokens"], **_program.trace_kwargs(run)):
                    out = _toolkit_program.carry_out(lm, arch, shape, run, saved)
                    logits = lm.lm_head.output
                    out = _toolkit_program.finish(out, logits)
                    out.update(_program.readout(logits[:, -1], run["readout"]))
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if kind:  # a forward pass with a graph, then its gradient (attribution, EAP)
                with torch.enable_grad():
                    with lm.trace(run["tokens"], **_program.trace_kwargs(run)):
                        if kind == "eap":
                            out = _program.nnsight_eap(lm, arch, shape, run, saved)
                        else:
                            out = _program.nnsight_attribution(lm, arch, shape, run, saved)
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            if run["generate"]:  # a greedy continuation, SAEs spliced at every pass
                with lm.generate(run["tokens"], **run["generate"]["options"]) as gen:
                    _feature_program.nnsight_generate(lm, arch, shape, gen, run, index, saved, back)
                out = back.pop("generated")
                out.update(_program.readout(out.pop("first"), run["readout"]))
                results.append({"out": out, "back": back})
                _program.tick()
                continue
            with lm.trace(run["tokens"], **_program.trace_kwargs(run)):
                for layer in range(shape["n_layers"]):
                    at = _feature_program.layer_splices(lm, arch, layer, run, index, saved, back)
                    _program.nnsight_layer(lm, arch, shape, layer, run, index, saved, back, at)
                out = _program.readout(lm.lm_head.output[:, -1], run["readout"])
            results.append({"out": out, "back": back})
            _program.tick()
        results = nnsight.save(results)
    return results
