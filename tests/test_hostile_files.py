"""Hostile and broken inputs (what tests/test_data.py does not already cover) and checkpoints as data.

Each refusal is a ``DataFileError`` (or ``ValueError``) naming the file; the command-line
paths (scripts/prepare.py, tile inference) report one line per bad file, carry on with the
others, exit non-zero and print no traceback. Claims of huge shapes are refused before any
allocation; the default-limit cases run in a subprocess capped at 3 GiB of address space,
so that a regression fails there instead of exhausting this machine's memory.
"""

import gzip
import io
import math
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
import torch
from bundle.checkpoints import CheckedCheckpointLoader, load_network_weights
from bundle.data import DataFileError, read_aperio_xml, read_image, read_label, write_image, write_label
from bundle.density import load_network
from bundle.inference import SaveNucleiOutputsd, TileScreen
from bundle.initialization import load_weights
from bundle.networks import TripletEncoderNet, segmentation_unet
from bundle.runner import bundle_run_command
from bundle_runner import single_thread_env
from conftest import REPO_ROOT
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

PREPARE_SCRIPT = REPO_ROOT / "scripts" / "prepare.py"
HUGE = 100_000


def random_rgb(height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_claiming(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` and whose only IDAT holds 100 zero bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
    )


def tiff_claiming(path: Path, height: int, width: int, rgb: bool) -> None:
    """An 8x8 TIFF whose ImageLength/ImageWidth tags are overwritten to ``height`` x ``width``."""
    data = random_rgb(8, 8) if rgb else np.ones((8, 8), np.uint16)
    tifffile.imwrite(path, data, photometric="rgb" if rgb else None)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)


def npy_claiming(path: Path, shape: tuple[int, ...]) -> None:
    """An .npy whose header claims ``shape`` (uint16) followed by 128 bytes of data."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<u2", "fortran_order": False, "shape": shape})
        file.write(bytes(128))


def nifti_claiming(path: Path, shape: tuple[int, ...]) -> None:
    """A NIfTI (.nii, or gzipped when the name ends in .gz) whose header claims ``shape``, with 128 bytes of data."""
    header = nibabel.Nifti1Header.from_fileobj(
        io.BytesIO(nibabel.Nifti1Image(np.zeros((8, 8), np.uint16), np.eye(4)).to_bytes())
    )
    header.set_data_shape(shape)
    data = header.binaryblock + bytes(4) + bytes(128)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def hostile_label(path: Path, claim: tuple[int, int]) -> None:
    """A label file of ``path``'s format claiming ``claim`` (NIfTI dims are int16: a third axis makes up the size)."""
    name = path.name
    if name.endswith(".tif"):
        tiff_claiming(path, *claim, rgb=False)
    elif name.endswith(".npy"):
        npy_claiming(path, claim)
    elif name.endswith(".png"):
        path.write_bytes(png_claiming(claim[1], claim[0], 16, 0))
    else:
        side = min(claim[0], 32767)
        nifti_claiming(path, (side, side, math.ceil(claim[0] * claim[1] / side**2)))


def peak_mib(function) -> float:
    """Peak MiB allocated (numpy included) while ``function`` runs."""
    tracemalloc.start()
    try:
        function()
    except DataFileError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_float_image_with_nan_or_inf_is_refused_naming_the_file(tmp_path, bad):
    image = random_rgb() / 255.0
    image[3, 4, 1] = bad
    tifffile.imwrite(tmp_path / "float tile.tif", image.astype(np.float32), photometric="rgb")
    with pytest.raises(DataFileError, match=r"float tile\.tif: float image with 1 NaN or infinite value\(s\)"):
        read_image(tmp_path / "float tile.tif")


def test_png_header_claiming_100000_squared_pixels_is_refused_before_allocation(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(HUGE, HUGE, 8, 2))
    with pytest.raises(DataFileError, match=r"bomb\.png: cannot decode \(DecompressionBombError"):
        read_image(tmp_path / "bomb.png")
    assert peak_mib(lambda: read_image(tmp_path / "bomb.png")) < 5


@pytest.mark.parametrize("name", ["label.tif", "label.npy", "label.nii", "label.nii.gz", "label.png"])
def test_label_header_claiming_more_values_than_the_limit_is_refused(tmp_path, name):
    path = tmp_path / name
    hostile_label(path, (300, 400))
    with pytest.raises(
        DataFileError,
        match=rf"{name}: (header claims a \S+ label map, more than the limit of 100000 values|cannot decode)",
    ):
        read_label(path, max_pixels=100_000)
    assert peak_mib(lambda: read_label(path, max_pixels=100_000)) < 5


HUGE_CLAIMS_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
from pathlib import Path
from bundle.data import DataFileError, read_image, read_label
for name in sys.argv[1:]:
    reader = read_image if name.startswith("image") else read_label
    try:
        reader(Path(name))
        print(name, "READ")
    except DataFileError as error:
        print(error)
"""


def test_huge_shape_claims_are_refused_with_the_default_limit(tmp_path):
    tiff_claiming(tmp_path / "image.tif", HUGE, HUGE, rgb=True)
    (tmp_path / "image.png").write_bytes(png_claiming(HUGE, HUGE, 8, 2))
    names = ["image.tif", "image.png", "label.tif", "label.npy", "label.nii", "label.nii.gz", "label.png"]
    for name in names[2:]:
        hostile_label(tmp_path / name, (HUGE, HUGE))
    result = subprocess.run(
        [sys.executable, "-c", HUGE_CLAIMS_SCRIPT, *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**single_thread_env(), "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == names, result.stdout
    assert "MemoryError" not in result.stdout and "READ" not in result.stdout
    assert "image.tif: header claims 100000x100000 pixels" in result.stdout
    assert "label.tif: header claims a 100000x100000 label map" in result.stdout
    assert "label.nii.gz: header claims a 32767x32767x10 label map" in result.stdout


# ----------------------------------------------------------------------------- XML

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    + "]><Annotations>&lol9;</Annotations>"
)


@pytest.mark.parametrize(
    "text",
    [
        BILLION_LAUGHS,
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Annotations>&xxe;</Annotations>',
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % remote SYSTEM "{dtd}"> %remote;]><Annotations/>',
    ],
    ids=["billion_laughs", "external_entity", "external_parameter_entity"],
)
def test_xml_entities_are_refused_naming_the_file(tmp_path, text):
    (tmp_path / "defs.dtd").write_text('<!ENTITY secret "LEAKED">')
    path = tmp_path / "hostile.xml"
    path.write_text(text.replace("{dtd}", str(tmp_path / "defs.dtd")))
    with pytest.raises(DataFileError, match=r"hostile\.xml: forbidden XML construct: EntitiesForbidden"):
        read_aperio_xml(path, (8, 8))


def test_xml_external_dtd_is_never_loaded(tmp_path):
    (tmp_path / "defs.dtd").write_text('<!ENTITY secret "LEAKED">')
    path = tmp_path / "dtd.xml"
    path.write_text(
        f'<?xml version="1.0"?><!DOCTYPE Annotations SYSTEM "{tmp_path / "defs.dtd"}"><Annotations>&secret;</Annotations>'
    )
    with pytest.raises(
        DataFileError, match=r"dtd\.xml: malformed XML at line 1, column \d+: undefined entity &secret;"
    ):
        read_aperio_xml(path, (8, 8))


def test_xml_vertices_beyond_any_slide_are_skipped_with_the_warning(tmp_path):
    far = [("-1e30", "-1e30"), ("1e30", "-1e30"), ("1e30", "1e30"), ("-1e30", "1e30")]
    near = [("1.5", "1.5"), ("3.5", "1.5"), ("3.5", "3.5"), ("1.5", "3.5")]
    body = "".join(
        "<Region><Vertices>" + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices) + "</Vertices></Region>"
        for vertices in (far, near)
    )
    path = tmp_path / "far.xml"
    path.write_text(f"<Annotations><Annotation><Regions>{body}</Regions></Annotation></Annotations>")
    with pytest.warns(UserWarning, match=r"far\.xml: skipped 1 region\(s\) .*out-of-range"):
        label = read_aperio_xml(path, (8, 8))
    assert set(np.unique(label)) == {0, 1} and label[1, 1] == 1


def xml_of(*regions) -> str:
    body = "".join(
        "<Region><Vertices>" + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in r) + "</Vertices></Region>"
        for r in regions
    )
    return f"<Annotations><Annotation><Regions>{body}</Regions></Annotation></Annotations>"


def test_xml_region_larger_than_any_nucleus_is_skipped_with_a_warning(tmp_path):
    huge = [("-1e8", "-1e8"), ("1e8", "-1e8"), ("1e8", "1e8"), ("-1e8", "1e8")]  # within MAX_XML_COORDINATE
    near = [("1.5", "1.5"), ("3.5", "1.5"), ("3.5", "3.5"), ("1.5", "3.5")]
    path = tmp_path / "stray.xml"
    path.write_text(xml_of(huge, near))
    with pytest.warns(UserWarning, match=r"stray\.xml: skipped 1 region\(s\) covering more than 10000 px"):
        label = read_aperio_xml(path, (200, 200))
    assert (
        set(np.unique(label)) == {0, 1} and label[1, 1] == 1 and (label == 1).sum() < 20
    )  # the real nucleus, not swallowed


def test_xml_with_every_region_outside_the_tile_says_so(tmp_path):
    path = tmp_path / "elsewhere.xml"
    path.write_text(xml_of(*[[(f"{x}", "500"), (f"{x + 5}", "500"), (f"{x + 5}", "505")] for x in (300, 400)]))
    with pytest.warns(
        UserWarning,
        match=r"elsewhere\.xml: 2 region\(s\) lie wholly outside the 64x64 tile; no nucleus is left in the label",
    ):
        label = read_aperio_xml(path, (64, 64))
    assert not label.any()


# ----------------------------------------------------------------------------- inference outputs


@pytest.mark.parametrize(
    "source,stem",
    [
        ("tiles/../../escape me.tif", "escape me"),
        ("/abs/dir/..tif", "."),
        ("a b/ c .PNG", " c "),
        ("../../../etc/passwd", "passwd"),
    ],
)
def test_inference_outputs_stay_in_the_output_folder(tmp_path, source, stem):
    out = tmp_path / "deep" / "out"
    instances = np.zeros((1, 16, 16), np.int32)
    instances[0, 4:9, 4:9] = 1
    SaveNucleiOutputsd(output_dir=out)({"image": torch.rand(3, 16, 16), "image_path": source, "instances": instances})
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.name for p in written] == sorted(
        f"{stem}{suffix}" for suffix in ("_instances.tif", "_overlay.png", ".geojson", "_nuclei.csv")
    )
    assert all(p.parent == out for p in written)


def test_tile_screen_skips_bad_and_duplicate_tiles_and_lists_each(tmp_path):
    write_image(tmp_path / "a b.tif", random_rgb())
    write_image(tmp_path / "a b.png", random_rgb())  # same stem: its outputs would overwrite a b.tif's
    (tmp_path / "empty.tif").touch()
    tiff_claiming(tmp_path / "huge.tif", HUGE, HUGE, rgb=True)
    tifffile.imwrite(tmp_path / "nan.tif", np.full((8, 8, 3), np.nan, np.float32), photometric="rgb")
    screen = TileScreen()
    items = [{"image": str(tmp_path / name)} for name in ("a b.tif", "a b.png", "empty.tif", "huge.tif", "nan.tif")]
    assert screen.readable(items) == items[:1]
    with pytest.raises(SystemExit) as exit_info:
        screen.exit_status()
    lines = str(exit_info.value).splitlines()
    assert lines[0].startswith("4 tile(s) could not be read")
    assert lines[1:] == [
        f"  {tmp_path / 'a b.png'}: same file stem as {tmp_path / 'a b.tif'}: their outputs would overwrite each other",
        f"  {tmp_path / 'empty.tif'}: empty file (0 bytes)",
        f"  {tmp_path / 'huge.tif'}: header claims 100000x100000 pixels, more than the limit of {2**28}",
        f"  {tmp_path / 'nan.tif'}: float image with 192 NaN or infinite value(s)",
    ]


def test_tile_screen_treats_stems_case_insensitively(tmp_path):
    """``Z.tif`` and ``z.TIF`` would write ``Z_instances.tif`` and ``z_instances.tif``: one file on macOS and Windows."""
    write_image(tmp_path / "Z.tif", random_rgb())
    write_image(tmp_path / "z.TIF", random_rgb())
    screen = TileScreen()
    items = [{"image": str(tmp_path / name)} for name in ("Z.tif", "z.TIF")]
    assert screen.readable(items) == items[:1]
    assert screen.failures == {
        str(
            tmp_path / "z.TIF"
        ): f"{tmp_path / 'z.TIF'}: same file stem as {tmp_path / 'Z.tif'}: their outputs would overwrite each other"
    }


# ----------------------------------------------------------------------------- command lines


def make_source_folder(src: Path) -> list[str]:
    """A MoNuSeg-style folder: one good tile and eight broken ones; returns the expected error fragments."""
    for sub in ("images", "masks", "annotations"):
        (src / sub).mkdir(parents=True)
    label = np.zeros((32, 32), np.uint16)
    label[4:12, 4:12] = 3
    for stem in ("good", "bomb", "size", "negative", "floatlabel"):
        write_image(src / "images" / f"{stem}.tif", random_rgb())
        write_label(src / "masks" / f"{stem}.png", label)
    (src / "annotations" / "bomb.xml").write_text(BILLION_LAUGHS)
    write_label(src / "masks" / "size.png", label[:20])
    tifffile.imwrite(src / "masks" / "negative.tif", -label.astype(np.int16))
    (src / "masks" / "negative.png").unlink()
    np.save(src / "masks" / "floatlabel.npy", label + 0.5)
    (src / "masks" / "floatlabel.png").unlink()
    (src / "images" / "empty.png").touch()
    write_label(src / "masks" / "empty.png", label)
    tiff_claiming(src / "images" / "huge.tif", HUGE, HUGE, rgb=True)
    write_label(src / "masks" / "huge.png", label)
    tifffile.imwrite(src / "images" / "nan.tif", np.full((32, 32, 3), np.nan, np.float32), photometric="rgb")
    write_label(src / "masks" / "nan.png", label)
    (src / "images" / "loop.tif").symlink_to(src / "images" / "loop.tif")
    write_label(src / "masks" / "loop.png", label)
    return [
        "loop.tif: symbolic link that does not resolve (a link loop or a missing target)",
        "bomb.xml: forbidden XML construct",
        "size.tif: image is 32x32 but its label",
        "negative.tif: negative ids in label map",
        "floatlabel.npy: float label map with non-integer values",
        "empty.png: empty file (0 bytes)",
        "huge.tif: header claims 100000x100000 pixels",
        "nan.tif: float image with 3072 NaN or infinite value(s)",
    ]


def test_prepare_cli_reports_one_line_per_bad_file_and_converts_the_rest(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    expected = make_source_folder(src)
    result = subprocess.run(
        [sys.executable, str(PREPARE_SCRIPT), "prepare", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("- ")]
    assert len(problems) == len(expected) and all(any(e in line for line in problems) for e in expected), result.stderr
    assert f"prepare: {len(expected)} problem(s); no datalist written." in result.stderr
    assert (out / "images" / "good.tif").is_file() and (out / "labels" / "good.tif").is_file()
    assert not (out / "datalist.json").exists()


def test_tile_inference_cli_reports_bad_tiles_and_writes_the_others(tmp_path):
    tiles, out = tmp_path / "tiles", tmp_path / "out"
    tiles.mkdir()
    write_image(tiles / "good tile.tif", random_rgb(64, 64))
    write_image(tiles / "good tile.png", random_rgb(64, 64))
    (tiles / "empty.tif").touch()
    tiff_claiming(tiles / "huge.tif", HUGE, HUGE, rgb=True)
    tifffile.imwrite(tiles / "nan.tif", np.full((64, 64, 3), np.nan, np.float32), photometric="rgb")
    (tiles / "loop.tif").symlink_to(tiles / "loop.tif")
    (tmp_path / "models").mkdir()
    torch.save(
        {"network": segmentation_unet("resnet10", out_channels=3).state_dict()}, tmp_path / "models" / "model.pt"
    )
    command = bundle_run_command(
        ["inference.json"],
        bundle_root=str(tmp_path),
        dataset_dir=str(tiles),
        output_dir=str(out),
        backbone="resnet10",
        roi_size=64,
    )
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=single_thread_env())
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in log, log[-3000:]
    assert "5 tile(s) could not be read" in log
    for fragment in (
        "good tile.tif: same file stem as",
        "empty.tif: empty file",
        "huge.tif: header claims",
        "nan.tif: float image with",
        "loop.tif: symbolic link that does not resolve",
    ):
        assert sum(fragment in line and line.startswith("  ") for line in log.splitlines()) == 1, fragment
    assert sorted(p.name for p in out.iterdir()) == [
        "good tile.geojson",
        "good tile_instances.tif",
        "good tile_nuclei.csv",
        "good tile_overlay.png",
        "manifest.json",
    ]  # no lock left behind


# ----------------------------------------------------------------------------- checkpoints are data


class CopiesAFileWhenUnpickled:
    """Unpickling this object calls ``shutil.copyfile(source, marker)``: code run by a load."""

    def __init__(self, source: Path, marker: Path):
        self.source, self.marker = source, marker

    def __reduce__(self):
        return shutil.copyfile, (str(self.source), str(self.marker))


@pytest.fixture
def pickled_checkpoint(tmp_path) -> tuple[Path, Path]:
    """A checkpoint whose ``network`` entry holds real weights plus an object that runs code when unpickled."""
    (tmp_path / "source.txt").write_text("x")
    marker = tmp_path / "code_ran.txt"
    state = {
        **TripletEncoderNet("resnet10").state_dict(),
        "payload": CopiesAFileWhenUnpickled(tmp_path / "source.txt", marker),
    }
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"network": state}, path)
    return path, marker


def test_every_loader_we_own_refuses_a_pickled_object(pickled_checkpoint):
    path, marker = pickled_checkpoint
    loaders = {
        "bundle.initialization.load_weights": lambda: load_weights(path),
        "bundle.density load_network (scripts/visualize.py)": lambda: load_network(path),
        "bundle.checkpoints.load_network_weights": lambda: load_network_weights(TripletEncoderNet("resnet10"), path),
    }
    for name, load in loaders.items():
        with pytest.raises(
            ValueError, match=r"checkpoint_epoch=1\.pt: holds Python objects other than tensors"
        ) as error:
            load()
        assert "weights_only" not in str(error.value), f"{name} suggests unsafe loading"
        assert not marker.exists(), f"{name} ran code from the checkpoint"


@pytest.mark.parametrize("loader", [CheckpointLoader, CheckedCheckpointLoader])
def test_checkpoint_loaders_of_the_workflows_refuse_a_pickled_object(pickled_checkpoint, loader):
    """MONAI's CheckpointLoader loads with weights_only=True itself; the configs' checked one also names the file."""
    path, marker = pickled_checkpoint
    engine = Engine(lambda engine, batch: None)
    loader(load_path=str(path), load_dict={"network": TripletEncoderNet("resnet10")}).attach(engine)
    with pytest.raises(Exception) as error:
        engine.run([0], max_epochs=1)
    assert not marker.exists()
    if loader is CheckedCheckpointLoader:
        assert str(error.value).startswith(f"{path}: holds Python objects") and "weights_only" not in str(error.value)
