import numpy as np
import pytest
from scipy.stats import binomtest

from datamodules.synthetic.content import SyntheticContent


def test_content_rendering_is_deterministic():
    generator = SyntheticContent(num_subjects=3, images_per_subject=2)
    row = generator.manifest().iloc[4]
    assert np.array_equal(
        generator.render(row, 4), SyntheticContent(num_subjects=3, images_per_subject=2).render(row, 4)
    )


def test_label_flip_rate_matches_the_stated_noise():
    generator = SyntheticContent(num_subjects=2000, images_per_subject=2, flip_prob=0.08)
    manifest = generator.manifest()
    flipped = int((manifest["label"] != manifest["true_label"]).sum())
    assert binomtest(flipped, len(manifest), 0.08).pvalue > 0.001
    assert generator.data_metrics() == {"data/content/bayes_accuracy": pytest.approx(0.92)}


def test_classes_are_configurable_and_scenes_share_their_class():
    generator = SyntheticContent(classes=("safe", "unsafe"), num_subjects=50, images_per_subject=3)
    manifest = generator.manifest()
    assert set(manifest["label_name"]) <= {"safe", "unsafe"}
    assert manifest.groupby("subject_id")["true_label"].nunique().max() == 1
    assert set(manifest["palette"]) <= {"warm", "cool", "muted"}


def test_too_many_classes_is_refused_with_the_config_key():
    with pytest.raises(ValueError, match=r"data\.generator\.classes"):
        SyntheticContent(classes=tuple("abcdefgh"))
