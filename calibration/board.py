"""The calibration pattern shown full-screen on the target monitor: a ChArUco board.

The target display shows :meth:`ScreenBoard.image` (white screen, board centred), so the
pattern's size in metres follows from the screen's pixel pitch (``monitor.size_m`` /
displayed image size): no printed board to measure. OpenCV's ChArUco detector
(``cv2.aruco.CharucoDetector``) finds its inner corners with ids, and
``CharucoBoard.getChessboardCorners`` gives their 3D positions in the board frame.

Frames: the board frame has its origin at the board's top-left outer corner, x to the
right, y down the screen, z into the screen (OpenCV's convention). The screen frame of
``monitor`` has its origin at the screen centre, x right, y up, z out of the screen;
:meth:`ScreenBoard.screen_from_board` maps one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Board squares (columns, rows) and the marker side as a fraction of the square.
SQUARES = (8, 5)
MARKER_FRACTION = 0.7
#: Share of the screen (each direction) the board may use.
FILL = 0.9


@dataclass
class ScreenBoard:
    """A ChArUco board drawn on a screen image of ``size_px``.

    Args:
        size_px: (width, height) of the image the display shows, px.
        size_m: (width, height) of the visible screen, m.

    Attributes:
        square_px: Square side in screen pixels.
        offset_px: (u, v) of the board's top-left corner on the screen image, px.
        pitch_m: (x, y) metres per screen pixel.
        board: The ``cv2.aruco.CharucoBoard`` (square side in m).
    """

    size_px: tuple[int, int]
    size_m: tuple[float, float]

    def __post_init__(self) -> None:
        w, h = (int(v) for v in self.size_px)
        cols, rows = SQUARES
        self.square_px = int(min(FILL * w / cols, FILL * h / rows))
        if self.square_px < 12:
            raise ValueError(f"a {w}x{h} px screen is too small for a {cols}x{rows} board")
        self.offset_px = ((w - cols * self.square_px) // 2, (h - rows * self.square_px) // 2)
        self.pitch_m = (self.size_m[0] / w, self.size_m[1] / h)
        if abs(self.pitch_m[0] - self.pitch_m[1]) > 0.02 * self.pitch_m[0]:
            raise ValueError(f"screen pixels are not square ({self.pitch_m[0]:.6f} x "
                             f"{self.pitch_m[1]:.6f} m): check monitor.size_m and the "
                             "resolution")
        square_m = self.square_px * self.pitch_m[0]
        dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_5X5_100)
        self.board = cv2.aruco.CharucoBoard(SQUARES, square_m, MARKER_FRACTION * square_m,
                                            dictionary)
        self._detector = cv2.aruco.CharucoDetector(self.board)

    def image(self) -> np.ndarray:
        """The screen image: white, with the board at :attr:`offset_px`, uint8 (h, w, 3) RGB."""
        w, h = self.size_px
        cols, rows = SQUARES
        screen = np.full((h, w), 255, np.uint8)
        board = self.board.generateImage((cols * self.square_px, rows * self.square_px),
                                         marginSize=0)
        u, v = self.offset_px
        screen[v:v + board.shape[0], u:u + board.shape[1]] = board
        return np.repeat(screen[:, :, None], 3, axis=2)

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Find the board's inner corners in a camera frame.

        Args:
            frame: uint8 (H, W, 3) RGB.

        Returns:
            ``(image_points float32 (N, 2) px, object_points float32 (N, 3) m)``; N = 0
            when the board is not seen.
        """
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        corners, ids, _, _ = self._detector.detectBoard(gray)
        if ids is None or len(ids) == 0:
            return np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32)
        obj = self.board.getChessboardCorners()[ids.ravel()]
        return corners.reshape(-1, 2).astype(np.float32), obj.astype(np.float32)

    def screen_from_board(self) -> np.ndarray:
        """The transform screen <- board, float64 (4, 4), m (see module docstring)."""
        w, h = self.size_px
        u, v = self.offset_px
        out = np.diag([1.0, -1.0, -1.0, 1.0])  # x same, y and z flipped
        out[:3, 3] = [(u - w / 2) * self.pitch_m[0], (h / 2 - v) * self.pitch_m[1], 0.0]
        return out
