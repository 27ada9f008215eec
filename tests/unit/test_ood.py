"""The out-of-distribution abstain score: blank and noise frames abstain, in-distribution images about 0.5%."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.ood import QUANTILE, STATISTICS, OODCalibration, statistics_of
from calibration.state import CalibrationState
from core.errors import WorkbenchError
from datamodules.synthetic.content import SyntheticContent
from datamodules.synthetic.faces import SyntheticFaces
from export.pipeline import build_wrapper
from models.resize import Framing

SIZE = 64
FRAMING = Framing(SIZE, SIZE)
FRAME_SIZES = [(64, 64), (97, 131), (480, 640), (720, 1280)]


def _renders(generator) -> np.ndarray:
    manifest = generator.manifest()
    return np.stack([generator.render(manifest.iloc[i], i) for i in range(len(manifest))])


@pytest.fixture(scope="module", params=["faces", "content"])
def split(request):
    """(calib, held-out) renders of one demo generator: 450 calib images and 150 others."""
    kind = SyntheticFaces if request.param == "faces" else SyntheticContent
    images = _renders(kind(seed=3, num_subjects=300, images_per_subject=2))
    return images[:450], images[450:]


def _odd_frames(height: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([height, width])
    return {
        "black": np.zeros((1, height, width, 3), np.uint8),
        "white": np.full((1, height, width, 3), 255, np.uint8),
        "grey": np.full((1, height, width, 3), 128, np.uint8),
        "uniform noise": rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8),
    }


def test_blank_and_noise_frames_abstain_at_every_frame_size(split):
    calib, _ = split
    ood = OODCalibration.fit(calib, FRAMING)
    for height, width in FRAME_SIZES:
        for name, frames in _odd_frames(height, width).items():
            scores = ood.scores(frames, FRAMING)
            assert np.all(scores > ood.threshold), f"{name} {height}x{width} scored {scores} <= {ood.threshold}"


def test_calib_abstention_is_the_quantile_and_held_out_images_stay_near_it(split):
    calib, held_out = split
    ood = OODCalibration.fit(calib, FRAMING)
    assert ood.quantile == QUANTILE and ood.calib_size == len(calib)
    assert 1 - QUANTILE - 1 / len(calib) - 1e-12 <= ood.calib_abstention_rate <= 1 - QUANTILE  # one image's grain
    assert ood.calib_abstention_rate == np.mean(ood.scores(calib, FRAMING) > np.float32(ood.threshold))
    assert ood.abstention_rate(ood.scores(held_out, FRAMING)) <= 0.03  # 150 new renders: at most 4 abstain
    assert float(np.float32(ood.threshold)) == ood.threshold


def test_score_equals_an_independent_numpy_mahalanobis(split):
    """A second implementation of the definition the contract states, in float64."""
    calib, held_out = split
    ood = OODCalibration.fit(calib, FRAMING)
    x = held_out[:20].astype(np.float64).transpose(0, 3, 1, 2)  # already at network size: no resize
    mean = x.mean(axis=(2, 3))
    std = x.std(axis=(2, 3))
    gradient = np.abs(np.diff(x, axis=2)).mean(axis=(2, 3)) + np.abs(np.diff(x, axis=3)).mean(axis=(2, 3))
    centred = x - mean[..., None, None]
    pairs = [(0, 1), (1, 2), (0, 2)]
    corr = np.stack(
        [(centred[:, a] * centred[:, b]).mean(axis=(1, 2)) / (std[:, a] * std[:, b] + 1) for a, b in pairs], 1
    )
    stats = np.concatenate([mean / 255, np.log1p(std), np.log1p(gradient), np.log1p(gradient) - np.log1p(std), corr], 1)
    assert stats.shape[1] == len(STATISTICS)
    np.testing.assert_allclose(statistics_of(held_out[:20], FRAMING), stats, rtol=1e-4, atol=1e-5)
    expected = np.mean((stats - np.array(ood.mean)) ** 2 / np.array(ood.var), axis=1)
    np.testing.assert_allclose(ood.scores(held_out[:20], FRAMING), expected, rtol=1e-4)


def test_the_fit_survives_the_calibration_state_and_an_old_state_is_refused_at_export(split):
    calib, held_out = split
    ood = OODCalibration.fit(calib, FRAMING, held_out)
    state = CalibrationState("content", None, "x.ckpt", 0.95, ood=ood)
    assert CalibrationState.from_json(state.to_json()).ood == ood
    assert ood.test_abstention_rate == ood.abstention_rate(ood.scores(held_out, FRAMING))
    with pytest.raises(WorkbenchError, match=r"no out-of-distribution fit.*Re-run `childsafe calibrate`"):
        build_wrapper(None, CalibrationState("content", None, "x.ckpt", 0.95), 0.9)
