"""Train/validation splits, nested label fractions and MONAI-style datalists.

A datalist is a JSON dict of lists of items ``{"image": "images/<stem>.tif",
"label": "labels/<stem>.tif", "label_source": "xml" | "geojson" | "mask"}`` with paths relative to
the datalist's folder, readable by ``monai.data.load_decathlon_datalist(path,
data_list_key=key, base_dir=folder)``. Keys: ``training``, ``validation``, ``test``
(when given), ``unlabelled`` (when given), and ``training_<percent>`` for each label
fraction, plus the metadata ``seed``, ``val_fraction`` and ``label_fractions``.
"""

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from bundle.data import IMAGE_SUFFIXES, LABEL_SUFFIXES, DataFileError, stem_of, suffix_of

DEFAULT_LABEL_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 1.0)
ANNOTATION_SUFFIXES = (*LABEL_SUFFIXES, ".xml", ".geojson")

logger = logging.getLogger(__name__)


class Pairing(NamedTuple):
    """Files of an image folder matched by stem with those of a label folder."""

    pairs: dict[str, tuple[Path, Path]]
    """stem -> (image path, label path), sorted by stem."""
    images_without_label: list[Path]
    labels_without_image: list[Path]
    ignored_files: list[Path]
    """Non-hidden files of either folder whose suffix is not an accepted one."""


def round_half_up(value: float) -> int:
    """Nearest integer, halves rounded up (``round`` would send 2.5 to 2)."""
    return math.floor(value + 0.5)


def split_train_val(stems: Iterable[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split ``stems`` into disjoint (train, val) lists, deterministically for a given ``seed``.

    The result does not depend on the input order (stems are sorted first, then permuted
    with ``numpy.random.default_rng(seed)``). Validation gets ``round(n * val_fraction)``
    stems (halves up), at least 1 when n >= 2 and at most n - 1; it is returned sorted.
    The training list keeps the seeded random order, which defines the nested label
    fractions of :func:`label_fraction_subset`.
    """
    ordered = sorted(stems)
    if not ordered:
        raise ValueError("no stems to split")
    if len(set(ordered)) != len(ordered):
        raise ValueError("stems must be unique")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(ordered)
    n_val = min(max(1, round_half_up(n * val_fraction)), n - 1)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(n)]
    return shuffled[n_val:], sorted(shuffled[:n_val])


def label_fraction_subset(train_items: Sequence, fraction: float, seed: int | None = None) -> list:
    """``max(1, round(fraction * n))`` of ``train_items`` (halves up), nested across fractions.

    ``seed`` None takes the first items (the datalist's own seeded order, see
    :func:`split_train_val`). An integer draws them with ``numpy.random.default_rng(seed)``:
    the first items of one permutation, so subsets stay nested across fractions for one seed
    and differ between seeds; they are returned in the list's order, so at fraction 1 the
    list is unchanged.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    size = max(1, round_half_up(fraction * len(train_items)))
    if seed is None:
        subset = list(train_items[:size])
    else:
        chosen = np.random.default_rng(seed).permutation(len(train_items))[:size]
        subset = [train_items[i] for i in sorted(chosen)]
    logger.info("label fraction %g: %d of %d training items (seed %s)", fraction, len(subset), len(train_items), seed)
    return subset


def fraction_key(fraction: float) -> str:
    """Datalist key of a label fraction: 0.1 -> ``"training_10"``; whole percents only."""
    percent = fraction * 100
    if abs(percent - round(percent)) > 1e-9:
        raise ValueError(f"label fraction {fraction} is not a whole percent")
    return f"training_{round(percent)}"


def datalist_item(stem: str, label_source: str | None = None) -> dict:
    """Item for ``images/<stem>.tif``, with ``labels/<stem>.tif`` when ``label_source`` is given."""
    item = {"image": f"images/{stem}.tif"}
    if label_source is not None:
        item |= {"label": f"labels/{stem}.tif", "label_source": label_source}
    return item


def build_datalist(
    train_items: Sequence[dict],
    val_items: Sequence[dict],
    *,
    seed: int,
    val_fraction: float,
    label_fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
    test_items: Sequence[dict] | None = None,
    unlabelled_items: Sequence[dict] | None = None,
) -> dict:
    """Assemble the datalist dict; ``train_items`` in the seeded order of :func:`split_train_val`.

    ``training_<percent>`` holds :func:`label_fraction_subset` of ``train_items`` for each
    fraction; ``test`` and ``unlabelled`` appear only when given.
    """
    keys = [fraction_key(f) for f in label_fractions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"label fractions {tuple(label_fractions)} repeat a percent")
    datalist = {
        "seed": seed,
        "val_fraction": val_fraction,
        "label_fractions": list(label_fractions),
        "training": list(train_items),
        "validation": list(val_items),
    }
    if test_items is not None:
        datalist["test"] = list(test_items)
    if unlabelled_items is not None:
        datalist["unlabelled"] = list(unlabelled_items)
    for key, fraction in zip(keys, label_fractions):
        datalist[key] = label_fraction_subset(train_items, fraction)
    return datalist


def pair_images_and_labels(
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    label_suffixes: Sequence[str] = ANNOTATION_SUFFIXES,
) -> Pairing:
    """Match files of ``image_dir`` and ``label_dir`` by stem (``.nii.gz`` counts as one suffix).

    Only files with the given (lower-case) suffixes are paired; hidden files (``.*``) are
    skipped. Unmatched files and files with other suffixes are returned, never dropped
    silently, so the caller can report them.

    Raises:
        DataFileError: a folder is missing, or two files in one folder share a stem.
    """
    images, ignored_images = _files_by_stem(Path(image_dir), image_suffixes)
    labels, ignored_labels = _files_by_stem(Path(label_dir), label_suffixes)
    return Pairing(
        pairs={stem: (images[stem], labels[stem]) for stem in sorted(images.keys() & labels.keys())},
        images_without_label=[images[stem] for stem in sorted(images.keys() - labels.keys())],
        labels_without_image=[labels[stem] for stem in sorted(labels.keys() - images.keys())],
        ignored_files=ignored_images + ignored_labels,
    )


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> tuple[dict[str, Path], list[Path]]:
    """(stem -> file with one of ``suffixes``, other files) over the non-hidden files of ``folder``."""
    if not folder.is_dir():
        raise DataFileError(folder, "folder not found")
    found: dict[str, Path] = {}
    by_folded_stem: dict[str, Path] = {}  # X.tif and x.TIF collide on case-insensitive file systems
    ignored: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not (
            path.is_file() or path.is_symlink()
        ):  # a broken link is read, and reported, later
            continue
        if suffix_of(path) not in suffixes:
            ignored.append(path)
            continue
        stem = stem_of(path)
        if stem.casefold() in by_folded_stem:
            raise DataFileError(
                path, f"shares its stem with {by_folded_stem[stem.casefold()]} (ignoring case); keep one"
            )
        found[stem] = by_folded_stem[stem.casefold()] = path
    return found, ignored
