"""The paper's Fig. 3 + Fig. 4 for one image: cutting process | heat-map | refined box."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cutbg_env.env import draw_crops
from cutbg_env.geometry import Box, Crop
from cutbg_env.io import atomic_path
from cutbg_env.refine import heatmaps
from cutbg_env.world import CutWorld


def write_figure(
    world: CutWorld,
    index: int,
    trail: list[Crop],
    crop: Crop,
    refined: Box,
    layer: str,
    figdir: Path,
) -> Path:
    """Write ``<figdir>/<class>_<image id>.png``: the cuts (green), the agent's crop (blue) and
    the ground truth (red); the crop's heat-map of ``layer``; the refined box (yellow)."""
    data, cls = world.data, world.class_name
    img = data.load_image(index)
    gts = [b for b, _ in data.gt_boxes(index, cls)]
    left = draw_crops(img, trail, crop, gts)
    hm = heatmaps(world, index, np.asarray([crop]), layer)[0]
    hm = (255 * (hm - hm.min()) / max(float(np.ptp(hm)), 1e-12)).astype(np.uint8)
    hm = cv2.applyColorMap(
        cv2.resize(hm, img.shape[1::-1], interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_JET
    )[:, :, ::-1]
    right = draw_crops(img, [], crop, gts, final_box=refined)
    panel = np.concatenate([left, hm, right], axis=1)
    path = figdir / f"{cls}_{data.ids[index]}.png"
    with atomic_path(path, suffix=".png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    return path
