"""Where workflows find their images: datalists, folders, one tile, and the errors that explain a wrong source."""

import json

import numpy as np
import pytest
from bundle.data import write_image
from bundle.sources import image_items


def test_one_tile_is_a_source(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert image_items(tmp_path / "a.png", ["test"]) == [{"image": str(tmp_path / "a.png")}]


def test_a_datalist_without_the_sections_asked_for_lists_the_ones_it_has(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "a.tif"}] * 3, "validation": [{"image": "b.tif"}], "test": []}))
    with pytest.raises(FileNotFoundError) as error:
        image_items(tmp_path, ["test"])
    assert str(error.value) == (
        f"{path}: no images in section(s) test; it has training (3), validation (1) "
        "(choose with --sections, e.g. --sections \"['validation']\")"
    )


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\xff\xfe binary", b"[1, 2]", b"{not json"])
def test_a_file_that_is_not_a_datalist_is_explained(tmp_path, content):
    path = tmp_path / "slide.svs"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"slide\.svs: not a (readable datalist JSON|datalist)"):
        image_items(path, ["test"])
