"""SIMULATED Sentinel-2 L2A scenes of a port, with the true vessel list.

Everything made here is synthetic and tagged so (`SOURCE=simulated`, `SIMULATED=true`, and
`simulated: true` on every truth feature). It exists for the tests and the offline demo:
a scene whose truth is known exactly, in the same scene format the real sources deliver.

The picture, built in the port's UTM zone at 10 m:
- a coastline fixed per port (the land does not move between scenes): land on the side away
  from the anchorages, a straight quay through every berth zone and piers reaching into the
  water, a concrete apron behind the quays, town near the port, forest and fields inland;
- per scene: vessels (bright hulls, some dark decks, white superstructure) alongside quay
  faces and at anchor, water texture and glint, clouds from a fractal field with their
  shadows thrown away from the sun, a Gaussian point-spread function and sensor noise;
- an SCL band from the same fields (6 water, 4 vegetation, 5 bare/urban and vessels,
  3 cloud shadow, 8/9 cloud, 10 thin cirrus).

Randomness: a scene is a pure function of (port, date, seed, cloud fraction, vessel specs).
A vessel the caller specifies without a position is placed from its id alone, so the same
vessel keeps its berth in consecutive scenes; feed a truth vessel back (`as_spec()`) to pin
it exactly.

The package, one module per stage (imports run down this list, never back up):
`constants` (grid, bands, surface classes, spectra, sensor), `noise` (seeds, fractal noise),
`layout` (the port's fixed geography), `timing` (revisit, overpass, sun), `truth` (vessel
specs, truth and its sidecar file), `fleet` (where vessels lie), `pixels` (vessels, surface,
clouds, SCL, sensor), `scene` (one scene and its file), `source` (`SimulatedSource`) and
`large` (a full-size tile for benchmarks). The functions and classes are re-exported here,
so `from imagery.simulate import ...` is the way in; the tuning constants (spectra, SCL
codes, sensor figures) stay in `constants`, where the stages read them.
"""

from imagery.simulate.fleet import FENDER_GAP_M, footprint, random_fleet
from imagery.simulate.large import write_large_scene
from imagery.simulate.layout import PortLayout, QuayFace, SimulationError, port_layout, scene_grid
from imagery.simulate.noise import fractal_noise
from imagery.simulate.pixels import render_vessel
from imagery.simulate.scene import scene_id_for, simulate_scene, simulate_scene_file
from imagery.simulate.source import CloudSchedule, FleetHook, SimulatedSource
from imagery.simulate.timing import acquisition_time, overpass_time, satellite_on, solar_position
from imagery.simulate.truth import (
    SimulationTruth,
    TruthVessel,
    VesselSpec,
    load_truth,
    truth_path_for,
    truth_to_geojson,
    write_truth,
)

__all__ = [
    "FENDER_GAP_M",
    "CloudSchedule", "FleetHook", "PortLayout", "QuayFace", "SimulatedSource", "SimulationError",
    "SimulationTruth", "TruthVessel", "VesselSpec",
    "acquisition_time", "footprint", "fractal_noise", "load_truth", "overpass_time",
    "port_layout", "random_fleet", "render_vessel", "satellite_on", "scene_grid", "scene_id_for",
    "simulate_scene", "simulate_scene_file", "solar_position", "truth_path_for",
    "truth_to_geojson", "write_large_scene", "write_truth",
]
