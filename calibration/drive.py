"""One ``madi calibrate`` step on a rig: connect, collect or load the views, measure.

:func:`measure_step` returns the section (:mod:`robot.calibration_file`) that the step
measures; the caller saves it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from calibration import measure
from calibration.board import ScreenBoard
from robot.backends import make_rig
from robot.config import Config

logger = logging.getLogger("madi")

#: The steps that solve from board views (the others measure on the moving rig).
VIEW_STEPS = ("camera", "hand-eye", "monitor")


def measure_step(step: str, cfg: Config, folder: Path, method: str,
                 images: Path | None = None, views: int = 15,
                 trials: int = 10) -> tuple[str, BaseModel]:
    """Measure one calibration step on the rig of ``cfg`` (none for saved views).

    Args:
        step: ``camera``, ``hand-eye``, ``monitor``, ``colour`` or ``latency``.
        cfg: The config of the rig (full-resolution frames for the view steps).
        folder: Where the views of a view step are saved (``views-STEP``).
        method: How it was measured, recorded in the section.
        images: A folder of saved views to solve from instead of moving the arm.
        views: Poses to visit for a view step.
        trials: Trials of the latency step.

    Returns:
        The section's name in the calibration file and the section.
    """
    views_step = step in VIEW_STEPS
    rig = None if (views_step and images) else make_rig(cfg)
    try:
        if rig is not None:
            rig.connect()
        if views_step:
            board = ScreenBoard(rig.display.size_px if rig else screen_px(cfg),
                                tuple(cfg.monitor.size_m))
            if images:
                collected = measure.load_views(images)
                method += f", views from {images}"
            else:
                poses = measure.view_poses(cfg, views, seed=cfg.seed)
                collected = measure.collect_views(rig, cfg, poses, board.image())
                saved = measure.save_views(collected, folder / f"views-{step}")
                logger.info("views saved to %s (reuse them with --images)", saved)
            name, section = {
                "camera": ("camera",
                           lambda: measure.camera_intrinsics(collected, board, method)),
                "hand-eye": ("hand_eye",
                             lambda: measure.hand_eye(collected, board, cfg, method)),
                "monitor": ("monitor",
                            lambda: measure.monitor_pose(collected, board, cfg, method)),
            }[step]
            return name, section()
        if step == "colour":
            return "colour", measure.colour(rig, cfg, measure.view_poses(cfg, 3, seed=cfg.seed),
                                            method)
        return "latency", measure.latency(rig, cfg, trials, method)
    finally:
        if rig is not None:
            rig.disconnect()


def screen_px(cfg: Config) -> tuple[int, int]:
    """Size of the image the display shows: the sim's texture or the real resolution."""
    size = cfg.sim.texture_px if cfg.backend == "sim" else cfg.monitor.resolution_px
    return int(size[0]), int(size[1])
