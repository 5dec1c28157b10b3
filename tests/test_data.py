"""Readers and writers of bundle.data: real MoNuSeg files, and broken or unusual small files."""

import warnings
import xml.etree.ElementTree as StdlibElementTree

import nibabel
import numpy as np
import pytest
import tifffile
from bundle.data import (
    DataFileError,
    check_same_size,
    read_aperio_xml,
    read_image,
    read_label,
    write_image,
    write_label,
)
from PIL import Image

# Stems with XML: a plain one, one with a 2-vertex region, one whose mask has one nucleus fewer.
XML_STEMS = ["TCGA-21-5784-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1", "TCGA-AR-A1AK-01Z-00-DX1"]


def aperio_xml(*regions: list[tuple[str, str]]) -> str:
    """Aperio ImageScope XML text with one Region per list of (X, Y) attribute strings."""
    body = "".join(
        f'<Region Id="{i}"><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
        + "</Vertices></Region>"
        for i, vertices in enumerate(regions, 1)
    )
    return f'<Annotations><Annotation Id="1"><Regions>{body}</Regions></Annotation></Annotations>\n'


def square(low: float, high: float) -> list[tuple[str, str]]:
    """Axis-aligned square with XML corners ``low`` and ``high`` on both axes."""
    return [(str(low), str(low)), (str(high), str(low)), (str(high), str(high)), (str(low), str(high))]


def regions_with_vertices(xml_path) -> tuple[int, int]:
    """(all Region elements, those with at least 3 Vertex children), counted with the stdlib parser."""
    regions = StdlibElementTree.parse(xml_path).getroot().iter("Region")
    counts = [len(region.findall("Vertices/Vertex")) for region in regions]
    return len(counts), sum(n >= 3 for n in counts)


def ids_of(label: np.ndarray) -> set[int]:
    return set(np.unique(label).tolist()) - {0}


# ------------------------------------------------------------------ real MoNuSeg files


@pytest.mark.shared_data
@pytest.mark.parametrize("stem", XML_STEMS)
def test_real_xml_matches_region_count_and_mask(monuseg_train, stem):
    xml_path = monuseg_train / "annotations" / f"{stem}.xml"
    n_regions, n_usable = regions_with_vertices(xml_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label = read_aperio_xml(xml_path, (1000, 1000))
    mask = read_label(monuseg_train / "masks" / f"{stem}.png")

    assert label.shape == mask.shape == (1000, 1000)
    assert label.dtype == np.int32
    assert label.max() == n_usable and ids_of(label) == set(range(1, n_usable + 1))
    skipped = n_regions - n_usable
    assert [str(w.message) for w in caught] == (
        [
            f"{xml_path}: skipped {skipped} region(s) with fewer than 3 vertices or non-numeric/non-finite/out-of-range coordinates"
        ]
        if skipped
        else []
    )
    assert len(ids_of(mask)) in (n_usable, n_usable - 1)
    # The masks were rasterised with MATLAB's 1-based pixel centres; a 0-based fill
    # of the same XML reaches only 0.84-0.91 (a one-pixel diagonal shift).
    iou = np.logical_and(label > 0, mask > 0).sum() / np.logical_or(label > 0, mask > 0).sum()
    assert iou > 0.95


@pytest.mark.shared_data
def test_real_image_is_rgb_uint8_and_matches_pillow(monuseg_train):
    path = monuseg_train / "images" / f"{XML_STEMS[0]}.tif"
    image = read_image(path)
    assert image.shape == (1000, 1000, 3) and image.dtype == np.uint8
    with Image.open(path) as pil:
        np.testing.assert_array_equal(image, np.asarray(pil.convert("RGB")))


@pytest.mark.shared_data
def test_real_tiff_cut_in_half_is_refused(monuseg_train, tmp_path):
    data = (monuseg_train / "images" / f"{XML_STEMS[0]}.tif").read_bytes()
    broken = tmp_path / "cut.tif"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="cut.tif: TIFF holds no image"):
        read_image(broken)


# ------------------------------------------------------------------------ Aperio XML


def test_xml_regions_fill_one_based_pixel_centres(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(aperio_xml(square(1.5, 5.5)))
    expected = np.zeros((8, 8), np.int32)
    expected[1:5, 1:5] = 1
    np.testing.assert_array_equal(read_aperio_xml(path, (8, 8)), expected)


def test_xml_truncated_names_file_and_line(tmp_path):
    text = aperio_xml(square(1.5, 5.5), square(3.5, 7.5)).replace("><", ">\n<")
    path = tmp_path / "cut.xml"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DataFileError, match=r"cut\.xml: malformed XML at line \d+, column \d+"):
        read_aperio_xml(path, (10, 10))


def test_xml_skips_short_and_nan_regions_with_one_warning(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(
        aperio_xml(
            square(1.5, 3.5),
            [("1", "1"), ("5", "5")],
            [("1", "1"), ("nan", "5"), ("5", "5")],
            [("1", "1"), ("abc", "5"), ("5", "5")],
            square(5.5, 7.5),
        )
    )
    with pytest.warns(UserWarning) as caught:
        label = read_aperio_xml(path, (8, 8))
    assert len(caught) == 1
    assert str(caught[0].message).startswith(f"{path}: skipped 3 region(s)")
    assert ids_of(label) == {1, 2}
    assert label[1, 1] == 1 and label[5, 5] == 2


def test_xml_coordinates_outside_the_image_are_clipped(tmp_path):
    path = tmp_path / "edge.xml"
    path.write_text(aperio_xml(square(-10.5, 3.5), square(6.5, 100.5)))
    label = read_aperio_xml(path, (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[:3, :3] = 1
    expected[6:, 6:] = 2
    np.testing.assert_array_equal(label, expected)


def test_xml_overlap_goes_to_the_first_region(tmp_path):
    path = tmp_path / "overlap.xml"
    path.write_text(aperio_xml(square(1.5, 5.5), square(3.5, 7.5)))
    label = read_aperio_xml(path, (8, 8))
    expected = np.zeros((8, 8), np.int32)
    expected[3:7, 3:7] = 2
    expected[1:5, 1:5] = 1
    np.testing.assert_array_equal(label, expected)


def test_xml_entity_expansion_is_refused(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text('<!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]><Annotations>&y;</Annotations>')
    with pytest.raises(DataFileError, match="bomb.xml: forbidden XML"):
        read_aperio_xml(path, (4, 4))


# ----------------------------------------------------------------------------- images


def random_rgb(height: int = 6, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_image_write_read_round_trip(tmp_path, suffix):
    rgb = random_rgb()
    write_image(tmp_path / f"a{suffix}", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / f"a{suffix}"), rgb)
    assert [p.name for p in tmp_path.iterdir()] == [f"a{suffix}"]


def test_write_image_refuses_non_rgb_uint8(tmp_path):
    with pytest.raises(DataFileError, match="out.tif: expected an"):
        write_image(tmp_path / "out.tif", random_rgb().astype(np.float32))


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.dstack([random_rgb(), np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_grayscale_image_is_refused(tmp_path, suffix):
    path = tmp_path / f"gray{suffix}"
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(path)
    with pytest.raises(DataFileError, match=f"gray{suffix}: grayscale"):
        read_image(path)


def test_rgb16_tiff_is_rescaled_by_257(tmp_path):
    rgb = random_rgb()
    tifffile.imwrite(tmp_path / "a.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), rgb)
    values = np.array([0, 128, 129, 400, 65535], np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", np.repeat(values[None, :, None], 3, axis=2), photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif")[0, :, 0], [0, 0, 1, 2, 255])


def test_float_tiff_in_unit_range_is_scaled_and_outside_refused(tmp_path):
    rgb = random_rgb()
    tifffile.imwrite(tmp_path / "a.tif", rgb / 255.0, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), rgb)
    tifffile.imwrite(tmp_path / "b.tif", rgb * 1.0, photometric="rgb")
    with pytest.raises(DataFileError, match=r"b.tif: float image with values outside \[0, 1\]"):
        read_image(tmp_path / "b.tif")


def test_planar_tiff_is_returned_channels_last(tmp_path):
    rgb = random_rgb()
    tifffile.imwrite(tmp_path / "a.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), rgb)


def test_random_bytes_are_refused(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name in ("noise.tif", "noise.png"):
        (tmp_path / name).write_bytes(noise)
        with pytest.raises(DataFileError, match=f"{name}: cannot decode"):
            read_image(tmp_path / name)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_truncated_image_is_refused(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    write_image(whole, random_rgb(64, 64))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=f"cut{suffix}: cannot decode"):
        read_image(cut)


@pytest.mark.parametrize("reader", [read_image, read_label, lambda path: read_aperio_xml(path, (4, 4))])
def test_zero_byte_file_is_refused(tmp_path, reader):
    for name in ("empty.tif", "empty.png", "empty.xml"):
        (tmp_path / name).touch()
    name = {read_image: "empty.tif", read_label: "empty.png"}.get(reader, "empty.xml")
    with pytest.raises(DataFileError, match=f"{name}: empty file"):
        reader(tmp_path / name)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DataFileError, match="absent.tif: cannot read"):
        read_image(tmp_path / "absent.tif")


def test_tiff_header_claiming_huge_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, random_rgb(8, 8), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(100_000)
        tif.pages[0].tags["ImageLength"].overwrite(100_000)
    with pytest.raises(DataFileError, match="huge.tif: header claims 100000x100000 pixels"):
        read_image(path)


def test_png_over_max_pixels_is_refused(tmp_path):
    write_image(tmp_path / "a.png", random_rgb(6, 5))
    assert read_image(tmp_path / "a.png", max_pixels=30).shape == (6, 5, 3)
    with pytest.raises(DataFileError, match="a.png: header claims 6x5 pixels, more than the limit of 29"):
        read_image(tmp_path / "a.png", max_pixels=29)


# ------------------------------------------------------------------------ label maps

LABEL_CASES = [(np.uint8, 200), (np.uint16, 60000), (np.uint32, 70000), (np.int64, 70000)]


def sparse_label(dtype, top: int) -> np.ndarray:
    """(5, 7) map with non-contiguous ids {0, 3, top}; H != W catches transposition."""
    label = np.zeros((5, 7), dtype)
    label[1:3, 1:4] = 3
    label[3:, 4:] = top
    return label


def save_raw(path, label: np.ndarray) -> None:
    """Store ``label`` in its own dtype, without bundle.data (NIfTI as (x, y) = transposed)."""
    suffix = "".join(path.suffixes)
    if suffix == ".png":
        Image.fromarray(label).save(path)
    elif suffix == ".tif":
        tifffile.imwrite(path, label)
    elif suffix == ".npy":
        np.save(path, label)
    else:
        nibabel.save(nibabel.Nifti1Image(label.T, np.eye(4), dtype=label.dtype), path)


@pytest.mark.parametrize(
    "suffix,dtype,top",
    [
        (suffix, dtype, top)
        for suffix in (".png", ".tif", ".nii.gz", ".npy")
        for dtype, top in LABEL_CASES
        if suffix != ".png" or top < 2**16  # PNG holds at most 16 bits
    ],
)
def test_label_files_read_as_int32_and_round_trip(tmp_path, suffix, dtype, top):
    label = sparse_label(dtype, top)
    save_raw(tmp_path / f"raw{suffix}", label)
    read = read_label(tmp_path / f"raw{suffix}")
    assert read.dtype == np.int32
    np.testing.assert_array_equal(read, label)

    write_label(tmp_path / f"out{suffix}", read)
    np.testing.assert_array_equal(read_label(tmp_path / f"out{suffix}"), label)


@pytest.mark.parametrize("top,stored", [(65535, np.uint16), (65536, np.uint32)])
def test_write_label_stores_uint16_or_uint32(tmp_path, top, stored):
    write_label(tmp_path / "a.tif", sparse_label(np.int64, top))
    assert tifffile.imread(tmp_path / "a.tif").dtype == stored


def test_write_label_png_refuses_ids_over_16_bits(tmp_path):
    with pytest.raises(DataFileError, match="a.png: PNG holds ids up to 65535"):
        write_label(tmp_path / "a.png", sparse_label(np.int64, 70000))


def test_label_with_ids_over_int32_reads_as_int64(tmp_path):
    label = sparse_label(np.int64, 2**40)
    np.save(tmp_path / "a.npy", label)
    read = read_label(tmp_path / "a.npy")
    assert read.dtype == np.int64
    np.testing.assert_array_equal(read, label)


def test_nifti_is_stored_x_y_and_squeezed(tmp_path):
    label = sparse_label(np.uint16, 9)
    write_label(tmp_path / "a.nii.gz", label)
    assert nibabel.load(tmp_path / "a.nii.gz").shape == (7, 5)
    nibabel.save(nibabel.Nifti1Image(label.T[..., None], np.eye(4)), tmp_path / "b.nii")
    np.testing.assert_array_equal(read_label(tmp_path / "b.nii"), label)


def test_nifti_and_png_load_alike_in_monai(tmp_path):
    from monai.transforms import LoadImage

    label = sparse_label(np.uint16, 9)
    write_label(tmp_path / "a.png", label)
    write_label(tmp_path / "a.nii.gz", label)
    load = LoadImage(image_only=True)
    np.testing.assert_array_equal(np.asarray(load(tmp_path / "a.png")), np.asarray(load(tmp_path / "a.nii.gz")))


def test_float_label_with_whole_numbers_is_accepted(tmp_path):
    label = sparse_label(np.float32, 9)
    np.save(tmp_path / "a.npy", label)
    np.testing.assert_array_equal(read_label(tmp_path / "a.npy"), label.astype(np.int32))


@pytest.mark.parametrize(
    "array,problem",
    [
        (sparse_label(np.float32, 9) + 0.5, "float label map with non-integer values"),
        (np.full((5, 7), np.nan, np.float32), "float label map with non-integer values"),
        (sparse_label(np.int16, -1), r"negative ids in label map \(min -1\)"),
        (np.zeros((2, 5, 7), np.uint8), r"label map must be 2-D"),
        (np.zeros((5, 7), "U1"), "label map has non-numeric dtype"),
    ],
)
def test_bad_label_maps_are_refused(tmp_path, array, problem):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataFileError, match=f"bad.npy: {problem}"):
        read_label(tmp_path / "bad.npy")
    with pytest.raises(DataFileError, match=f"out.tif: {problem}"):
        write_label(tmp_path / "out.tif", array)


def test_rgb_png_is_not_a_label_map(tmp_path):
    write_image(tmp_path / "rgb.png", random_rgb())
    with pytest.raises(DataFileError, match=r"rgb.png: label map must be 2-D.*\(6, 5, 3\)"):
        read_label(tmp_path / "rgb.png")


def test_corrupt_label_file_is_refused(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataFileError, match="bad.nii.gz: cannot decode"):
        read_label(tmp_path / "bad.nii.gz")


def test_check_same_size_names_both_files():
    check_same_size("img.tif", np.zeros((4, 5, 3)), "lab.tif", np.zeros((4, 5)))
    with pytest.raises(DataFileError, match=r"img.tif: image is 4x5 but its label lab.tif is 5x4"):
        check_same_size("img.tif", np.zeros((4, 5, 3)), "lab.tif", np.zeros((5, 4)))
