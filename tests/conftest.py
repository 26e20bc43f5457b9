"""Shared fixtures: where the shared data lives, and a tiny detector trained on simulated
scenes (once per test session) for tests of the stages after detection."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: the shared data is absent in this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def simulated_labelled(tmp_path_factory) -> Path:
    """Two SIMULATED labelled scenes (sen2ships layout) under one folder."""
    from imagery.ports import get_port
    from training.simulated import write_simulated_labelled

    root = tmp_path_factory.mktemp("simulated-labelled")
    for seed, (port, day) in enumerate([("chongjin", 5), ("vostochny", 6)]):
        write_simulated_labelled(get_port(port), datetime(2024, 3, day, tzinfo=UTC),
                                 root / port, seed=seed)
    return root


@pytest.fixture(scope="session")
def tiny_weights(simulated_labelled, tmp_path_factory) -> Path:
    """A deliberately tiny model (a few thousand parameters, 60 steps on simulated scenes):
    it finds some vessels at threshold 0.1, which is all the pipeline tests need from it."""
    import torch

    from training.chips import CropConfig, load_labelled
    from training.export import save_weights
    from training.train import Recipe, fit

    # One thread: two OpenMP threads on tiny tensors spin badly on a busy 2-core machine.
    torch.set_num_threads(1)
    recipe = Recipe(steps=60, mine_steps=0, batch=4, widths=(8, 8, 16, 16), warmup=5, lr=1e-2,
                    crop=CropConfig(size=64))
    model = fit(load_labelled([simulated_labelled]), recipe, progress=False)
    out = tmp_path_factory.mktemp("weights") / "tiny-test.pt"
    save_weights(model, out, {"name": "tiny-test", "threshold": 0.1,
                              "recipe": recipe.to_json()})
    return out
