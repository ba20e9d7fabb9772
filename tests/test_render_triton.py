"""The default CUDA torch wheel brings triton: its LLVM and Mesa's must not crash a process.

Loaded after an EGL context (Mesa's llvmpipe), triton 3.8's bundled LLVM crashed the
process with SIGSEGV: `madi train --sync` died at its first optimizer (torch._dynamo
imports triton). The dev extra installs triton so that this test runs where CI runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np
    from robot.config import Config
    from sim.mirror import Mirror
    cfg = Config()
    mirror = Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim)
    mirror.reset(np.array(cfg.arm.q_home))
    first = mirror.render()
    from triton._C import libtriton  # what torch._dynamo pulls in at the first Adam
    import torch
    net = torch.nn.Linear(3, 3)
    opt = torch.optim.Adam(net.parameters())
    net(torch.zeros(1, 3)).sum().backward()
    opt.step()
    assert np.array_equal(mirror.render(), first)
    print("ok")
""")


def test_rendering_then_triton_and_an_optimizer_do_not_crash():
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stdout.strip().endswith("ok")
