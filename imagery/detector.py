"""The vessel detector: a small centre-heatmap CNN, its weights registry and scene inference.

The model (`BerthNet`) reads the five scene bands as reflectance, does its own normalisation
(log reflectance with fixed constants, NDWI, band-presence flags) so that the same weights
work on any scene, and predicts at full resolution:
- a centre heatmap (one peak per vessel, CenterNet style; peaks by max-pool NMS, maxima
  joined by a ridge merged, then greedy hull suppression),
- a vessel mask (auxiliary; also used to keep vessels out of the land mask),
- log length, log width and the axis angle (as sin 2a, cos 2a) at each centre.
Most of its work happens at 1/2, 1/4 and 1/8 resolution, which keeps it fast on a CPU.

It runs on pixels between 8 and 10 ground metres (`PIXEL_RANGE_M`); scenes outside that range
(EPSG:3857 at high latitude: 5.8 m at Gdynia) are resampled chip by chip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagery.chip_feed import in_order, intra_op_threads, read_ahead, read_chips, staged_batches

# Post-processing and output live in their own modules; their public names stay importable
# from here (tests, training and the CLI import them from imagery.detector).
from imagery.detection_output import (  # noqa: F401
    CSV_FIELDS,
    _to_wgs84,
    _write_json,
    check_reflectance_scale,
    feature_collection,
    write_csv,
    zone_visibility,
)
from imagery.postprocess import (  # noqa: F401
    BERTHED_DISTANCE_M,
    MIN_LAND_AREA_M2,
    RIDGE_MIN_SCORE,
    RIDGE_RATIO,
    RIDGE_REACH_PX,
    Detection,
    Peak,
    _in_hull,
    _merge_ridge_peaks,
    _on_ridge,
    batch_detections,
    chip_detections,
    decode_peaks,
    heading_from_angle,
    land_distance_mask,
    suppress,
    water_mask,
)
from imagery.scene import (
    SCENE_BANDS,
    SceneError,
    SceneInfo,
    open_scene,
)
from imagery.tiling import chip_windows

PIXEL_RANGE_M = (8.0, 10.0)  # ground pixel sizes the model is trained for
LOG_EPS = 0.01  # log(reflectance + eps): haze and gain become offsets, dark water stays finite
LOG_CENTER, LOG_SCALE = -2.5, 1.0
CONTRAST_SCALE = 0.05  # a vessel on water stands 0.05-0.3 above its surroundings
DEFAULT_NAME = "berthnet-s2"
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "BERTHWATCH_PRECISION"
PRECISION_HELP = ("fp32, bf16 or auto (default: $BERTHWATCH_PRECISION, else auto, which is bf16 "
                  "on a CPU that computes it natively, twice as fast there, else fp32)")


class DetectorError(ValueError):
    """Bad detector input: unusable scene, unknown weights, tampered weights file."""


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, dilation=dilation),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class _Up(nn.Module):
    """FPN-style merge: upsample the coarse map, project it, add the skip, refine with a 3x3."""

    def __init__(self, coarse: int, fine: int):
        super().__init__()
        self.project = nn.Conv2d(coarse, fine, 1, bias=False)
        self.refine = _conv(fine, fine)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.project(coarse), size=fine.shape[-2:], mode="bilinear")
        return self.refine(up + fine)


class BerthNet(nn.Module):
    """Centre heatmap + mask + size/angle CNN. Input: (B, 5, H, W) reflectance (H, W multiples
    of 8) and (B, 5) band presence; missing bands may hold anything (they are zeroed)."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96), bands: int = 5):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.widths, self.bands = tuple(widths), bands
        cin = 3 * bands + 1  # log bands, local contrast, presence flags, NDWI
        self.stem = nn.Sequential(_conv(cin, w1), _conv(w1, w1))
        self.down2 = nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2))
        self.down4 = nn.Sequential(_conv(w2, w3, stride=2), _Residual(w3))
        # Dilated blocks at 1/8 see ~200 px: enough to tell a quay from a hull.
        self.down8 = nn.Sequential(_conv(w3, w4, stride=2), _Residual(w4, 2), _Residual(w4, 4))
        self.up4, self.up2, self.up1 = _Up(w4, w3), _Up(w3, w2), _Up(w2, w1)
        self.head = _conv(w1, w1)
        self.out = nn.Conv2d(w1, 1 + 1 + 4, 1)  # heat, mask, log length, log width, sin, cos
        nn.init.constant_(self.out.bias[0], -4.0)  # CenterNet prior: heat starts near 0.02

    @staticmethod
    def features(
        x: torch.Tensor,
        present: torch.Tensor,
        dtype: torch.dtype | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """Scene-independent inputs: log reflectance, local contrast (reflectance minus its
        ~40 px neighbourhood mean: additive haze and glint cancel), presence flags, NDWI.
        Computed in x's dtype and written straight into one tensor of `dtype` (default x's)
        and `memory_format`: a concatenation and a conversion to channels_last bf16 would
        cost a third more (26 against 19.5 ms a 512 px chip, one thread)."""
        b, c, h, w = x.shape
        p = present.to(x.dtype)[:, :, None, None]
        x = torch.nan_to_num(x, nan=0.0).clamp(min=0.0, max=2.0) * p
        # The pooling in the contiguous layout: the same sums in the same order whatever the
        # layout of x, so that every layout gives the same inputs to the bit.
        coarse = F.avg_pool2d(F.avg_pool2d(x.contiguous(), 4), 9, stride=1, padding=4,
                              count_include_pad=False)
        local = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        out = torch.empty((b, 3 * c + 1, h, w), dtype=dtype or x.dtype, device=x.device,
                          memory_format=memory_format)
        out[:, :c] = (torch.log(x + LOG_EPS) - LOG_CENTER) / LOG_SCALE * p
        out[:, c : 2 * c] = ((x - local) / CONTRAST_SCALE).clamp(-8.0, 8.0)
        out[:, 2 * c : 3 * c] = p
        green, nir = x[:, 1:2], x[:, 3:4]
        out[:, 3 * c :] = (green - nir) / (green + nir + 1e-3) * p[:, 1:2] * p[:, 3:4]
        return out

    def layout(self) -> torch.memory_format:
        """The memory format of the convolutions' weights."""
        weight = next(self.stem.parameters())
        return (torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous() else torch.contiguous_format)

    def encode(self, x: torch.Tensor, present: torch.Tensor) -> list[torch.Tensor]:
        """The maps at full, 1/2, 1/4 and 1/8 resolution."""
        # The inputs go to the convolutions in the dtype (bf16 for `precision="bf16"`) and
        # the layout (channels_last for inference and training) of their weights, whatever
        # the layout of x: a contiguous x makes the inputs fastest (17 against 22 ms a chip).
        f1 = self.stem(self.features(x, present, next(self.stem.parameters()).dtype,
                                     self.layout()))
        f2 = self.down2(f1)
        f4 = self.down4(f2)
        return [f1, f2, f4, self.down8(f4)]

    def head_features(self, f1: torch.Tensor, f2: torch.Tensor, f4: torch.Tensor,
                      f8: torch.Tensor) -> torch.Tensor:
        """The full-resolution map the output layer reads (w1 channels)."""
        return self.head(self.up1(self.up2(self.up4(f8, f4), f2), f1))

    def decode(self, f1: torch.Tensor, f2: torch.Tensor, f4: torch.Tensor,
               f8: torch.Tensor) -> torch.Tensor:
        return self.out(self.head_features(f1, f2, f4, f8))

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x, present))


# --------------------------------------------------------------------------------------------
# Weights registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsEntry:
    """Metadata of one weights file (torchvision style); `weights/<name>.json` holds it."""

    name: str
    file: str
    sha256: str
    size: int
    bands: tuple[str, ...] = SCENE_BANDS
    input_scale: str = "reflectance = DN / REFLECTANCE_SCALE (L2A: 10000)"
    pixel_range_m: tuple[float, float] = PIXEL_RANGE_M
    widths: tuple[int, ...] = (16, 32, 64, 96)
    threshold: float = 0.5
    nms_kernel: int = 3  # peak = max of its kernel x kernel neighbourhood
    box_fraction: float = 0.8  # drop a weaker peak when either centre is in the other's hull x this
    # Drop vessels estimated shorter than this: the training labels (sen2ships) leave most
    # boats under ~70 m out, so the model's short detections are mostly what they call noise.
    min_length_m: float = 0.0
    metrics: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    params: int = 0
    directory: str | None = None  # where the file is; None: the packaged weights/

    @property
    def path(self) -> Path:
        base = Path(self.directory) if self.directory else packaged_weights_dir()
        return base / self.file

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("directory")
        return data

    @classmethod
    def from_json(cls, data: dict, directory: str | None = None) -> WeightsEntry:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("bands", "pixel_range_m", "widths"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known, directory=directory)


def packaged_weights_dir() -> Path:
    """The installed `weights` package (works from an editable install and from a wheel)."""
    return Path(str(resources.files("weights")))


def registry(directory: str | os.PathLike | None = None) -> dict[str, WeightsEntry]:
    """Every weights entry (`*.json` beside its `.pt`) in `directory` or the packaged one."""
    folder = Path(directory) if directory else packaged_weights_dir()
    entries = {}
    for meta in sorted(folder.glob("*.json")):
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "sha256" in data and "file" in data and "name" in data:
            try:
                entries[data["name"]] = WeightsEntry.from_json(
                    data, str(folder) if directory else None)
            except TypeError:
                continue  # not a weights entry: load_state would name what is wrong
    return entries


def __getattr__(name: str) -> WeightsEntry:
    # torchvision style `detector.DEFAULT`, resolved lazily so importing needs no weights.
    if name == "DEFAULT":
        return get_weights(DEFAULT_NAME)
    raise AttributeError(name)


def get_weights(name_or_path: str | os.PathLike | None = None) -> WeightsEntry:
    """A registry name (default: DEFAULT_NAME), a `.pt` file or its `.json` metadata."""
    if name_or_path is None:
        name_or_path = DEFAULT_NAME
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".pt", ".json") or os.sep in text or path.exists():
        if not path.exists():
            raise DetectorError(f"{path}: weights file not found")
        meta = path.with_suffix(".json")
        if not meta.exists():
            raise DetectorError(f"{meta}: no metadata beside the weights (expected {meta.name})")
        return _read_metadata(meta)
    entries = registry()
    if text not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise DetectorError(f"unknown weights {text!r}; known: {known}")
    return entries[text]


def _read_metadata(meta: Path) -> WeightsEntry:
    """A weights metadata file, or DetectorError naming it and what is wrong."""
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectorError(f"{meta}: cannot read weights metadata ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DetectorError(f"{meta}: invalid weights metadata ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DetectorError(f"{meta}: weights metadata must be a JSON object")
    missing = [k for k in ("name", "file", "sha256", "size") if k not in data]
    if missing:
        raise DetectorError(f"{meta}: weights metadata lacks {', '.join(missing)}")
    try:
        entry = WeightsEntry.from_json(data, str(meta.parent))
    except (TypeError, ValueError) as exc:
        raise DetectorError(f"{meta}: invalid weights metadata ({exc})") from None
    if len(entry.widths) != 4 or not all(type(w) is int and w > 0 for w in entry.widths):
        raise DetectorError(f"{meta}: widths {list(entry.widths)} must be four positive ints")
    _check_file_name(entry, meta)
    return entry


def _check_file_name(entry: WeightsEntry, meta: Path | str) -> None:
    """The metadata's `file` must name a file in its own folder: a path out of it (`../x`,
    `/etc/x`) would load (and hash) whatever file it points at."""
    name = entry.file
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name \
            or "/" in name or "\\" in name:
        raise DetectorError(
            f"{meta}: weights file {name!r} must be a file name in the metadata's folder"
        )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state(
    name_or_path: str | os.PathLike | None = None, device: str = "cpu"
) -> tuple[BerthNet, WeightsEntry]:
    """The model of a weights entry as saved (BatchNorm kept, trainable), and the entry; the
    sha256 is checked BEFORE unpickling."""
    entry = get_weights(name_or_path)
    _check_file_name(entry, f"weights {entry.name}")
    path = entry.path
    if not path.is_file():
        raise DetectorError(f"{path}: weights file not found")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise DetectorError(
            f"{path}: sha256 mismatch (expected {entry.sha256}, got {actual}); the weights were "
            "altered or corrupted, refusing to load them"
        )
    try:
        # weights_only: tensors and plain containers only; a pickle with code is refused.
        # Its warnings (e.g. an unusual pickle protocol) would add lines to the one error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated, empty, not a torch file, or a refused pickle
        raise DetectorError(f"{path}: not loadable weights ({_first_line(exc)})") from None
    model = BerthNet(tuple(entry.widths), len(entry.bands))
    if not isinstance(state, dict):
        raise DetectorError(f"{path}: holds a {type(state).__name__}, not a model state dict")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DetectorError(
            f"{path}: weights do not fit BerthNet widths {list(entry.widths)} "
            f"({_first_line(exc)})"
        ) from None
    return model, entry


def _first_line(exc: BaseException) -> str:
    """The informative first line of an error (load_state_dict's first is a bare header)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return (lines[0] if lines else type(exc).__name__)[:200]


def check_device_name(name: str) -> str:
    """`name` if it spells a device `resolve_device` knows (auto, cpu, cuda, cuda:N), without
    asking torch what this machine has: for a device that other machines resolve."""
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise DetectorError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_device(name: str) -> str:
    """`auto` is cuda when torch sees a GPU, else cpu; asking for cuda without one is an
    error rather than a silent fall back to the CPU."""
    check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DetectorError(f"device {name!r}: torch sees no CUDA GPU on this machine "
                            "(use --device cpu, or auto)")
    return name


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX, or a CUDA
    GPU that supports it. Elsewhere oneDNN would emulate bf16, slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def check_precision_name(name: str | None, origin: str = "") -> str | None:
    """`name` if it is None (the default) or spells one of PRECISIONS."""
    if name is not None and name not in PRECISIONS:
        raise DetectorError(f"precision {name!r}{origin} is not one of {', '.join(PRECISIONS)}")
    return name


def resolve_precision(name: str | None, device: str) -> str:
    """fp32 or bf16: the dtype of the model's convolutions on `device`. `None` takes
    $BERTHWATCH_PRECISION, else auto. auto is bf16 on a CPU that computes it natively (twice
    the network's throughput there, with the same leave-ports-out detections to within one
    false alarm a port: docs/experiments.md) and fp32 elsewhere (on a GPU the network is not
    what limits detect()). bf16 where it is not native is refused: it would be slower."""
    origin = ""
    if name is None:
        name, origin = os.environ.get(PRECISION_ENV) or "auto", f" (from ${PRECISION_ENV})"
    check_precision_name(name, origin)
    if name == "auto":
        return "bf16" if torch.device(device).type == "cpu" and native_bf16(device) else "fp32"
    if name == "bf16" and not native_bf16(device):
        raise DetectorError(f"precision bf16{origin}: device {device} does not compute "
                            "bfloat16 natively (a CPU needs AVX512-BF16 or AMX); use fp32")
    return name


def load_model(
    name_or_path: str | os.PathLike | None = None, device: str = "cpu",
    precision: str | None = None,
) -> tuple[BerthNet, WeightsEntry]:
    """Load weights by registry name or path for inference (`load_state`, then fused), with
    convolutions in `precision` (`resolve_precision`; the model's `precision` says which)."""
    model, entry = load_state(name_or_path, device)
    chosen = resolve_precision(precision, device)
    # channels_last: oneDNN's convolutions run ~1.7x faster on a CPU in this layout (same
    # arithmetic; measured on 4 x 512^2 chips, 1.18 s -> 0.68 s on 2 threads).
    model = fuse_batchnorm(model.eval()).to(device, memory_format=torch.channels_last)
    if chosen == "bf16":
        model = model.to(torch.bfloat16)
    model.precision = chosen
    return model, entry


def fuse_batchnorm(model: BerthNet) -> BerthNet:
    """Fold each eval-mode BatchNorm into the convolution before it (same outputs to ~1e-6,
    10-20 % faster on a CPU). For inference only: the result cannot be trained."""
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
    return model


# --------------------------------------------------------------------------------------------
# Scene inference
# --------------------------------------------------------------------------------------------


def model_pixel_size(native_m: float, pixel_range: tuple[float, float] = PIXEL_RANGE_M) -> float:
    """The model-grid pixel size for a scene: native when in range, else the nearest bound."""
    return float(min(max(native_m, pixel_range[0]), pixel_range[1]))


def _chip_plan(info: SceneInfo, chip: int, overlap: int, pixel_range) -> tuple[int, int, float]:
    """Native chip size and overlap for a model chip of `chip` px, and the scale (native px
    per model px). Within the model's range the scene is used as it is (scale 1)."""
    native = info.pixel_size_m
    scale = model_pixel_size(native, pixel_range) / native
    if abs(scale - 1.0) < 0.02:
        return chip, overlap, 1.0
    size = round(chip * scale)
    return size, math.ceil(overlap * scale), size / chip


def _forward(model: BerthNet, x: torch.Tensor, present: torch.Tensor, tta: bool) -> torch.Tensor:
    """The model's output; with `tta`, the heat and mask probabilities are the mean over the
    chip's eight flips and quarter turns (the model trained on every orientation, so each view
    is a fair second opinion), while size and angle stay those of the plain view."""
    out = model(x, present).float()  # the sum of eight views below needs fp32
    if not tta:
        return out
    probs = torch.sigmoid(out[:, 0:2])
    for turns in range(4):
        for flip in (False, True):
            if turns == 0 and not flip:
                continue  # the plain view, already in
            view = torch.rot90(x, turns, (2, 3))
            view = torch.flip(view, (3,)) if flip else view
            seen = model(view.contiguous(), present)[:, 0:2].float()
            seen = torch.flip(seen, (3,)) if flip else seen
            probs += torch.sigmoid(torch.rot90(seen, -turns, (2, 3)))
    out[:, 0:2] = torch.logit((probs / 8).clamp(1e-6, 1 - 1e-6))
    return out


@torch.inference_mode()
def _run_batch(
    model: BerthNet, arrays: list[np.ndarray], present: torch.Tensor, size: int, tta: bool
) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays))
    x = torch.nan_to_num(x, nan=0.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    device = model_device(model)
    x = x.to(device).contiguous()
    out = _forward(model, x, present.expand(x.shape[0], -1).to(device), tta)
    return out.cpu().contiguous()  # _forward's output is float32 in every precision


GPU_BATCH = 8  # chips per batch on a GPU: several chips in flight keep it busy
# At most this many chips at once on a CPU, so that memory does not grow with the cores (a
# 2-core detect peaked at 0.77 GB one chip at a time in fp32, 1.03 GB with two chips in bf16
# and the 128 MB read cache); more threads go to each chip.
CPU_WORKERS = 8
GPU_READERS = 4  # threads reading chips for a GPU (at most the machine's CPUs)


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _infer(
    model: BerthNet, raw: torch.Tensor, present: torch.Tensor, size: int, tta: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output (B, 6, size, size) and the chips' reflectance, both on its device."""
    raw = raw.to(model_device(model), non_blocking=True)
    x = torch.nan_to_num(raw, nan=0.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.contiguous()  # BerthNet.features is fastest from this layout
    # Contiguous: post-processing reads the output a channel at a time, and a channel sliced
    # from channels_last is a strided view (its peak test took 18 against 8 ms a chip).
    out = _forward(model, x, present.expand(x.shape[0], -1), tta)
    return out.contiguous(), raw


def detect(
    info: SceneInfo,
    model: BerthNet,
    threshold: float,
    chip_size: int = 512,
    overlap: int | None = None,
    batch_size: int | None = None,
    pixel_range: tuple[float, float] = PIXEL_RANGE_M,
    progress: bool = False,
    box_fraction: float = 0.0,
    kernel: int = 3,
    min_length_m: float = 0.0,
    tta: bool = False,
    reference: bool = False,
    readers: int | None = None,
) -> list[Detection]:
    """Run the model chip by chip over a scene, on the model's device; memory is bounded by
    a few batches of chips. `overlap` defaults to chip_size / 8 (64 px: 32 px of context each
    side of a seam). `batch_size` defaults to 1 chip on a CPU, where batches of one are the
    fastest (1.56 against 1.34 MP/s for batches of four 512 px chips: one chip's activations
    stay in cache), and GPU_BATCH on a GPU, which needs many chips in flight to be busy;
    `readers` (threads reading chips) defaults to 1 on a CPU, GPU_READERS on a GPU. On a
    CPU each of torch's threads (torch.set_num_threads), up to CPU_WORKERS, works a batch of
    its own, with one intra-op thread each (more where threads exceed CPU_WORKERS), in
    order. Peaks, water and land masks run batched on the model's device (postprocess.
    batch_detections) while a thread reads the next chips; `reference` runs the numpy/scipy
    reference (postprocess.chip_detections) on the host instead, one batch at a time, which
    tests compare with.
    `tta` averages eight orientations of each chip (`_forward`): eight model passes."""
    if chip_size % 8 or chip_size < 32:
        raise DetectorError(f"chip_size {chip_size} must be a multiple of 8, at least 32")
    if not (math.isfinite(min_length_m) and min_length_m >= 0):
        raise DetectorError(f"min_length_m {min_length_m} must be a length in metres >= 0")
    overlap = chip_size // 8 if overlap is None else overlap
    device = model_device(model)
    batch_size = batch_size or (1 if device.type == "cpu" else GPU_BATCH)
    readers = readers or (1 if device.type == "cpu" else min(GPU_READERS, os.cpu_count() or 1))
    native_chip, native_overlap, scale = _chip_plan(info, chip_size, overlap, pixel_range)
    present = torch.tensor([[b in info.bands for b in SCENE_BANDS]])
    chips = read_chips(info, native_chip, native_overlap, readers)
    total = len(chip_windows(info.width, info.height, native_chip, native_overlap))
    bar = _progress(total, f"detect {info.scene_id}", progress)
    found: list[Detection] = []
    staged = read_ahead(staged_batches(chips, batch_size, device.type == "cuda"))

    @torch.inference_mode()
    def work(batch: list, raw: torch.Tensor, scl: torch.Tensor | None) -> list[Detection]:
        if reference:
            out = _run_batch(model, [c.array for c in batch], present, chip_size, tta)
            return [d for chip, o, peaks in zip(batch, out, decode_peaks(out, threshold, kernel),
                                                strict=True)
                    for d in chip_detections(o, peaks, chip, info, scale)]
        out, raw = _infer(model, raw, present.to(device), chip_size, tta)
        scl = None if scl is None else scl.to(device, non_blocking=True)
        return batch_detections(out, raw, scl, batch, info.pixel_size_m, scale, threshold,
                                kernel)

    # On a CPU each of torch's threads takes a chip of its own (one intra-op thread each): the
    # model's many small operations then wait on no other thread, and one chip's decoding
    # overlaps the next one's network (2.54 against 2.03 MP/s on two cores).
    threads = torch.get_num_threads()
    workers = min(threads, CPU_WORKERS) if device.type == "cpu" and not reference else 1
    # closing: an error here stops the reader thread now, not when the traceback is freed.
    with contextlib.closing(staged), intra_op_threads(threads // workers if workers > 1
                                                       else None):
        for batch, detections in in_order(work, staged, workers):
            found.extend(detections)
            bar.update(len(batch))
    bar.close()
    # Cores partition the scene, so seam duplicates can only come from a peak that moved by a
    # pixel between two chips' views of a seam; 1.5 model px is well below vessel spacing.
    # Suppression stays on the host: it sees the few detections of the whole scene.
    found = suppress(found, info.pixel_size_m, 1.5 * scale)
    # The hull pass runs on its own so that evaluation can replay it on stored candidates.
    if box_fraction:
        found = suppress(found, info.pixel_size_m, 0.0, box_fraction)
    # After the hull pass: a short fragment of a long hull still helps suppress its neighbours.
    return [d for d in found if d.length_m >= min_length_m] if min_length_m else found


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chip", disable=not enabled, leave=False)




def decode_options(entry: WeightsEntry) -> dict:
    """The detect() keyword arguments a weights entry fixes."""
    return {"pixel_range": entry.pixel_range_m, "box_fraction": entry.box_fraction,
            "kernel": entry.nms_kernel, "min_length_m": entry.min_length_m}


def _resolve_port(port):
    if port is None or not isinstance(port, str):
        return port
    from imagery.ports import get_port

    return get_port(port)


def detect_scene(
    scene_path: str | os.PathLike,
    out_geojson: str | os.PathLike | None = None,
    port=None,
    csv_path: str | os.PathLike | None = None,
    threshold: float | None = None,
    weights: str | os.PathLike | None = None,
    threads: int = 2,
    chip_size: int = 512,
    batch_size: int | None = None,
    progress: bool = True,
    min_length_m: float | None = None,
    tta: bool = False,
    device: str = "cpu",
    loaded: tuple[nn.Module, WeightsEntry] | None = None,
    precision: str | None = None,
) -> dict:
    """Detect vessels in a scene and write GeoJSON (and CSV). `port` is a Port, a port name or
    None; `threshold` and `min_length_m` default to the weights'; `tta` averages eight
    orientations of each chip (~7x slower); `loaded` is a (model, entry) from `load_model`,
    so that many scenes share one load. Returns the FeatureCollection (its `properties` are
    the summary)."""
    torch.set_num_threads(threads)
    model, entry = loaded or load_model(weights, device, precision)
    info = open_scene(scene_path, require_bands=None)
    missing = [b for b in entry.bands if b not in info.bands]
    if missing:
        raise SceneError(
            info.path, f"missing bands {' '.join(missing)} needed by model {entry.name} "
            f"(has {' '.join(info.bands)})"
        )
    check_reflectance_scale(info)
    if threshold is None:
        threshold = entry.threshold
    if not 0.0 < threshold < 1.0:
        raise DetectorError(f"threshold {threshold} must be between 0 and 1")
    options = decode_options(entry)
    if min_length_m is not None:
        options["min_length_m"] = min_length_m
    port = _resolve_port(port)
    found = detect(info, model, threshold, chip_size=chip_size, batch_size=batch_size,
                   progress=progress, tta=tta, **options)
    _to_wgs84(info, found)
    if port is not None:
        for d in found:
            d.zone = port.zone_at(d.lon, d.lat)
    collection = feature_collection(info, found, entry, threshold, port,
                                    options["min_length_m"], tta,
                                    getattr(model, "precision", "fp32"))
    if out_geojson is not None:
        _write_json(collection, out_geojson)
    if csv_path is not None:
        write_csv(collection, csv_path)
    return collection
