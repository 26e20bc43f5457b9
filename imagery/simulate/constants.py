"""The simulator's fixed numbers: the 10 m grid, band order and scale, the surface classes
with their SCL codes and L2A reflectance, and the sensor's blur and noise. Shared by the port
scenes (layout, pixels) and the large benchmark tile, so they live apart from both."""

from __future__ import annotations

import numpy as np

from imagery.scene import SCENE_BANDS, SCL_BAND

PIXEL_M = 10.0
BAND_NAMES: tuple[str, ...] = SCENE_BANDS + (SCL_BAND,)
SCALE = 10000.0

# Surface classes of the layout raster.
WATER, FOREST, URBAN, BARE, CONCRETE = 0, 1, 2, 3, 4
SCL_OF_CLASS = np.array([6, 4, 5, 5, 5], dtype=np.uint16)
SCL_SHADOW, SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_VESSEL = 3, 8, 9, 10, 5

# L2A surface reflectance per class, bands B02 B03 B04 B08 B11 (typical values: clear sea
# is dark and darkest in NIR/SWIR; vegetation has the red edge; concrete is flat and bright).
CLASS_SPECTRA = np.array(
    [
        [0.050, 0.040, 0.025, 0.010, 0.005],  # open sea
        [0.030, 0.055, 0.035, 0.300, 0.150],  # forest (summer; see _season)
        [0.090, 0.100, 0.110, 0.170, 0.200],  # town
        [0.100, 0.130, 0.170, 0.230, 0.300],  # fields, bare soil
        [0.190, 0.205, 0.215, 0.235, 0.260],  # concrete quays and piers
    ],
    dtype=np.float32,
)
HARBOUR_WATER = np.array([0.055, 0.052, 0.036, 0.016, 0.007], dtype=np.float32)  # turbid
# Relative texture strength per class: water is smooth, towns are patchy.
CLASS_TEXTURE = np.array([0.04, 0.15, 0.28, 0.15, 0.08], dtype=np.float32)
# Gaussian PSF sigma in 10 m pixels: the 10 m bands' MTF, and B11 resampled from 20 m.
PSF_SIGMA = (0.55, 0.55, 0.55, 0.55, 1.05)
NOISE_SIGMA = np.array([0.0025, 0.002, 0.002, 0.002, 0.0015], dtype=np.float32)
