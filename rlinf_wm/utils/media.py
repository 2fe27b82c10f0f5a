"""Frames to files: videos and PNGs written atomically, and real-vs-generated comparison layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rlinf_wm.utils.io import atomic_path

logger = logging.getLogger(__name__)

VIDEO_FORMATS = ("gif", "mp4")


def mp4_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_video(path: Path, frames: np.ndarray, fps: int, video_format: str = "gif") -> Path:
    """uint8 ``[T, H, W, 3]`` as ``path`` with the format's suffix; mp4 needs imageio-ffmpeg (gif without it)."""
    import imageio.v2 as imageio

    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}")
    if video_format == "mp4" and not mp4_available():
        logger.warning("imageio-ffmpeg is not installed: writing gif instead of mp4")
        video_format = "gif"
    path = Path(path).with_suffix(f".{video_format}")
    with atomic_path(path, suffix=f".{video_format}") as tmp:
        if video_format == "gif":
            imageio.mimsave(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
        else:
            imageio.mimsave(tmp, list(frames), format="FFMPEG", fps=fps)
    return path


def write_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, image, extension=".png")


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``[..., H, W, C]`` (64x64 frames are too small to look at)."""
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else frames


def side_by_side_frames(real: np.ndarray, generated: np.ndarray, cond: np.ndarray, factor: int = 3) -> np.ndarray:
    """uint8 ``[1 + T, rows * H', 2 * W' + gap, 3]``: per rollout row, real | generated; frame 0 is the conditioning."""
    gap = 4
    real = np.concatenate([cond[:, None], real], axis=1)
    generated = np.concatenate([cond[:, None], generated], axis=1)
    real, generated = upscale(real, factor), upscale(generated, factor)
    r, t, h, w, _ = real.shape
    canvas = np.full((t, r * (h + gap) - gap, 2 * w + gap, 3), 255, np.uint8)
    for i in range(r):
        y = i * (h + gap)
        canvas[:, y : y + h, :w] = real[i]
        canvas[:, y : y + h, w + gap :] = generated[i]
    return canvas


def image_grid(real: np.ndarray, generated: np.ndarray, cond: np.ndarray, every: int, factor: int = 2) -> np.ndarray:
    """uint8 image: per rollout a real row above a generated row, at the conditioning frame and every ``every``
    frames up to the horizon."""
    gap = 4
    index = list(range(every - 1, real.shape[1], every))
    if index[-1] != real.shape[1] - 1:
        index.append(real.shape[1] - 1)
    rows = []
    for i in range(len(real)):
        for source in (real, generated):
            tiles = [cond[i]] + [source[i, t] for t in index]
            tiles = [np.pad(upscale(tile, factor), ((0, 0), (0, 2), (0, 0)), constant_values=255) for tile in tiles]
            rows.append(np.concatenate(tiles, axis=1))
        rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)
