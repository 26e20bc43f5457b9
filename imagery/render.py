"""Pictures for people: scene chips in true and false colour, and the per-port timeline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from imagery.scene import SceneInfo, read_reflectance

TRUE_COLOUR = ("B04", "B03", "B02")
FALSE_COLOUR = ("B08", "B04", "B03")  # NIR as red: vessels and vegetation glow, water is black
DISPLAY_MAX = 0.3  # reflectance shown as white; ports are dark, bright quays may clip


def chip_rgb(info: SceneInfo, col0: int, row0: int, size: int,
             bands: tuple[str, str, str] = TRUE_COLOUR) -> np.ndarray:
    """uint8 (size, size, 3) picture of a square window; outside the scene is black, a band
    the scene lacks is shown as its mean of the others (grey) rather than failing."""
    data = read_reflectance(info, bands, Window(col0, row0, size, size), fill=0.0)
    missing = np.isnan(data).all(axis=(1, 2))
    if missing.all():
        data = np.zeros_like(data)
    elif missing.any():
        data[missing] = np.nanmean(data[~missing], axis=0)
    scaled = np.clip(np.nan_to_num(data) / DISPLAY_MAX, 0, 1) ** (1 / 1.6)  # gamma lifts water
    return (scaled.transpose(1, 2, 0) * 255).astype(np.uint8)


def true_colour(info: SceneInfo, col0: int, row0: int, size: int) -> np.ndarray:
    return chip_rgb(info, col0, row0, size, TRUE_COLOUR)


def timeline_plot(rows: list[dict], out: str | os.PathLike, title: str) -> Path:
    """Per port, detected against AIS-reported berthed vessels per scene; `unknown` scenes
    (berths hidden by cloud) are marked, not drawn as zero. rows: port, time (datetime),
    detected (int | None), ais (int), alerts (int)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ports = sorted({r["port"] for r in rows})
    fig, axes = plt.subplots(len(ports) or 1, 1, figsize=(10, 3.2 * max(1, len(ports))),
                             squeeze=False, sharex=True)
    for ax, port in zip(axes[:, 0], ports, strict=False):
        mine = sorted((r for r in rows if r["port"] == port), key=lambda r: r["time"])
        seen = [r for r in mine if r["detected"] is not None]
        ax.plot([r["time"] for r in seen], [r["detected"] for r in seen], "o-", color="tab:red",
                label="detected at berths")
        ax.plot([r["time"] for r in mine], [r["ais"] for r in mine], "s--", color="tab:blue",
                label="AIS-reported at berths")
        alerts = [r for r in seen if r["alerts"]]
        ax.scatter([r["time"] for r in alerts], [r["detected"] for r in alerts], s=160,
                   facecolors="none", edgecolors="black", label="undeclared (unmatched)")
        for r in mine:
            if r["detected"] is None:
                ax.axvline(r["time"], color="grey", alpha=0.4, lw=6)
        ax.plot([], [], color="grey", alpha=0.4, lw=6, label="unknown (cloud)")
        ax.set_title(f"{port}")
        ax.set_ylabel("vessels")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


# --- marks on pictures of scenes -------------------------------------------------------------

SIMULATED_BAND_PX = 22  # height of the band added below a picture of a simulated scene
SIMULATED_COLOUR = (255, 196, 0)  # amber: nothing in a Sentinel-2 chip is this colour
SIMULATED_TEXT = "SIMULATED - not an observation"


def mark_simulated(image, simulated: bool):
    """The picture with a SIMULATED band below it when the scene is simulated (below, not
    over: the picture's pixel grid, which clicks map to, stays where it was)."""
    from PIL import Image, ImageDraw, ImageFont

    if not simulated:
        return image
    out = Image.new("RGB", (image.width, image.height + SIMULATED_BAND_PX), SIMULATED_COLOUR)
    out.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=14)
    draw.text((6, image.height + 3), SIMULATED_TEXT, fill=(0, 0, 0), font=font)
    return out


def png_with_provenance(image, scene_id: str, simulated: bool) -> bytes:
    """PNG bytes carrying text chunks `berthwatch:scene_id` and `berthwatch:simulated`
    (`true`/`false`), so a copied file still says where it came from."""
    import io

    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("berthwatch:scene_id", scene_id)
    meta.add_text("berthwatch:simulated", "true" if simulated else "false")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue()
