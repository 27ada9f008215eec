"""Validity of the per-person certificate under within-subject correlation (issue 13, item 2).

Generator: n subjects with m positive images each. Subject s has a latent effect u_s ~ N(0, sb^2);
image j of subject s has the logit z_sj = mu + u_s + e_sj with e_sj ~ N(0, se^2), and the score
sigmoid(z_sj). With se small against sb, a subject's images are strongly correlated (ICC =
sb^2 / (sb^2 + se^2) = 0.86). A positive is missed when its score is below the threshold t, so the
true population rates are exact closed forms (no simulation in the ground truth):
- per image (the share of a random person's images that are missed): Phi((logit t - mu) / sd),
  sd = sqrt(sb^2 + se^2);
- per person (a random person has at least one missed image):
  integral of 1 - (1 - Phi((logit t - mu - u) / se))^m over u ~ N(0, sb^2), by quadrature.

Each simulated calib draw is certified twice at the same target, counting images as independent
trials (no units) and per person (`positive_units`). A draw is covered when the true rate at the
chosen threshold is at most the target. Counting images as trials overstates the evidence by the
design effect 1 + (m - 1) ICC (about 7 here), so that certificate under-covers; the per-person one
must cover at least its nominal 95%.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm

from calibration.operating_points import certify_threshold

pytestmark = pytest.mark.slow

SUBJECTS = 120  # n: people in a calib draw (the per-person certificate needs at least 59 at 5% / 95%)
IMAGES_PER_SUBJECT = 8  # m
SIGMA_SUBJECT = 1.0  # sb: sd of the subject effect on the logit
SIGMA_IMAGE = 0.4  # se: sd of the image noise on the logit
MU = 2.0  # mean logit of a positive's score
MAX_MISS_RATE = 0.05
CONFIDENCE = 0.95
DRAWS = 1000
SEED = 13

ICC = SIGMA_SUBJECT**2 / (SIGMA_SUBJECT**2 + SIGMA_IMAGE**2)
SD_TOTAL = float(np.hypot(SIGMA_SUBJECT, SIGMA_IMAGE))

# Quadrature grid for the subject effect: +-10 sd, spacing 0.005 sd (trapezoid rule; the integrand
# is smooth and its tails beyond 10 sd weigh below 1e-22).
_U = np.linspace(-10 * SIGMA_SUBJECT, 10 * SIGMA_SUBJECT, 4001)
_U_WEIGHT = norm.pdf(_U, scale=SIGMA_SUBJECT)


def image_miss_rate(threshold: np.ndarray | float) -> np.ndarray:
    """Exact population share of images scoring below `threshold`."""
    return norm.cdf((logit(np.asarray(threshold, dtype=np.float64)) - MU) / SD_TOTAL)


def person_miss_rate(threshold: np.ndarray | float) -> np.ndarray:
    """Exact population share of people with at least one of their m images below `threshold`."""
    cut = logit(np.atleast_1d(np.asarray(threshold, dtype=np.float64)))[:, None]
    # P(no image missed | u) = sf((cut - mu - u) / se)^m, computed in logs for the far tail.
    none_missed = np.exp(IMAGES_PER_SUBJECT * norm.logsf((cut - MU - _U) / SIGMA_IMAGE))
    return np.trapezoid((1.0 - none_missed) * _U_WEIGHT, _U, axis=1)


def draw(rng: np.random.Generator, subjects: int = SUBJECTS) -> tuple[np.ndarray, np.ndarray]:
    """One calib split of positives: scores and their subject ids, images in shuffled order."""
    effect = rng.normal(0.0, SIGMA_SUBJECT, size=(subjects, 1))
    logits = MU + effect + rng.normal(0.0, SIGMA_IMAGE, size=(subjects, IMAGES_PER_SUBJECT))
    units = np.repeat(1000 + np.arange(subjects), IMAGES_PER_SUBJECT)
    order = rng.permutation(units.size)  # a subject's images are not adjacent in a real split
    return expit(logits).ravel()[order], units[order]


def subject_minima(scores: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Each subject's lowest score (every subject has m images)."""
    return scores[np.argsort(units, kind="stable")].reshape(-1, IMAGES_PER_SUBJECT).min(axis=1)


def test_exact_rates_match_a_large_monte_carlo():
    rng = np.random.default_rng([SEED, 999_999])
    scores, units = draw(rng, subjects=200_000)
    minima = subject_minima(scores, units)
    for threshold in expit(np.array([-1.0, 0.0, 0.5, 1.0])):
        assert (scores < threshold).mean() == pytest.approx(float(image_miss_rate(threshold)), abs=1.5e-3)
        assert (minima < threshold).mean() == pytest.approx(float(person_miss_rate(threshold)[0]), abs=3e-3)


def test_per_person_certificate_covers_under_correlation_and_image_level_does_not():
    start = time.perf_counter()
    image_thresholds, person_thresholds = np.empty(DRAWS), np.empty(DRAWS)
    image_bounds, person_bounds = np.empty(DRAWS), np.empty(DRAWS)
    for i in range(DRAWS):
        rng = np.random.default_rng([SEED, i])
        scores, units = draw(rng)
        negatives = expit(rng.normal(-MU, SD_TOTAL, size=200))
        by_image = certify_threshold("image", scores, negatives, MAX_MISS_RATE, CONFIDENCE)
        by_person = certify_threshold("person", scores, negatives, MAX_MISS_RATE, CONFIDENCE, positive_units=units)
        assert by_image.positives == SUBJECTS * IMAGES_PER_SUBJECT
        assert by_person.positives == SUBJECTS
        assert by_person.misses == int((subject_minima(scores, units) < by_person.threshold).sum())
        assert by_image.miss_rate_upper_bound <= MAX_MISS_RATE
        assert by_person.miss_rate_upper_bound <= MAX_MISS_RATE
        image_thresholds[i], person_thresholds[i] = by_image.threshold, by_person.threshold
        image_bounds[i], person_bounds[i] = by_image.miss_rate_upper_bound, by_person.miss_rate_upper_bound

    true_rate_image_cert = image_miss_rate(image_thresholds)
    true_rate_person_cert = image_miss_rate(person_thresholds)
    true_person_rate_person_cert = person_miss_rate(person_thresholds)
    coverage_image = float((true_rate_image_cert <= MAX_MISS_RATE).mean())
    coverage_person = float((true_rate_person_cert <= MAX_MISS_RATE).mean())
    coverage_person_strict = float((true_person_rate_person_cert <= MAX_MISS_RATE).mean())
    elapsed = time.perf_counter() - start

    print(
        f"\nparameters: {SUBJECTS} subjects x {IMAGES_PER_SUBJECT} images, logit = {MU} + N(0, {SIGMA_SUBJECT}^2) "
        f"+ N(0, {SIGMA_IMAGE}^2), score = sigmoid(logit); ICC {ICC:.3f}, design effect "
        f"{1 + (IMAGES_PER_SUBJECT - 1) * ICC:.2f}; target miss rate {MAX_MISS_RATE} at {CONFIDENCE}; "
        f"{DRAWS} draws, seed {SEED}"
    )
    print(
        f"image-level certificate: coverage {coverage_image:.3f} (true per-image rate at its threshold <= target); "
        f"median claimed bound {np.median(image_bounds):.4f}, median true per-image rate "
        f"{np.median(true_rate_image_cert):.4f}, 95th percentile {np.quantile(true_rate_image_cert, 0.95):.4f}"
    )
    print(
        f"per-person certificate: coverage {coverage_person:.3f} (true per-image rate <= target), "
        f"{coverage_person_strict:.3f} (true per-person any-miss rate <= target); median claimed bound "
        f"{np.median(person_bounds):.4f}, median true per-person rate {np.median(true_person_rate_person_cert):.4f}, "
        f"median true per-image rate {np.median(true_rate_person_cert):.4f}"
    )
    print(f"simulation time {elapsed:.1f} s")

    assert coverage_person >= CONFIDENCE
    assert coverage_person_strict >= CONFIDENCE  # the certificate's own claim, about people, holds too
    assert coverage_image < 0.9  # the simulation has teeth: counting images as trials under-covers
