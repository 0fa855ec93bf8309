"""NDIF: the checks before a request leaves, the transport, and its errors in our words.

A request goes through nnsight's own ``RemoteBackend`` (serialisation, websocket, download);
circuitviz adds what an analysis needs around it: an API key and the model's deployment
checked *before* anything is sent, the job's state reported to the views, a timeout and a
cancel, and every failure raised as a :class:`RemoteJobError` naming the fix.
"""

from __future__ import annotations

from ._nnsight import NNsightModel, RemoteJobError

KEY_HELP = (
    "set the NDIF_API_KEY environment variable, or run "
    "nnsight.CONFIG.set_default_api_key('<key>') once (get a key at https://login.ndif.us)"
)


def api_key(model: NNsightModel) -> str | None:
    from nnsight import CONFIG

    return model.api_key or CONFIG.API.APIKEY or None


class NDIF:
    """The real NDIF service, through nnsight (``nnsight.CONFIG.API.HOST``)."""

    host = None  # nnsight's configured host

    def deployments(self) -> dict[str, str]:
        """``{repo_id: state}`` of the models NDIF has deployed now (empty if unreachable)."""
        from nnsight import ndif

        raw = ndif.status(raw=True) or {}
        out = {}
        for value in raw.get("deployments", {}).values():
            repo = value.get("repo_id")
            if repo and (out.get(repo) != "RUNNING"):
                out[repo] = value.get("application_state", "UNKNOWN")
        return out


_SERVED: dict[tuple[int, str], bool] = {}  # (transport, repo) -> served; checked once


def preflight(model: NNsightModel) -> None:
    """Refuse, before anything is sent, a request NDIF would refuse: no API key, or a model
    that is not deployed and running."""
    if not api_key(model):
        raise RemoteJobError(f"Running on NDIF needs an API key, and none is set: {KEY_HELP}.")
    transport = model.transport or NDIF()
    cache_key = (id(model.transport), model.repo_id)
    if _SERVED.get(cache_key):
        return
    deployed = transport.deployments()
    state = deployed.get(model.repo_id)
    if state != "RUNNING":
        where = f"it is deployed but {state}" if state else "NDIF does not serve it right now"
        served = ", ".join(sorted(r for r, s in deployed.items() if s == "RUNNING")[:8])
        raise RemoteJobError(
            f"Model {model.repo_id!r} cannot run on NDIF: {where}. Check with "
            f"nnsight.status(); models running now: {served or 'none reachable'}. Use one of "
            "those, or run locally (remote=False)."
        )
    _SERVED[cache_key] = True


def ship_by_value() -> None:
    """Send the request's helper code with it: NDIF has torch and nnsight, not circuitviz."""
    import nnsight

    from . import (
        _edges,
        _feature_graph_program,
        _feature_program,
        _program,
        _stats_program,
        _toolkit_program,
    )

    nnsight.register(_program)
    nnsight.register(_program._metric_program)  # the built-in metrics' gradients
    nnsight.register(_edges)
    nnsight.register(_feature_program)
    nnsight.register(_feature_graph_program)
    nnsight.register(_toolkit_program)
    nnsight.register(_stats_program)


def explain(err: Exception, model: NNsightModel) -> RemoteJobError:
    """nnsight's ``RemoteError`` as a :class:`RemoteJobError` that names the fix."""
    text = str(err)
    low = text.lower()
    if "api key" in low or "401" in low or "unauthori" in low or "forbidden" in low:
        fix = f"check the API key: {KEY_HELP}"
    elif "not found" in low or "not running" in low or "no deployment" in low:
        fix = "check that NDIF serves the model (nnsight.status())"
    elif "memory" in low or "oom" in low:
        fix = (
            "ask for fewer conditions per request (a smaller max_rows; for feature_stats a "
            "smaller max_request_bytes or batch_size)"
        )
    elif "connect" in low or "timed out" in low or "resolve" in low:
        fix = "NDIF could not be reached: check the network and nnsight.CONFIG.API.HOST"
    else:
        fix = "see the server's message above; rerun, or run locally with remote=False"
    return RemoteJobError(f"The NDIF job for {model.repo_id!r} failed: {text[:300]} — {fix}.")
