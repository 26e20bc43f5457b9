"""Write trained weights: `<name>.pt` (a plain state dict, loadable with weights_only=True),
`<name>.json` (the registry metadata with sha256 and size) and, for the default model, the
sha256/size lines of the model card."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import torch

from imagery.detector import BerthNet, WeightsEntry, file_sha256


def save_weights(
    model: BerthNet, out: str | os.PathLike, metadata: dict | None = None
) -> WeightsEntry:
    """Save `model` to `out` (a path stem or `.pt` path) with its metadata json beside it."""
    out = Path(out)
    pt = out if out.suffix == ".pt" else out.with_name(out.name + ".pt")
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = pt.with_name(f".{pt.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, pt)
    meta = dict(metadata or {})
    meta.update(
        name=meta.get("name") or pt.stem,
        file=pt.name,
        sha256=file_sha256(pt),
        size=pt.stat().st_size,
        widths=list(model.widths),
        params=sum(p.numel() for p in model.parameters()),
    )
    entry = WeightsEntry.from_json(meta, str(pt.parent))
    write_metadata(entry, pt.with_suffix(".json"), extra=meta)
    return entry


def write_metadata(entry: WeightsEntry, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Metadata json; `extra` keys the registry does not know (e.g. fold info) are kept."""
    data = dict(extra or {})
    data.update(entry.to_json())
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_metadata(path: str | os.PathLike, **fields) -> dict:
    """Set fields (threshold, metrics) in an existing metadata json; the sha256 is untouched
    because it covers the .pt file only."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return data


def update_card(card: str | os.PathLike, entry: WeightsEntry) -> None:
    """Rewrite the `sha256:` and `size:` lines of a model card to match `entry`."""
    path = Path(card)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(- sha256: ).*$", rf"\g<1>`{entry.sha256}`", text)
    text = re.sub(r"(?m)^(- size: ).*$", rf"\g<1>{entry.size} bytes ({entry.params} parameters)",
                  text)
    path.write_text(text, encoding="utf-8")
