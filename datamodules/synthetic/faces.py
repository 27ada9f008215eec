"""Procedural faces whose apparent age is visible and whose label noise is known.

Each synthetic subject has a chronological age, a sex and a Monk skin tone. Every image of that
subject is rendered from an *apparent* age = chronological age + noise whose spread grows with age
(and, with a bias injection, is larger for one group of minors). Because the generator knows that
noise and the age prior, it can compute the best MAE any model could reach: the Bayes floor.

Age cues are proportions and textures, never a pixel that encodes the number:
- growth (0-22 y): cardioidal strain of the skull outline (the jaw lengthens), eyes move up and
  shrink relative to the head, the nose lengthens;
- ageing (20-95 y): forehead and eye-corner wrinkles deepen, hair greys, the hairline recedes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm

from datamodules.synthetic.canvas import CameraNuisance, Grid, ellipse, paint, soft_step

# Approximate sRGB swatches of the 10-point Monk Skin Tone scale (Google, 2022).
MONK_SCALE_RGB = (
    np.array(
        [
            [246, 237, 228],
            [243, 231, 219],
            [247, 234, 208],
            [234, 218, 186],
            [215, 189, 150],
            [160, 126, 86],
            [130, 92, 67],
            [96, 65, 52],
            [58, 49, 42],
            [41, 36, 32],
        ],
        dtype=np.float64,
    )
    / 255.0
)
HAIR_RGB = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.75, 0.60, 0.35], [0.55, 0.22, 0.10]])
GREY_HAIR = np.array([0.85, 0.85, 0.85])
MAX_APPARENT_AGE = 95.0


def skin_tone_bin(monk: np.ndarray | int) -> np.ndarray | str:
    """Monk 1-3 light, 4-7 medium, 8-10 dark: the three bins used for slicing."""
    bins = np.array(["light"] * 3 + ["medium"] * 4 + ["dark"] * 3)
    return bins[np.asarray(monk) - 1]


@dataclass(frozen=True)
class AgePrior:
    """Uniform over [0, max_age) with the minor range [0, minor_age) weighted up."""

    max_age: float = 80.0
    minor_age: float = 18.0
    minor_weight: float = 2.0

    def pdf(self, age: np.ndarray) -> np.ndarray:
        density = np.where(age < self.minor_age, self.minor_weight, 1.0) * (age >= 0) * (age < self.max_age)
        return density / (self.minor_weight * self.minor_age + (self.max_age - self.minor_age))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        minor_mass = self.minor_weight * self.minor_age
        is_minor = rng.uniform(size=n) < minor_mass / (minor_mass + self.max_age - self.minor_age)
        return np.where(
            is_minor,
            rng.uniform(0.0, self.minor_age, n),
            rng.uniform(self.minor_age, self.max_age, n),
        )


@dataclass(frozen=True)
class BiasInjection:
    """A known disparity: minors of one skin-tone bin look older and noisier."""

    enabled: bool = False
    skin_tone_bin: str = "dark"
    below_age: float = 18.0
    noise_scale: float = 2.0
    shift_years: float = 2.0


@dataclass(frozen=True)
class ApparentAgeNoise:
    """apparent = chronological + shift + N(0, sigma), sigma = base + slope * age."""

    base_sigma: float = 1.0
    slope: float = 0.08
    bias: BiasInjection = field(default_factory=BiasInjection)

    def mean_and_sigma(self, age: np.ndarray, tone_bin: str | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sigma = self.base_sigma + self.slope * age
        shift = np.zeros_like(age)
        if self.bias.enabled:
            hit = (np.asarray(tone_bin) == self.bias.skin_tone_bin) & (age < self.bias.below_age)
            sigma = np.where(hit, sigma * self.bias.noise_scale, sigma)
            shift = np.where(hit, self.bias.shift_years, 0.0)
        return age + shift, sigma


def bayes_mae(prior: AgePrior, noise: ApparentAgeNoise, tone_bin: str, step: float = 0.1) -> float:
    """Lowest MAE possible from the rendered apparent age and the visible skin-tone bin.

    The optimal predictor under L1 is the posterior median of the chronological age given the
    (clipped) apparent age; we integrate its expected error on a grid. No library ships this
    posterior for an arbitrary prior and heteroscedastic noise, hence the few lines here.
    """
    ages = np.arange(0.0, prior.max_age, step) + step / 2
    weights = prior.pdf(ages) * step
    mean, sigma = noise.mean_and_sigma(ages, np.full(ages.shape, tone_bin))
    observed = np.arange(0.0, MAX_APPARENT_AGE + step, step)
    edges = np.concatenate([[-np.inf], observed[:-1] + step / 2, [np.inf]])
    likelihood = np.diff(norm.cdf((edges[None, :] - mean[:, None]) / sigma[:, None]), axis=1)
    joint = weights[:, None] * likelihood
    evidence = joint.sum(axis=0)
    seen = evidence > 0
    joint, evidence = joint[:, seen], evidence[seen]
    posterior_cdf = np.cumsum(joint, axis=0) / evidence
    median = ages[np.argmax(posterior_cdf >= 0.5, axis=0)]
    return float((joint * np.abs(ages[:, None] - median[None, :])).sum() / joint.sum())


# The head spans about 55% of the image's width at the original framing: a box grown by 0.4 each side.
DRAWN_MARGIN = 0.4


@dataclass(frozen=True)
class SyntheticFaces:
    """The synthetic age dataset: subjects, their images, and the floor a model can reach."""

    seed: int = 0
    num_subjects: int = 5000
    images_per_subject: int = 3
    image_size: int = 64
    # The face box (the head's outline) grown by this share of its size on each side fills the image:
    # the crop convention the export contract states. 0.4 is the original framing; a larger margin
    # draws the same face smaller, leaving a border for training crops (docs/training.md).
    margin: float = DRAWN_MARGIN
    prior: AgePrior = field(default_factory=AgePrior)
    noise: ApparentAgeNoise = field(default_factory=ApparentAgeNoise)

    task = "age"
    name = "synthetic-faces"
    renderer_version = 2  # bump whenever rendering changes, so caches of the old look are not reused
    licence = "CC0-1.0 (generated by childsafe-workbench)"

    def manifest(self) -> pd.DataFrame:
        """One row per image; subject traits from rng(seed, 1), per-image noise from rng(seed, 2, i)."""
        rng = np.random.default_rng([self.seed, 1])
        ages = self.prior.sample(rng, self.num_subjects)
        sexes = rng.choice(np.array(["female", "male"]), self.num_subjects)
        monk = rng.integers(1, 11, self.num_subjects)
        subject = np.repeat(np.arange(self.num_subjects), self.images_per_subject)
        index = np.arange(subject.size)
        age = ages[subject]
        tone_bin = skin_tone_bin(monk[subject])
        mean, sigma = self.noise.mean_and_sigma(age, tone_bin)
        draws = np.array([np.random.default_rng([self.seed, 2, i]).standard_normal() for i in index])
        return pd.DataFrame(
            {
                "id": [f"face-{self.seed}-{i:07d}" for i in index],
                "subject_id": [f"subject-{self.seed}-{s:06d}" for s in subject],
                "age": age,
                "apparent_age": np.clip(mean + sigma * draws, 0.0, MAX_APPARENT_AGE),
                "sex": sexes[subject],
                "skin_tone": monk[subject],
                "skin_tone_bin": tone_bin,
            }
        )

    def data_metrics(self) -> dict[str, float]:
        bins, shares = ("light", "medium", "dark"), (0.3, 0.4, 0.3)
        floor = sum(share * bayes_mae(self.prior, self.noise, b) for b, share in zip(bins, shares, strict=True))
        return {"data/age/bayes_mae": floor}

    def render(self, row: pd.Series, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, index])
        traits = np.random.default_rng([self.seed, 4, int(row["subject_id"].rsplit("-", 1)[1])])
        return render_face(
            apparent_age=float(row["apparent_age"]),
            skin=MONK_SCALE_RGB[int(row["skin_tone"]) - 1],
            male=row["sex"] == "male",
            traits=traits,
            rng=rng,
            size=self.image_size,
            zoom=(1 + 2 * DRAWN_MARGIN) / (1 + 2 * self.margin),
        )


def render_face(
    apparent_age: float,
    skin: np.ndarray,
    male: bool,
    traits: np.random.Generator,
    rng: np.random.Generator,
    size: int,
    zoom: float = 1.0,
) -> np.ndarray:
    """Draw one face; `traits` fixes the subject's identity, `rng` the pose and capture."""
    width = traits.uniform(0.85, 1.05)
    eye_gap = traits.uniform(0.20, 0.27)
    hair = HAIR_RGB[traits.integers(len(HAIR_RGB))]
    greying_rate = traits.uniform(0.9, 1.1)

    growth = 1.0 - (1.0 - min(apparent_age, 22.0) / 22.0) ** 1.5
    ageing = np.clip((apparent_age - 20.0) / 75.0, 0.0, 1.0)
    greying = np.clip((apparent_age - 30.0) / 60.0 * greying_rate, 0.0, 1.0)

    grid = Grid.posed(
        size,
        angle_deg=rng.uniform(-12, 12),
        scale=rng.uniform(0.9, 1.1) * zoom,
        shift=(rng.uniform(-0.08, 0.08) * zoom, rng.uniform(-0.06, 0.06) * zoom),
    )
    background = rng.uniform(0.1, 0.9, 3)
    canvas = np.broadcast_to(background, (size, size, 3)).copy()
    canvas += 0.08 * np.sin(grid.x[..., None] * rng.uniform(2, 6) + rng.uniform(0, 6, 3))

    # Cardioidal strain: R'(theta) = R(theta) (1 + k (1 - cos theta)), theta measured from the
    # crown, so growth lengthens the lower face while the cranium and the eyes stay put.
    strain = 0.30 * growth
    rx, ry, centre_y = 0.55 * width, 0.58, -0.25
    dx, dy = grid.x, grid.y - centre_y
    radius = np.hypot(dx, dy) + 1e-9
    sin_theta, cos_theta = dx / radius, -dy / radius
    outline = (1.0 + strain * (1.0 - cos_theta)) / np.hypot(sin_theta / rx, cos_theta / ry)
    head = soft_step(outline - radius, grid.pixel)
    crown, chin = centre_y - ry, centre_y + ry * (1.0 + 2.0 * strain)

    hairline = crown + 0.22 + 0.10 * ageing
    hair_colour = (1 - greying) * hair + greying * GREY_HAIR
    paint(canvas, head, skin)
    paint(canvas, head * soft_step(hairline - grid.y, grid.pixel), hair_colour)

    eye_y = centre_y + 0.06
    eye_r = (0.115 - 0.045 * growth) * width
    # Creases darken light skin and lighten dark skin by the same amount, so the ageing cue is equally
    # visible on every skin tone (the generator must not bake in a disparity of its own).
    shadow = np.clip(skin - 0.3 if skin.mean() > 0.45 else skin + 0.3, 0.0, 1.0)
    for side in (-1, 1):
        cx = side * eye_gap * width
        paint(canvas, ellipse(grid, cx, eye_y, eye_r * 1.3, eye_r * 0.8), (0.95, 0.95, 0.95))
        paint(canvas, ellipse(grid, cx, eye_y, eye_r * 0.55, eye_r * 0.55), (0.1, 0.07, 0.05))
        brow = ellipse(grid, cx, eye_y - eye_r - 0.05, eye_r * 1.5, 0.012 + 0.02 * growth)
        paint(canvas, brow, hair_colour * 0.8)
        for k in range(3):  # crow's feet fan out from the outer eye corner
            crease = ellipse(grid, cx + side * eye_r * 1.8, eye_y + (k - 1) * 0.04, 0.06, 0.011)
            paint(canvas, crease * ageing, shadow)

    forehead_mid = (hairline + eye_y - eye_r - 0.05) / 2
    for k in range(4):
        line = ellipse(grid, 0.0, forehead_mid + (k - 1.5) * 0.04, 0.26 * width, 0.014) * head
        paint(canvas, line * min(1.0, 1.6 * ageing) * (k < 1 + 3 * ageing), shadow)

    lower_face = chin - eye_y
    nose_tip = eye_y + 0.45 * lower_face
    paint(canvas, ellipse(grid, 0.0, (eye_y + nose_tip) / 2 + 0.02, 0.035, (nose_tip - eye_y) / 2), skin * 0.8)
    mouth_y = eye_y + 0.70 * lower_face
    paint(canvas, ellipse(grid, 0.0, mouth_y, 0.12 * width, 0.025), (0.55, 0.22, 0.22))
    for side in (-1, 1):  # nasolabial folds
        fold = ellipse(grid, side * 0.14 * width, (nose_tip + mouth_y) / 2, 0.012, 0.06)
        paint(canvas, fold * ageing, shadow)
    return CameraNuisance.draw(rng).apply(canvas, grid, rng)
