"""One progress bar over the named steps of a long job (``explore()``, the CLI's ``figure``).

``tqdm.auto`` draws a widget bar in a notebook and a text bar on stderr elsewhere. The
steps' own inner bars (patching, EAP-IG) appear under it while they run and vanish after.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm


class Steps:
    """``with Steps("explore", ["patching", "views"]) as steps: steps.start("patching") …``

    The bar counts finished steps and names the running one. It closes however the block
    ends, so an interrupt leaves no half-drawn bar (in a notebook it turns red)."""

    def __init__(
        self, title: str, names: Sequence[str], *, enabled: bool = True, **tqdm_options: Any
    ):
        self.title = title
        self.names = list(names)
        self.enabled = enabled
        self.tqdm_options = tqdm_options
        self.current: str | None = None
        self.bar: Any = None

    def __enter__(self) -> Steps:
        self.bar = tqdm(
            total=len(self.names),
            desc=self.title,
            disable=not self.enabled,
            bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| {elapsed}",
            **{"leave": False, **self.tqdm_options},
        )
        return self

    def start(self, name: str) -> None:
        """Mark the running step done and show ``name`` as running."""
        if name not in self.names:
            raise ValueError(f"unknown step {name!r}; the steps are {self.names}")
        if self.current is not None:
            self.bar.update(1)
        self.current = name
        self.bar.set_description_str(f"{self.title}: {name}", refresh=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None and self.current is not None:
            self.bar.update(1)
        self.bar.close()
