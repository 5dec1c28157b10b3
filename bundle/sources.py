"""Where workflows find their images: a datalist JSON, a prepared folder, or any folder of tiles."""

import json
from pathlib import Path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Datalist sections whose images pretraining may use. Validation and test images are left
# out so that no evaluation tile is seen, even without its label, before it is scored.
PRETRAINING_SECTIONS = ("training", "unlabelled")


def _items_from_datalist(path: Path, sections: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        datalist = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path}: not a readable datalist JSON ({error}); give a datalist, a folder of tiles, "
            f"or one tile ({', '.join(IMAGE_SUFFIXES)})"
        ) from None
    if not isinstance(datalist, dict):
        raise ValueError(f'{path}: not a datalist (a JSON object of sections, e.g. {{"test": [{{"image": ...}}]}})')
    items = [item for section in sections for item in datalist.get(section, [])]
    if not items:
        present = {name: len(value) for name, value in datalist.items() if isinstance(value, list) and value}
        raise FileNotFoundError(
            f"{path}: no images in section(s) {', '.join(sections)}; it has "
            + (", ".join(f"{name} ({count})" for name, count in present.items()) or "no non-empty section")
            + " (choose with --sections, e.g. --sections \"['validation']\")"
        )
    return [{"image": str((path.parent / item["image"]).resolve())} for item in items]


def _items_from_folder(folder: Path) -> list[dict[str, str]]:
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    # a link that does not resolve is kept, so that the tile screen lists it as unreadable
    files = sorted(
        p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink())
    )
    return [{"image": str(p.resolve() if p.exists() else p.absolute())} for p in files]


def image_items(source: str | Path, sections: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """``[{"image": absolute path}, ...]``; labels are not needed.

    ``source`` may be a datalist JSON or a folder holding ``datalist.json`` (the images
    of its ``sections`` are used; none there is an error listing the sections it has), a
    folder with an ``images/`` subfolder, a plain folder of TIFF/PNG/JPEG tiles (every
    tile), or one tile.
    """
    source, sections = Path(source), tuple(sections)
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        items = [{"image": str(source.resolve())}]  # one tile
    elif source.is_file():
        items = _items_from_datalist(source, sections)
    elif (source / "datalist.json").is_file():
        items = _items_from_datalist(source / "datalist.json", sections)
    elif source.is_dir():
        items = _items_from_folder(source)
    else:
        raise FileNotFoundError(f"{source}: no such datalist or folder")
    if not items:
        raise FileNotFoundError(f"{source}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return items


def pretraining_items(dataset_dir: str | Path) -> list[dict[str, str]]:
    """Images for self-supervised pretraining: :func:`image_items` of the training and unlabelled sections."""
    return image_items(dataset_dir, PRETRAINING_SECTIONS)
