"""Messages from the page are handled on the kernel's main thread, where cells run.

ipykernel 7 under JupyterLab hands widget messages to a subshell's thread; the views move
them to the main thread (``View._handle_msg``) so a click's torch work shares the cells'
OpenMP thread pool (see ``benchmarks/clamp_thread.py`` for what a second pool costs). Here a
real kernel (``jupyter_client``) gets a message on another thread, as a subshell would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import threading, time
from circuitviz.views._base import View

ran = []

class Probe(View):
    def _msg_probe(self, content):
        ran.append(("probe", threading.current_thread() is threading.main_thread()))

view = Probe()
view.observe(
    lambda change: ran.append(("selected", threading.current_thread() is threading.main_thread())),
    names="selected",
)
custom = {"content": {"data": {"method": "custom", "content": {"type": "probe"}}}, "buffers": []}
update = {"content": {"data": {"method": "update", "state": {"selected": "L1H2"}}}, "buffers": []}
for msg in (custom, update):
    worker = threading.Thread(target=view._handle_msg, args=(msg,))
    worker.start()
    worker.join()
print("DEFERRED", ran == [])
"""


def test_page_messages_on_another_thread_run_on_the_kernels_main_thread():
    jupyter_client = pytest.importorskip("jupyter_client")
    from tests.conftest import kernel_eval

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    km = jupyter_client.KernelManager(
        kernel_cmd=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    )
    km.start_kernel(env=env)
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        # Within the cell nothing ran: the messages wait for the main thread to be free.
        assert "DEFERRED True" in kernel_eval(kc, PROBE)
        out = kernel_eval(kc, "print('RAN', ran, view.selected)")
        assert "RAN [('probe', True), ('selected', True)] L1H2" in out, out
        # Outside a kernel's other threads (here: its main thread) a message runs in place.
        out = kernel_eval(kc, "ran.clear(); view._handle_msg(custom); print('INPLACE', ran)")
        assert "INPLACE [('probe', True)]" in out, out
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
