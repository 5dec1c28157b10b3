"""Dataset preparation: discover a MoNuSeg-style folder, plan the split, convert the files.

The command line is ``scripts/prepare.py`` (``prepare`` and ``summarize``). :func:`prepare`
reads ``<src>/images/`` with ``<src>/annotations/`` (Aperio XML ``.xml`` or QuPath GeoJSON
``.geojson`` outlines) and/or ``<src>/masks/`` (instance label maps) and writes, under ``out``:

- ``images/<stem>.tif``: RGB uint8 (zlib TIFF), normalised by ``bundle.data.read_image``;
- ``labels/<stem>.tif``: instance label map (uint16/uint32 zlib TIFF);
- ``datalist.json``: the seeded train/validation split, nested label fractions
  (``training_10`` ... ``training_100``), the optional ``test`` list and, with
  ``--allow_unlabelled``, an ``unlabelled`` list; each labelled item records its
  ``label_source`` (``"xml"``, ``"geojson"`` or ``"mask"``).

Exit status 1, with every problem printed to stderr, when: an image has no label (unless
``--allow_unlabelled``), a label has no image, a file cannot be read, or an image and
its label differ in size. Unreadable files do not stop the others from being checked,
but no ``datalist.json`` is written then, and the one of an earlier run is removed,
since it could pair with the tiles this run has rewritten.
"""

import json
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

import numpy as np
from bundle.atomic import atomic_path
from bundle.data import (
    MAX_PIXELS,
    DataFileError,
    check_same_size,
    read_aperio_xml,
    read_image,
    read_label,
    stem_of,
    suffix_of,
    write_image,
    write_label,
)
from bundle.datalist import (
    DEFAULT_LABEL_FRACTIONS,
    build_datalist,
    datalist_item,
    pair_images_and_labels,
    split_train_val,
)
from bundle.qupath import read_qupath_geojson

#: Kind of label -> sub-folder of ``src`` holding such labels ("xml": drawn outlines, Aperio XML or QuPath GeoJSON).
LABEL_FOLDERS = {"xml": "annotations", "mask": "masks"}
#: ``--labels`` value -> label kinds to use, the first available one per stem winning.
LABEL_POLICIES = {"auto": ("xml", "mask"), "xml": ("xml",), "masks": ("mask",)}
#: ``label_source`` of an outline file (by suffix) -> its reader; other files in annotations/ are label maps.
VECTOR_READERS = {"xml": read_aperio_xml, "geojson": read_qupath_geojson}
DATALIST_NAME = "datalist.json"


@dataclass(frozen=True)
class Source:
    """One input tile: its image and, when labelled, its label file and kind (``"xml"``/``"mask"``)."""

    stem: str
    image: Path
    label: Path | None = None
    label_source: str | None = None
    mask_beside_annotation: Path | None = None
    """The mask of a stem whose XML is used: compared with it when converting."""


@dataclass(frozen=True)
class Inventory:
    """What a source folder holds: tiles (labelled or not) and files that pair with nothing."""

    sources: list[Source]
    labels_without_image: list[Path]
    ignored_files: list[Path]

    @property
    def labelled(self) -> list[Source]:
        return [s for s in self.sources if s.label is not None]

    @property
    def unlabelled(self) -> list[Source]:
        return [s for s in self.sources if s.label is None]


def prepare(
    src: str,
    out: str,
    test_src: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_LABEL_FRACTIONS,
    labels: str = "auto",
    allow_unlabelled: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> str:
    """Convert ``src`` (and ``test_src``) into ``out``; return the path of the datalist written.

    Args:
        src: folder with ``images/`` and ``annotations/`` and/or ``masks/``; split into
            training and validation.
        out: output folder (created; files of earlier runs are replaced atomically).
        test_src: optional folder of the same layout, listed whole under ``test``;
            every test image needs a label.
        val_fraction: share of the labelled ``src`` tiles used for validation.
        seed: seed of the split and of the training order behind the label fractions.
        fractions: label fractions of the training list, each a whole percent.
        labels: ``"auto"`` (the XML where a stem has one, since it is the ground truth,
            else the mask), ``"xml"`` or ``"masks"`` (only that kind).
        allow_unlabelled: list ``src`` images without a label under ``unlabelled``
            (for self-supervised pretraining) instead of failing. Labels without an
            image always fail: they point to a misnamed file.
        max_pixels: refuse an image or label file whose header claims more pixels
            (values) than this, before decoding it (default 2**28).
    """
    if labels not in LABEL_POLICIES:
        raise ValueError(f"labels must be one of {sorted(LABEL_POLICIES)}, got {labels!r}")
    fractions = _as_fractions(fractions)
    out = Path(out)
    overlaps = output_overlaps(out, [Path(src)] + ([Path(test_src)] if test_src is not None else []))
    if overlaps:
        _fail(overlaps)
    try:
        train_inventory = find_sources(Path(src), labels)
        test_inventory = find_sources(Path(test_src), labels) if test_src is not None else None
    except DataFileError as err:
        _fail([str(err)])
    _report_ignored(train_inventory, test_inventory)
    problems = pairing_problems(train_inventory, test_inventory, allow_unlabelled)
    if problems:
        _fail(problems)

    datalist = plan_datalist(train_inventory, test_inventory, val_fraction, seed, fractions, allow_unlabelled)
    test_sources = test_inventory.sources if test_inventory is not None else []
    failures = convert_all([*train_inventory.sources, *test_sources], out, max_pixels)
    datalist_path = out / DATALIST_NAME
    if failures:
        _fail(failures, stale_datalist=datalist_path)
    with atomic_path(datalist_path) as tmp:
        tmp.write_text(json.dumps(datalist, indent=2) + "\n")
    _print_outcome(datalist, datalist_path)
    return str(datalist_path)


def output_overlaps(out: Path, inputs: list[Path]) -> list[str]:
    """Messages for each input folder that ``out`` is, lies in, or holds: writing there could replace an input."""
    target = out.resolve()
    problems = []
    for folder in inputs:
        source = folder.resolve()
        if target == source or source in target.parents or target in source.parents:
            problems.append(
                f"{out}: the output folder overlaps the input folder {folder}; "
                "choose an output folder outside it (inputs are never written over)"
            )
    return problems


def find_sources(folder: Path, labels: str) -> Inventory:
    """Pair ``folder/images`` with the label folders of policy ``labels`` (see LABEL_POLICIES).

    Under ``"auto"`` a missing label folder is skipped (at least one must exist).
    """
    kinds = [k for k in LABEL_POLICIES[labels] if labels != "auto" or (folder / LABEL_FOLDERS[k]).is_dir()]
    if not kinds:
        raise DataFileError(folder, f"neither {LABEL_FOLDERS['xml']}/ nor {LABEL_FOLDERS['mask']}/ found")
    labelled: dict[str, Source] = {}
    images: dict[str, Path] = {}
    labels_without_image: list[Path] = []
    ignored: list[Path] = []
    for kind in kinds:
        pairing = pair_images_and_labels(folder / "images", folder / LABEL_FOLDERS[kind])
        for stem, (image, label) in pairing.pairs.items():
            source_kind = (
                "mask" if kind == "mask" else {".xml": "xml", ".geojson": "geojson"}.get(suffix_of(label), "mask")
            )
            first = labelled.setdefault(stem, Source(stem, image, label, source_kind))
            if first.label_source in VECTOR_READERS and kind == "mask":
                labelled[stem] = replace(first, mask_beside_annotation=label)
            images[stem] = image
        images |= {stem_of(image): image for image in pairing.images_without_label}
        labels_without_image += pairing.labels_without_image
        ignored += pairing.ignored_files
    sources = [labelled.get(stem, Source(stem, image)) for stem, image in sorted(images.items())]
    return Inventory(sources, labels_without_image, list(dict.fromkeys(ignored)))


def pairing_problems(train: Inventory, test: Inventory | None, allow_unlabelled: bool) -> list[str]:
    """Messages for files that pair with nothing and stems shared by ``src`` and ``test_src``."""
    problems = []
    if train.unlabelled and not allow_unlabelled:
        problems.append(
            _listing(f"{len(train.unlabelled)} image(s) without a label", [s.image for s in train.unlabelled])
            + "\n  (rerun with --allow_unlabelled to list them under 'unlabelled' for pretraining)"
        )
    if not train.labelled:
        problems.append("no labelled image in src: nothing to train or validate on")
    for inventory in (train, test):
        if inventory is not None and inventory.labels_without_image:
            paths = inventory.labels_without_image
            problems.append(_listing(f"{len(paths)} label(s) without an image (misnamed?)", paths))
    if test is not None:
        if test.unlabelled:
            problems.append(_listing("test image(s) without a label", [s.image for s in test.unlabelled]))
        shared = sorted({s.stem for s in train.sources} & {s.stem for s in test.sources})
        if shared:
            problems.append(_listing("stem(s) in both src and test_src", shared))
    return problems


def plan_datalist(
    train: Inventory,
    test: Inventory | None,
    val_fraction: float,
    seed: int,
    fractions: Sequence[float],
    allow_unlabelled: bool,
) -> dict:
    """The datalist of the tiles :func:`convert` will write (built first: bad arguments fail early)."""
    train_stems, val_stems = split_train_val([s.stem for s in train.labelled], val_fraction, seed)
    sources = {s.stem: s for s in train.sources}
    return build_datalist(
        [datalist_item(stem, sources[stem].label_source) for stem in train_stems],
        [datalist_item(stem, sources[stem].label_source) for stem in val_stems],
        seed=seed,
        val_fraction=val_fraction,
        label_fractions=fractions,
        test_items=[datalist_item(s.stem, s.label_source) for s in test.sources] if test is not None else None,
        unlabelled_items=[datalist_item(s.stem) for s in train.unlabelled] if allow_unlabelled else None,
    )


def convert_all(sources: Iterable[Source], out: Path, max_pixels: int = MAX_PIXELS) -> list[str]:
    """Convert every source, carrying on past unreadable files; return their error messages."""
    failures = []
    for source in sources:
        try:
            convert(source, out, max_pixels)
        except DataFileError as err:
            failures.append(str(err))
    return failures


def convert(source: Source, out: Path, max_pixels: int = MAX_PIXELS) -> None:
    """Write ``out/images/<stem>.tif`` and, when labelled, ``out/labels/<stem>.tif``."""
    image = read_image(source.image, max_pixels)
    if source.label is not None:
        if source.label_source in VECTOR_READERS:
            label = VECTOR_READERS[source.label_source](source.label, image.shape[:2])
            if source.mask_beside_annotation is not None:
                warn_if_they_disagree(
                    source.label,
                    label,
                    source.mask_beside_annotation,
                    read_label(source.mask_beside_annotation, max_pixels),
                )
        else:
            label = read_label(source.label, max_pixels)
        check_same_size(source.image, image, source.label, label)
        write_label(out / "labels" / f"{source.stem}.tif", label)
    write_image(out / "images" / f"{source.stem}.tif", image)


def warn_if_they_disagree(xml: Path, xml_label: np.ndarray, mask: Path, mask_label: np.ndarray) -> None:
    """Warn when the XML used and the mask beside it count nuclei very differently (an empty or
    wrong XML would otherwise win silently). On MoNuSeg the two agree within a few nuclei."""
    n_xml, n_mask = len(np.unique(xml_label[xml_label > 0])), len(np.unique(mask_label[mask_label > 0]))
    if abs(n_xml - n_mask) > max(2, 0.2 * max(n_xml, n_mask)):
        warnings.warn(
            f"{xml}: {n_xml} nuclei, but the mask beside it ({mask}) has {n_mask}; the XML is used "
            "(rerun with --labels masks to use the masks)",
            stacklevel=2,
        )


def summarize(datalist: str) -> None:
    """Print per split: images, tile sizes, nuclei per image (min/median/max), mean nucleus area."""
    path = Path(datalist)
    content = json.loads(path.read_text())
    stats_cache: dict[Path, tuple[tuple[int, int], int | None, int | None]] = {}
    print(f"{'split':<14} {'images':>6}  {'tile sizes':<22} {'nuclei/image min/median/max':<28} {'mean area px':>12}")
    for key, items in item_lists(content):
        stats = [_item_stats(item, path.parent, stats_cache) for item in items]
        print(_summary_row(key, stats))


def item_lists(datalist: dict) -> list[tuple[str, list[dict]]]:
    """The (key, items) entries of a datalist, in file order, leaving out the metadata."""
    return [
        (key, value)
        for key, value in datalist.items()
        if isinstance(value, list) and all(isinstance(item, dict) for item in value)
    ]


def _item_stats(item: dict, base: Path, cache: dict) -> tuple[tuple[int, int], int | None, int | None]:
    """(tile H, W), nuclei count, foreground pixels of one item (counts None when unlabelled)."""
    key = base / item.get("label", item["image"])
    if key not in cache:
        if "label" in item:
            label = read_label(key)
            cache[key] = (label.shape, int(np.count_nonzero(np.unique(label))), int(np.count_nonzero(label)))
        else:
            cache[key] = (read_image(key).shape[:2], None, None)
    return cache[key]


def _summary_row(key: str, stats: list[tuple[tuple[int, int], int | None, int | None]]) -> str:
    sizes = ", ".join(f"{h}x{w}" for h, w in sorted({shape for shape, _, _ in stats}))
    counts = [n for _, n, _ in stats if n is not None]
    if counts:
        nuclei = f"{min(counts)}/{np.median(counts):g}/{max(counts)}"
        area = f"{sum(a for _, _, a in stats if a is not None) / max(1, sum(counts)):.1f}"
    else:
        nuclei, area = "-", "-"
    return f"{key:<14} {len(stats):>6}  {sizes or '-':<22} {nuclei:<28} {area:>12}"


def _as_fractions(fractions: float | Sequence[float]) -> tuple[float, ...]:
    """Fire passes ``--fractions=0.1,0.5`` as a tuple and ``--fractions=0.5`` as a float."""
    return (float(fractions),) if isinstance(fractions, (int, float)) else tuple(float(f) for f in fractions)


def _listing(title: str, entries: Iterable) -> str:
    return title + ":\n" + "\n".join(f"  {entry}" for entry in entries)


def _report_ignored(*inventories: Inventory | None) -> None:
    ignored = [p for inv in inventories if inv is not None for p in inv.ignored_files]
    if ignored:
        print(_listing("prepare: ignored (not an image or label suffix)", ignored), file=sys.stderr)


class PreparationError(ValueError):
    """``prepare`` refused its input: ``problems`` lists one line per bad file or setting.

    Nothing was written that could be mistaken for a result: no datalist (an earlier one,
    which could pair with rewritten tiles, is removed).
    """

    def __init__(self, problems: list[str], removed_datalist: Path | None = None):
        super().__init__(problems, removed_datalist)
        self.problems, self.removed_datalist = problems, removed_datalist

    def __str__(self) -> str:
        lines = [f"prepare: {len(self.problems)} problem(s); no datalist written.", *(f"- {m}" for m in self.problems)]
        if self.removed_datalist is not None:
            lines.append(f"prepare: removed the earlier {self.removed_datalist}, which could pair with rewritten tiles")
        return "\n".join(lines)


def _fail(messages: list[str], stale_datalist: Path | None = None) -> NoReturn:
    """Remove ``stale_datalist`` when it exists, and raise :class:`PreparationError` listing ``messages``."""
    removed = None
    if stale_datalist is not None and stale_datalist.exists():
        stale_datalist.unlink()
        removed = stale_datalist
    raise PreparationError(messages, removed)


def _print_outcome(datalist: dict, path: Path) -> None:
    items = [*datalist["training"], *datalist["validation"], *datalist.get("test", [])]
    sources = {kind: sum(item["label_source"] == kind for item in items) for kind in ("xml", "geojson", "mask")}
    print(
        f"prepare: {len(items)} labelled tile(s) ({sources['xml']} labels from XML, "
        + (f"{sources['geojson']} from QuPath GeoJSON, " if sources["geojson"] else "")
        + f"{sources['mask']} from masks)"
        f" + {len(datalist.get('unlabelled', []))} unlabelled -> {path.parent}"
    )
    print("prepare: " + ", ".join(f"{key} {len(items)}" for key, items in item_lists(datalist)))
