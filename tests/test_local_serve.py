"""The `serve run` harness leaves nothing behind: Ray's Serve actors can outlive the CLI (GCS and raylet
gone, the orphaned HTTP proxy still listening), and a later run would then talk to the old application.

Real processes and a real socket; the listener stands in for Ray's proxy actor, which runs in a process
group of its own and so escapes the CLI's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

from harness.local_serve import _stop, _wait_port_free

LISTENER = textwrap.dedent("""
    import socket, subprocess, sys, time
    proxy = subprocess.Popen([sys.executable, "-c",
        "import socket, sys, time\\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\\n"
        "print(s.getsockname()[1], flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    print(proxy.stdout.readline().strip(), flush=True)
    time.sleep(600)
""")


def test_stop_kills_what_the_cli_left_behind(tmp_path):
    ray_tmp = str(tmp_path)
    cli = subprocess.Popen([sys.executable, "-c", LISTENER], env={**os.environ, "RAY_TMPDIR": ray_tmp},
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    port = int(cli.stdout.readline())
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the "proxy" is listening

    _stop(cli, ray_tmp)

    assert cli.returncode is not None
    assert _wait_port_free("127.0.0.1", port, timeout_s=10), "the orphaned listener survived"


def test_wait_port_free_reports_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not _wait_port_free("127.0.0.1", busy.getsockname()[1], timeout_s=0)
