import numpy as np
import pytest

from datamodules.synthetic.faces import AgePrior, ApparentAgeNoise, BiasInjection, SyntheticFaces, bayes_mae


def test_rendering_is_deterministic_in_seed_and_index():
    generator = SyntheticFaces(num_subjects=4, images_per_subject=2)
    manifest = generator.manifest()
    first = generator.render(manifest.iloc[3], 3)
    again = SyntheticFaces(num_subjects=4, images_per_subject=2).render(manifest.iloc[3], 3)
    other = generator.render(manifest.iloc[2], 2)
    assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_manifest_carries_subjects_and_attributes():
    manifest = SyntheticFaces(num_subjects=300, images_per_subject=3).manifest()
    assert len(manifest) == 900
    assert manifest.groupby("subject_id")["age"].nunique().max() == 1  # one age per subject
    assert manifest["age"].between(0, 80).all()
    assert set(manifest["sex"]) == {"female", "male"}
    assert manifest["skin_tone"].between(1, 10).all()
    assert set(manifest["skin_tone_bin"]) == {"light", "medium", "dark"}
    # children are oversampled: prior mass below 18 is 2*18 / (2*18 + 62) = 0.37, not 18/80 = 0.225
    assert 0.30 < (manifest.drop_duplicates("subject_id")["age"] < 18).mean() < 0.44


def test_apparent_age_noise_matches_the_stated_model():
    generator = SyntheticFaces(num_subjects=4000, images_per_subject=1)
    manifest = generator.manifest()
    adults = manifest[(manifest["age"] > 30) & (manifest["age"] < 60)]
    residual = (adults["apparent_age"] - adults["age"]) / (1.0 + 0.08 * adults["age"])
    assert abs(residual.mean()) < 0.1
    assert residual.std() == pytest.approx(1.0, abs=0.1)


def test_bias_injection_widens_noise_for_the_chosen_group_of_minors():
    noise = ApparentAgeNoise(bias=BiasInjection(enabled=True, skin_tone_bin="dark", noise_scale=2.0, shift_years=2.0))
    ages = np.array([10.0, 10.0, 30.0])
    mean, sigma = noise.mean_and_sigma(ages, np.array(["dark", "light", "dark"]))
    assert sigma[0] == pytest.approx(2 * sigma[1])
    assert mean[0] == pytest.approx(12.0) and mean[1] == pytest.approx(10.0)
    assert sigma[2] == pytest.approx(1.0 + 0.08 * 30)  # adults untouched


def test_bayes_floor_is_non_trivial_and_behaves_like_a_floor():
    prior = AgePrior()
    floor = bayes_mae(prior, ApparentAgeNoise(), "light")
    assert floor >= 1.0
    assert bayes_mae(prior, ApparentAgeNoise(base_sigma=0.01, slope=0.0), "light") < 0.1
    assert bayes_mae(prior, ApparentAgeNoise(base_sigma=2.0, slope=0.16), "light") > floor


def test_bayes_floor_matches_a_monte_carlo_of_the_optimal_predictor():
    """Draw (age, apparent) pairs; predict with the grid's posterior median; compare MAEs."""
    prior, noise = AgePrior(), ApparentAgeNoise()
    rng = np.random.default_rng(0)
    ages = prior.sample(rng, 40000)
    mean, sigma = noise.mean_and_sigma(ages, np.full(ages.shape, "light"))
    apparent = np.clip(mean + sigma * rng.standard_normal(ages.size), 0, 95)
    # brute-force posterior median on a coarse grid for each observation bucket
    grid = np.arange(0.05, 80, 0.1)
    g_mean, g_sigma = noise.mean_and_sigma(grid, np.full(grid.shape, "light"))
    buckets = np.round(apparent).astype(int)
    errors = []
    for bucket in np.unique(buckets):
        likelihood = np.exp(-0.5 * ((bucket - g_mean) / g_sigma) ** 2) / g_sigma * prior.pdf(grid)
        median = grid[np.searchsorted(np.cumsum(likelihood) / likelihood.sum(), 0.5)]
        errors.append(np.abs(ages[buckets == bucket] - median))
    simulated = np.concatenate(errors).mean()
    assert simulated == pytest.approx(bayes_mae(prior, noise, "light"), rel=0.05)


def test_data_metrics_report_the_floor_under_its_metric_key():
    metrics = SyntheticFaces(num_subjects=1).data_metrics()
    assert set(metrics) == {"data/age/bayes_mae"}
    assert 1.0 <= metrics["data/age/bayes_mae"] < 6.0
