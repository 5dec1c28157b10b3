"""Synthetic H&E tiles with exact nucleus instance maps: the project's embedded default data.

A tile is built in two passes. Geometry first: nucleus centres are drawn from an
inhomogeneous Poisson process whose intensity is a smooth random density field (dense
clusters, sparse patches, empty lumen), crowded candidates are thinned, and each nucleus
(an ellipse with a low-frequency radial perturbation of its boundary) is rasterised inside
its own bounding box into an int32 label map. Earlier nuclei stay in front; a later one
keeps only its largest visible piece and is dropped when that is smaller than
``TileStyle.min_visible_area``, so ids stay contiguous. Then appearance: stain amounts
(eosin in stroma, hematoxylin in nuclei with chromatin texture and a darker rim) are
turned into RGB by Beer-Lambert mixing of two optical-density colours, blurred slightly
and given per-pixel noise.

Everything is drawn from one ``np.random.default_rng(seed)``: the same seed gives
byte-identical tiles.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from bundle.atomic import atomic_path
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

Seed = int | Sequence[int] | np.random.SeedSequence

PIXELS_PER_MEGAPIXEL = 1_000_000
RGB_MAX = 255.0
BOUNDARY_HARMONICS = (2, 3, 4)  # orders of the cos(k * theta) terms that deform each ellipse


@dataclass(frozen=True)
class TileStyle:
    """Named parameters of the tile generator. Lengths in pixels, colours as RGB 0-255.

    Ranges are (low, high) pairs from which one value is drawn per tile or per nucleus.
    """

    # Nucleus geometry.
    density_range: tuple[float, float] = (400.0, 2000.0)  # nucleus centres per megapixel, per tile
    mean_radius_range: tuple[float, float] = (7.0, 11.0)  # equivalent radius sqrt(a * b), per tile
    radius_log_sigma: float = 0.2  # spread of log radius between nuclei of one tile
    radius_clip: tuple[float, float] = (0.55, 1.8)  # radius limits as multiples of the tile mean
    axis_ratio_range: tuple[float, float] = (0.45, 1.0)  # minor / major axis
    boundary_amplitude: float = 0.06  # max relative radius change of each boundary harmonic
    min_centre_distance: float = 0.8  # closer centres (in units of r_i + r_j) are thinned out
    min_visible_area: int = 30  # nuclei with fewer visible pixels are dropped

    # Density field: where nuclei cluster, where they are sparse.
    density_cell: int = 8  # side of the coarse grid cells the field is sampled on
    density_correlation: float = 100.0  # length scale of density variation
    density_log_contrast: float = 0.9  # standard deviation of the log density field
    sparse_fraction_range: tuple[float, float] = (0.1, 0.35)  # tile area with sparse nuclei
    sparse_factor: float = 0.12  # density multiplier in sparse areas

    # Lumen: empty, nearly white areas without nuclei.
    lumen_fraction_range: tuple[float, float] = (0.0, 0.08)
    lumen_correlation: float = 60.0
    lumen_edge: float = 0.25  # width of the soft lumen edge in units of field standard deviations
    lumen_residual_stain: float = 0.08  # eosin left inside lumen, as a fraction of stroma

    # Colours (Beer-Lambert): optical density = -log(rgb / 255) scaled by stain amount.
    stroma_rgb: tuple[float, float, float] = (230.0, 175.0, 210.0)  # eosin amount 1
    nucleus_rgb: tuple[float, float, float] = (100.0, 70.0, 145.0)  # hematoxylin amount 1
    stain_jitter: float = 0.15  # per-tile relative spread of each stain's optical density
    nucleus_stain_range: tuple[float, float] = (0.65, 1.15)  # per-nucleus hematoxylin amount
    chromatin_amplitude: float = 0.3  # relative hematoxylin texture inside nuclei
    rim_gain: float = 0.5  # extra hematoxylin at the nuclear membrane, relative
    rim_width: float = 0.25  # rim width as a fraction of the nucleus radius

    # Cytoplasm: denser, slightly purple stain where nuclei are crowded.
    cytoplasm_reach: float = 12.0  # length scale over which nuclei colour their surroundings
    cytoplasm_eosin: float = 0.6  # extra eosin per unit of local nucleus coverage
    cytoplasm_hematoxylin: float = 0.15  # hematoxylin per unit of local nucleus coverage

    # Texture.
    grain_length: float = 1.2  # length scale of the fine grain: chromatin inside nuclei, stroma grain outside
    stroma_amplitude: float = 0.2  # relative eosin variation, low frequency
    stroma_correlation: float = 40.0
    grain_amplitude: float = 0.06  # relative eosin variation, fine grain
    streak_amplitude: float = 0.2  # relative eosin variation of fibrous streaks
    streak_spacing: float = 1.5  # length scale across the streaks
    streak_waviness: float = 15.0  # displacement of the streaks, in pixels
    streak_patch_correlation: float = 80.0  # size of the patches with streaks
    streak_patch_threshold: float = 0.3  # streaks appear where the patch field exceeds this

    # Acquisition.
    blur_sigma: float = 1.0
    noise_std: float = 4.0  # per-pixel Gaussian noise, in 0-255 levels


@dataclass(frozen=True)
class NucleusCandidates:
    """Per-nucleus shape parameters, all float arrays of length N (pixels and radians)."""

    centre_y: np.ndarray
    centre_x: np.ndarray
    radius: np.ndarray  # equivalent radius sqrt(a * b)
    axis_ratio: np.ndarray  # minor / major
    angle: np.ndarray  # orientation of the major axis
    harmonic_amplitude: np.ndarray  # (N, len(BOUNDARY_HARMONICS)) relative radius changes
    harmonic_phase: np.ndarray  # (N, len(BOUNDARY_HARMONICS))

    def take(self, index: np.ndarray) -> "NucleusCandidates":
        """The candidates at ``index`` (integer or boolean array), in that order."""
        return NucleusCandidates(**{name: value[index] for name, value in vars(self).items()})


DEFAULT_STYLE = TileStyle()  # frozen: one shared default is safe


def synthesize_tile(
    shape: tuple[int, int] = (1000, 1000),
    seed: Seed = 0,
    *,
    density: float | None = None,
    mean_radius: float | None = None,
    style: TileStyle = DEFAULT_STYLE,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic H&E tile and its exact nucleus instance map.

    Args:
        shape: (H, W) in pixels.
        seed: anything ``np.random.default_rng`` accepts (an int, or ``tile_seed(seed, index)``).
        density: expected nucleus centres per megapixel before crowded ones are thinned;
            drawn from ``style.density_range`` when None.
        mean_radius: mean equivalent nucleus radius in pixels; drawn from
            ``style.mean_radius_range`` when None. Both are drawn either way, so fixing
            one leaves the rest of the tile's randomness as it was.
        style: the remaining generator parameters.

    Returns:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) int32, 0 background and 1..N nuclei, each id present with at least
            ``style.min_visible_area`` pixels in one 8-connected piece.
    """
    rng = np.random.default_rng(seed)
    drawn_density, drawn_radius = rng.uniform(*style.density_range), rng.uniform(*style.mean_radius_range)
    density = drawn_density if density is None else density
    mean_radius = drawn_radius if mean_radius is None else mean_radius
    lumen = lumen_grid(shape, rng, style)
    density_map = density_field(lumen, rng, style)
    candidates = sample_candidates(shape, density, mean_radius, density_map, rng, style)
    candidates = candidates.take(thin_crowded(candidates, style.min_centre_distance))
    label, radial_position, kept = rasterise_nuclei(shape, candidates, style.min_visible_area)
    nucleus_stain = rng.uniform(*style.nucleus_stain_range, size=len(candidates.radius))[kept]
    cellularity = upsample(cellularity_grid(candidates.take(kept), lumen.shape, style), shape)
    image = render_image(label, radial_position, nucleus_stain, upsample(lumen, shape), cellularity, rng, style)
    return image, label


def coarse_shape(shape: tuple[int, int], cell: int) -> tuple[int, int]:
    """Shape of a grid of ``cell``-pixel cells covering ``shape``."""
    return (-(-shape[0] // cell), -(-shape[1] // cell))


def smooth_grid(grid_shape: tuple[int, int], correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance random field varying over ``correlation`` grid cells:
    (h, w) float32, Gaussian-filtered white noise (all zeros on a one-cell grid)."""
    return standardise(ndimage.gaussian_filter(rng.standard_normal(grid_shape, dtype=np.float32), correlation))


def standardise(field: np.ndarray) -> np.ndarray:
    """``field`` shifted and scaled to zero mean and unit variance (all zeros if constant)."""
    centred = field - field.mean()
    return centred / max(centred.std(), np.finfo(np.float32).eps)


def upsample(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a coarse (h, w) float32 grid to ``shape``: (H, W) float32.

    Separable gathers and blends, several times faster than ``ndimage.zoom``.
    """
    for axis, size in enumerate(shape):
        grid = interpolate_axis(grid, size, axis)
    return grid


def interpolate_axis(grid: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``grid`` to ``size`` samples along ``axis``, between cell
    centres, edges clamped (the ``grid_mode=True`` convention of ``ndimage.zoom``)."""
    n_in = grid.shape[axis]
    position = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0, n_in - 1.0)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    weight = (position - lower).astype(np.float32).reshape([-1 if dim == axis else 1 for dim in range(grid.ndim)])
    below = np.take(grid, lower, axis=axis)
    return below + (np.take(grid, upper, axis=axis) - below) * weight


def smooth_noise(shape: tuple[int, int], correlation: float, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance random field varying over ``correlation`` pixels, built on
    a grid of ``cell``-pixel cells: (H, W) float32."""
    return upsample(smooth_grid(coarse_shape(shape, cell), correlation / cell, rng), shape)


def lumen_grid(shape: tuple[int, int], rng: np.random.Generator, style: TileStyle) -> np.ndarray:
    """How empty each coarse cell is: (ceil(H / cell), ceil(W / cell)) float32 in [0, 1],
    1 inside lumen, 0 in tissue, soft at the edge."""
    fraction = rng.uniform(*style.lumen_fraction_range)
    field = smooth_grid(coarse_shape(shape, style.density_cell), style.lumen_correlation / style.density_cell, rng)
    threshold = np.quantile(field, 1.0 - fraction)
    return np.clip((field - threshold) / style.lumen_edge, 0.0, 1.0)


def density_field(lumen: np.ndarray, rng: np.random.Generator, style: TileStyle) -> np.ndarray:
    """Relative nucleus density on the coarse grid of ``lumen``: same shape, float64, sums to 1.

    Log-normal clusters times a sparse-patch mask, zero in lumen.
    """
    correlation = style.density_correlation / style.density_cell
    clusters = smooth_grid(lumen.shape, correlation, rng)
    sparse_noise = smooth_grid(lumen.shape, correlation, rng)
    sparse = sparse_noise < np.quantile(sparse_noise, rng.uniform(*style.sparse_fraction_range))
    field = np.exp(style.density_log_contrast * clusters) * np.where(sparse, style.sparse_factor, 1.0) * (1.0 - lumen)
    return field / field.sum()


def sample_candidates(
    shape: tuple[int, int],
    density: float,
    mean_radius: float,
    density_map: np.ndarray,
    rng: np.random.Generator,
    style: TileStyle,
) -> NucleusCandidates:
    """Poisson-many nucleus candidates placed by ``density_map`` (coarse grid, sums to 1)."""
    count = rng.poisson(density * shape[0] * shape[1] / PIXELS_PER_MEGAPIXEL)
    cells = rng.choice(density_map.size, size=count, p=density_map.ravel())
    cell_y, cell_x = np.unravel_index(cells, density_map.shape)
    centre_y = np.minimum((cell_y + rng.random(count)) * style.density_cell, shape[0] - 1)
    centre_x = np.minimum((cell_x + rng.random(count)) * style.density_cell, shape[1] - 1)
    radius_scale = np.exp(style.radius_log_sigma * rng.standard_normal(count))
    harmonics = (count, len(BOUNDARY_HARMONICS))
    return NucleusCandidates(
        centre_y=centre_y,
        centre_x=centre_x,
        radius=mean_radius * np.clip(radius_scale, *style.radius_clip),
        axis_ratio=rng.uniform(*style.axis_ratio_range, size=count),
        angle=rng.uniform(0.0, np.pi, size=count),
        harmonic_amplitude=rng.uniform(0.0, style.boundary_amplitude, size=harmonics),
        harmonic_phase=rng.uniform(0.0, 2.0 * np.pi, size=harmonics),
    )


def thin_crowded(candidates: NucleusCandidates, min_distance: float) -> np.ndarray:
    """Indices of candidates kept, in order, when each one closer than
    ``min_distance * (r_i + r_j)`` to an earlier kept candidate is dropped."""
    count = len(candidates.radius)
    centres = np.stack([candidates.centre_y, candidates.centre_x], axis=1)
    reach = min_distance * 2.0 * candidates.radius.max(initial=0.0)
    pairs = cKDTree(centres).query_pairs(reach, output_type="ndarray")
    distance = np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
    limit = min_distance * (candidates.radius[pairs[:, 0]] + candidates.radius[pairs[:, 1]])
    conflicts = np.sort(pairs[distance < limit], axis=1)  # each pair as (earlier, later)
    conflicts = conflicts[np.argsort(conflicts[:, 0], kind="stable")]
    later_by_earlier = np.split(conflicts[:, 1], np.searchsorted(conflicts[:, 0], np.arange(1, count)))
    keep = np.ones(count, dtype=bool)
    for earlier in range(count):
        if keep[earlier]:
            keep[later_by_earlier[earlier]] = False
    return np.flatnonzero(keep)


def rasterise_nuclei(
    shape: tuple[int, int], candidates: NucleusCandidates, min_visible_area: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the candidates in order, earlier ones in front.

    Returns:
        label: (H, W) int32 instance map, ids 1..N contiguous.
        radial_position: (H, W) float32, distance from the centre relative to the boundary
            (0 at the centre, 1 at the edge) inside nuclei, 0 elsewhere.
        kept: (N,) int indices of the candidates drawn; label id k is candidate kept[k - 1].
    """
    label = np.zeros(shape, dtype=np.int32)
    radial_position = np.zeros(shape, dtype=np.float32)
    kept = []
    for index in range(len(candidates.radius)):
        window, relative_radius = nucleus_patch(shape, candidates, index)
        inside = relative_radius <= 1.0
        visible = inside & (label[window] == 0)
        if not np.array_equal(visible, inside):
            visible = largest_piece(visible)
        if np.count_nonzero(visible) < min_visible_area:
            continue
        kept.append(index)
        label[window][visible] = len(kept)
        radial_position[window][visible] = relative_radius[visible]
    return label, radial_position, np.asarray(kept, dtype=np.intp)


def nucleus_patch(
    shape: tuple[int, int], candidates: NucleusCandidates, index: int
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The bounding-box window of one nucleus and its relative radius there.

    Relative radius is the elliptic distance from the centre divided by the perturbed
    boundary radius at that angle: <= 1 inside. Returns ((slice_y, slice_x), (h, w) float64).
    """
    cy, cx = candidates.centre_y[index], candidates.centre_x[index]
    major = candidates.radius[index] / np.sqrt(candidates.axis_ratio[index])
    minor = candidates.radius[index] * np.sqrt(candidates.axis_ratio[index])
    amplitude, phase = candidates.harmonic_amplitude[index], candidates.harmonic_phase[index]
    reach = major * (1.0 + amplitude.sum()) + 1.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, shape[0])
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, shape[1])
    dy = np.arange(y0, y1)[:, None] - cy
    dx = np.arange(x0, x1)[None, :] - cx
    cos, sin = np.cos(candidates.angle[index]), np.sin(candidates.angle[index])
    elliptic = (dx * cos + dy * sin) / major + 1j * (dy * cos - dx * sin) / minor
    distance = np.abs(elliptic)
    direction = elliptic / np.maximum(distance, np.finfo(np.float64).tiny)  # exp(i * theta)
    coefficients = np.zeros(max(BOUNDARY_HARMONICS) + 1, dtype=np.complex128)
    coefficients[list(BOUNDARY_HARMONICS)] = amplitude * np.exp(1j * phase)
    boundary = 1.0 + np.polyval(coefficients[::-1], direction).real  # 1 + sum a_k cos(k theta + p_k)
    return (slice(y0, y1), slice(x0, x1)), distance / boundary


def largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean (h, w) mask (the mask itself if it has one)."""
    pieces, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return pieces == sizes.argmax()


def cellularity_grid(nuclei: NucleusCandidates, grid_shape: tuple[int, int], style: TileStyle) -> np.ndarray:
    """Smoothed fraction of area covered by nuclei on the coarse grid: (h, w) float32, ~0-1."""
    cell_y = np.clip((nuclei.centre_y // style.density_cell).astype(np.intp), 0, grid_shape[0] - 1)
    cell_x = np.clip((nuclei.centre_x // style.density_cell).astype(np.intp), 0, grid_shape[1] - 1)
    cells = np.ravel_multi_index((cell_y, cell_x), grid_shape)
    area = np.bincount(cells, weights=np.pi * nuclei.radius**2, minlength=grid_shape[0] * grid_shape[1])
    coverage = area.reshape(grid_shape).astype(np.float32) / style.density_cell**2
    return ndimage.gaussian_filter(coverage, style.cytoplasm_reach / style.density_cell)


def render_image(
    label: np.ndarray,
    radial_position: np.ndarray,
    nucleus_stain: np.ndarray,
    lumen: np.ndarray,
    cellularity: np.ndarray,
    rng: np.random.Generator,
    style: TileStyle,
) -> np.ndarray:
    """RGB image for a label map.

    Args:
        label: (H, W) int32 instance map.
        radial_position: (H, W) float32, 0 at nucleus centres, 1 at their boundary.
        nucleus_stain: (N,) float, hematoxylin amount of nucleus k + 1.
        lumen: (H, W) float32 in [0, 1], 1 where the tissue is empty.
        cellularity: (H, W) float32, local fraction of area covered by nuclei.

    Returns: (H, W, 3) uint8 RGB.
    """
    eosin_density, hematoxylin_density = stain_optical_densities(rng, style)
    outside = label == 0
    grain = fine_grain(label.shape, rng, style)
    eosin = stroma_eosin(lumen, cellularity, grain, rng, style) * outside
    hematoxylin = nucleus_hematoxylin(label, radial_position, nucleus_stain, grain, style)
    hematoxylin += style.cytoplasm_hematoxylin * np.minimum(cellularity, 1.0) * outside
    eosin = ndimage.gaussian_filter(eosin, style.blur_sigma)
    hematoxylin = ndimage.gaussian_filter(hematoxylin, style.blur_sigma)
    optical_density = eosin[..., None] * eosin_density + hematoxylin[..., None] * hematoxylin_density
    image = np.exp(-optical_density, out=optical_density)
    image *= RGB_MAX
    image += style.noise_std * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image, out=image), 0, RGB_MAX, out=image).astype(np.uint8)


def stain_optical_densities(rng: np.random.Generator, style: TileStyle) -> tuple[np.ndarray, np.ndarray]:
    """Optical density per unit eosin and per unit hematoxylin: two (3,) float32 arrays,
    each the style colour's density scaled by a per-tile factor (stain batch variation)."""
    eosin = -np.log(np.asarray(style.stroma_rgb) / RGB_MAX)
    hematoxylin = -np.log(np.asarray(style.nucleus_rgb) / RGB_MAX)
    scale = 1.0 + rng.uniform(-style.stain_jitter, style.stain_jitter, size=2)
    return (scale[0] * eosin).astype(np.float32), (scale[1] * hematoxylin).astype(np.float32)


def fine_grain(shape: tuple[int, int], rng: np.random.Generator, style: TileStyle) -> np.ndarray:
    """Zero-mean, unit-variance noise over ``style.grain_length`` pixels: (H, W) float32.

    One field serves as chromatin inside nuclei and as stroma grain outside them.
    """
    return standardise(ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), style.grain_length))


def stroma_eosin(
    lumen: np.ndarray, cellularity: np.ndarray, grain: np.ndarray, rng: np.random.Generator, style: TileStyle
) -> np.ndarray:
    """Eosin amount of the background: (H, W) float32 around 1.

    Low-frequency texture, fine grain and wavy fibrous streaks of random orientation;
    denser cytoplasm where nuclei are crowded; fading to ``lumen_residual_stain`` in lumen.
    """
    shape = lumen.shape
    texture = style.stroma_amplitude * smooth_noise(shape, style.stroma_correlation, style.density_cell, rng)
    streaks = style.streak_amplitude * fibrous_streaks(shape, rng, style)
    cytoplasm = style.cytoplasm_eosin * np.minimum(cellularity, 1.0)
    tissue = 1.0 - (1.0 - style.lumen_residual_stain) * lumen
    return np.clip(1.0 + texture + style.grain_amplitude * grain + streaks + cytoplasm, 0.0, None) * tissue


def fibrous_streaks(shape: tuple[int, int], rng: np.random.Generator, style: TileStyle) -> np.ndarray:
    """Wavy parallel streaks: (H, W) float32 in [-1, 1].

    A 1-D noise profile across a random direction, displaced by a smooth field so the
    streaks bend, and present only in patches where another smooth field is high.
    """
    angle = rng.uniform(0.0, np.pi)
    y, x = np.ogrid[: shape[0], : shape[1]]
    displacement = style.streak_waviness * smooth_noise(shape, style.stroma_correlation, style.density_cell, rng)
    across = (x * np.cos(angle) + y * np.sin(angle)).astype(np.float32) + displacement
    margin = shape[1] + 4.0 * style.streak_waviness  # exceeds -min(across): x * cos(angle) >= -width
    profile = ndimage.gaussian_filter1d(rng.standard_normal(int(np.hypot(*shape) + 2 * margin)), style.streak_spacing)
    profile = np.clip(standardise(profile), -2.0, 2.0) / 2.0
    streaks = np.interp(across + margin, np.arange(profile.size), profile).astype(np.float32)
    presence = smooth_noise(shape, style.streak_patch_correlation, style.density_cell, rng)
    return streaks * np.clip(presence - style.streak_patch_threshold, 0.0, 1.0)


def nucleus_hematoxylin(
    label: np.ndarray, radial_position: np.ndarray, nucleus_stain: np.ndarray, grain: np.ndarray, style: TileStyle
) -> np.ndarray:
    """Hematoxylin amount: (H, W) float32, per-nucleus stain times chromatin texture
    (from the unit-variance ``grain``), raised towards the boundary (rim), 0 outside nuclei."""
    per_pixel_stain = np.concatenate([[0.0], nucleus_stain]).astype(np.float32)[label]
    chromatin = np.clip(1.0 + style.chromatin_amplitude * grain, 0.0, None)
    rim = np.clip((radial_position - (1.0 - style.rim_width)) / style.rim_width, 0.0, 1.0)
    return per_pixel_stain * chromatin * (1.0 + style.rim_gain * rim)


def tile_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of tile ``index`` in a data set: child ``index`` of ``seed``'s SeedSequence,
    the same whatever the number of tiles (unlike the list ``[seed, index]``, which
    collides with ``seed`` when ``index`` is 0)."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def synthesize_dataset(
    out_dir: str | os.PathLike, n_tiles: int = 12, shape: tuple[int, int] = (1000, 1000), seed: int = 0
) -> list[str]:
    """Write a MoNuSeg-style folder of synthetic tiles; returns the stems written.

    ``out_dir/images/<stem>.tif``: (H, W, 3) uint8 RGB, zlib-compressed TIFF.
    ``out_dir/masks/<stem>.png``: (H, W) uint16 instance map.
    Stems are ``synthetic_000``, ``synthetic_001``, ...; tile k depends on (seed, k) only.
    """
    out_dir = Path(out_dir)
    stems = []
    for index in range(n_tiles):
        stem = f"synthetic_{index:03d}"
        image, label = synthesize_tile(shape, tile_seed(seed, index))
        write_tile(out_dir, stem, image, label)
        stems.append(stem)
    return stems


def write_tile(out_dir: Path, stem: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write one image (TIFF) and instance map (16-bit PNG) atomically."""
    if label.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{stem}: {label.max()} nuclei do not fit a uint16 mask")
    with atomic_path(out_dir / "images" / f"{stem}.tif") as tmp:
        tifffile.imwrite(tmp, image, photometric="rgb", compression="zlib")
    with atomic_path(out_dir / "masks" / f"{stem}.png") as tmp:
        Image.fromarray(label.astype(np.uint16)).save(tmp)
