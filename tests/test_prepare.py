"""Splits, label fractions, datalists (bundle.datalist), preparation (bundle.preparation) and its CLI."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bundle import preparation
from bundle.data import DataFileError, read_aperio_xml, read_image, read_label
from bundle.datalist import (
    build_datalist,
    datalist_item,
    fraction_key,
    label_fraction_subset,
    pair_images_and_labels,
    split_train_val,
)
from monai.data import load_decathlon_datalist
from PIL import Image
from skimage.draw import disk

REPO_ROOT = Path(__file__).resolve().parents[1]

TILE_SHAPE = (40, 48)
XML_TEXT = (
    "<Annotations><Annotation><Regions>"
    '<Region><Vertices><Vertex X="3.5" Y="3.5"/><Vertex X="12.5" Y="3.5"/>'
    '<Vertex X="12.5" Y="9.5"/></Vertices></Region>'
    '<Region><Vertices><Vertex X="20" Y="20"/><Vertex X="30" Y="20"/><Vertex X="30" Y="30"/>'
    '<Vertex X="20" Y="30"/></Vertices></Region>'
    "</Regions></Annotation></Annotations>\n"
)


def make_tile(folder: Path, stem: str, seed: int) -> None:
    """LZW RGB tile in ``folder/images`` and its uint16 instance mask (3 discs, ids 2, 5, 9) in ``folder/masks``."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (*TILE_SHAPE, 3), dtype=np.uint8)
    tifffile.imwrite(folder / "images" / f"{stem}.tif", rgb, photometric="rgb", compression="lzw")
    mask = np.zeros(TILE_SHAPE, np.uint16)
    for nucleus_id in (2, 5, 9):
        mask[disk(tuple(rng.integers(6, 34, 2)), 5, shape=TILE_SHAPE)] = nucleus_id
    Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")


def make_monuseg_folder(folder: Path, n_tiles: int = 6, first_seed: int = 0) -> list[str]:
    """MoNuSeg-style folder: ``n_tiles`` tiles with masks; the first also has an XML annotation."""
    stems = [f"TILE-{first_seed + i:02d}" for i in range(n_tiles)]
    for i, stem in enumerate(stems):
        make_tile(folder, stem, first_seed + i)
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"{stems[0]}.xml").write_text(XML_TEXT)
    return stems


def prepare_failure(capsys, **kwargs) -> str:
    """Run prepare expecting it to refuse; return the problems it lists (what the script prints)."""
    with pytest.raises(preparation.PreparationError) as refused:
        preparation.prepare(**kwargs)
    assert refused.value.problems and str(refused.value).count("\n- ") == len(refused.value.problems)
    return str(refused.value)


# --------------------------------------------------------------------------- splits

STEMS = [f"s{i:02d}" for i in range(30)]


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_train_val(STEMS, 0.2, seed=0)
    assert (train, val) == split_train_val(STEMS, 0.2, seed=0)
    assert (train, val) != split_train_val(STEMS, 0.2, seed=1)
    assert not set(train) & set(val)
    assert sorted(train + val) == STEMS
    assert (len(train), len(val)) == (24, 6)
    assert train != sorted(train), "training order should be the seeded random order"


def test_split_does_not_depend_on_input_order():
    assert split_train_val(STEMS[::-1], seed=3) == split_train_val(STEMS, seed=3)


@pytest.mark.parametrize(
    "n,val_fraction,n_val",
    [(30, 0.2, 6), (7, 0.2, 1), (8, 0.2, 2), (10, 0.25, 3), (2, 0.2, 1), (2, 0.9, 1), (1, 0.2, 0)],
)
def test_split_validation_size(n, val_fraction, n_val):
    train, val = split_train_val(STEMS[:n], val_fraction)
    assert (len(train), len(val)) == (n - n_val, n_val)


@pytest.mark.parametrize("stems,val_fraction", [([], 0.2), (["a", "a", "b"], 0.2), (STEMS, 0.0), (STEMS, 1.0)])
def test_split_rejects_bad_arguments(stems, val_fraction):
    with pytest.raises(ValueError):
        split_train_val(stems, val_fraction)


def test_label_fractions_are_nested_with_rounded_sizes():
    train, _ = split_train_val(STEMS, 0.2, seed=0)
    subsets = [label_fraction_subset(train, f) for f in (0.1, 0.3, 0.5, 0.7, 1.0)]
    assert [len(s) for s in subsets] == [2, 7, 12, 17, 24]
    for smaller, larger in zip(subsets, subsets[1:]):
        assert larger[: len(smaller)] == smaller
    assert subsets[-1] == train
    assert label_fraction_subset(train[:3], 0.1) == train[:1]


def test_seeded_label_fractions_are_nested_differ_by_seed_and_keep_the_list_order():
    train, _ = split_train_val(STEMS, 0.2, seed=0)
    by_seed = {seed: [label_fraction_subset(train, f, seed=seed) for f in (0.1, 0.3, 1.0)] for seed in range(4)}
    for subsets in by_seed.values():
        assert [len(s) for s in subsets] == [2, 7, 24]
        assert set(subsets[0]) <= set(subsets[1]) and subsets[2] == train
        assert all(s == sorted(s, key=train.index) for s in subsets)
    assert len({tuple(subsets[1]) for subsets in by_seed.values()}) == 4
    assert label_fraction_subset(train, 0.3, seed=2) == by_seed[2][1]  # the same seed draws the same tiles


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_label_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="label fraction must be in"):
        label_fraction_subset(STEMS, fraction)


def test_build_datalist_keys_metadata_and_items():
    train, val = split_train_val(STEMS, 0.2, seed=0)
    datalist = build_datalist(
        [datalist_item(s, "mask") for s in train],
        [datalist_item(s, "xml") for s in val],
        seed=0,
        val_fraction=0.2,
        label_fractions=(0.1, 0.5, 1.0),
        test_items=[datalist_item("t", "xml")],
    )
    assert list(datalist) == [
        "seed", "val_fraction", "label_fractions", "training", "validation", "test",
        "training_10", "training_50", "training_100",
    ]  # fmt: skip
    assert (datalist["seed"], datalist["val_fraction"], datalist["label_fractions"]) == (0, 0.2, [0.1, 0.5, 1.0])
    assert datalist["training_10"] == [datalist_item(s, "mask") for s in train[:2]]
    assert datalist["validation"][0] == {
        "image": f"images/{val[0]}.tif",
        "label": f"labels/{val[0]}.tif",
        "label_source": "xml",
    }
    assert datalist_item("u") == {"image": "images/u.tif"}


@pytest.mark.parametrize("fractions,problem", [((0.125,), "not a whole percent"), ((0.1, 0.1), "repeat a percent")])
def test_build_datalist_refuses_ambiguous_fraction_keys(fractions, problem):
    with pytest.raises(ValueError, match=problem):
        build_datalist([datalist_item("a")], [], seed=0, val_fraction=0.2, label_fractions=fractions)


def test_fraction_key():
    keys = ["training_10", "training_30", "training_70", "training_100"]
    assert [fraction_key(f) for f in (0.1, 0.3, 0.7, 1.0)] == keys


def test_pair_images_and_labels_reports_every_unmatched_file(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a.tif", "b.TIFF", "c.png", ".hidden.tif", "notes.txt"):
        (images / name).touch()
    for name in ("a.png", "b.xml", "d.nii.gz", "e.json"):
        (labels / name).touch()
    pairing = pair_images_and_labels(images, labels)
    assert pairing.pairs == {"a": (images / "a.tif", labels / "a.png"), "b": (images / "b.TIFF", labels / "b.xml")}
    assert pairing.images_without_label == [images / "c.png"]
    assert pairing.labels_without_image == [labels / "d.nii.gz"]
    assert pairing.ignored_files == [images / "notes.txt", labels / "e.json"]


def test_pair_images_and_labels_refuses_two_files_with_one_stem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").touch()
    (tmp_path / "images" / "a.tif").touch()
    with pytest.raises(DataFileError, match=r"a.tif: shares its stem with .*a.png"):
        pair_images_and_labels(tmp_path / "images", tmp_path / "images")


def test_pair_images_and_labels_refuses_stems_that_differ_only_in_case(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "Z.tif").touch()
    (tmp_path / "images" / "z.TIF").touch()
    with pytest.raises(DataFileError, match=r"z\.TIF: shares its stem with .*Z\.tif \(ignoring case\)"):
        pair_images_and_labels(tmp_path / "images", tmp_path / "images")


def test_pair_images_and_labels_refuses_a_missing_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataFileError, match="missing: folder not found"):
        pair_images_and_labels(tmp_path / "images", tmp_path / "missing")


# -------------------------------------------------------------------------- prepare


def test_prepare_writes_normalised_tiles_labels_and_a_loadable_datalist(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    stems = make_monuseg_folder(src)
    datalist_path = Path(preparation.prepare(str(src), str(out)))

    assert datalist_path == out / "datalist.json"
    datalist = json.loads(datalist_path.read_text())
    assert (len(datalist["training"]), len(datalist["validation"])) == (5, 1)
    assert [len(datalist[f"training_{p}"]) for p in (10, 30, 50, 70, 100)] == [1, 2, 3, 4, 5]
    items = {Path(item["image"]).stem: item for item in datalist["training"] + datalist["validation"]}
    assert sorted(items) == stems
    assert {stem: item["label_source"] for stem, item in items.items()} == {
        stem: "xml" if stem == stems[0] else "mask" for stem in stems
    }
    for stem in stems:
        image = read_image(out / "images" / f"{stem}.tif")
        np.testing.assert_array_equal(image, read_image(src / "images" / f"{stem}.tif"))
        expected = (
            read_aperio_xml(src / "annotations" / f"{stem}.xml", TILE_SHAPE)
            if stem == stems[0]
            else read_label(src / "masks" / f"{stem}.png")
        )
        np.testing.assert_array_equal(read_label(out / "labels" / f"{stem}.tif"), expected)

    loaded = load_decathlon_datalist(datalist_path, data_list_key="training_10", base_dir=out)
    assert len(loaded) == 1
    assert Path(loaded[0]["image"]).is_file() and Path(loaded[0]["label"]).is_file()
    assert loaded[0]["label_source"] in ("xml", "mask")


def test_prepare_reports_an_image_without_label_and_exits_1(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    (src / "masks" / "TILE-03.png").unlink()
    err = prepare_failure(capsys, src=str(src), out=str(out))
    assert "1 image(s) without a label" in err and "TILE-03.tif" in err and "--allow_unlabelled" in err
    assert not out.exists()


@pytest.mark.parametrize("out_of", [lambda src: src, lambda src: src / "prepared", lambda src: src.parent])
def test_prepare_refuses_an_output_folder_that_overlaps_the_input(tmp_path, capsys, out_of):
    src = tmp_path / "src"
    make_monuseg_folder(src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    err = prepare_failure(capsys, src=str(src), out=str(out_of(src)))
    assert "overlaps the input folder" in err and str(src) in err
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # no input rewritten, nothing added


def test_prepare_refuses_an_output_folder_inside_test_src(tmp_path, capsys):
    src, test_src = tmp_path / "src", tmp_path / "test"
    make_monuseg_folder(src)
    make_monuseg_folder(test_src, 2, first_seed=10)
    err = prepare_failure(capsys, src=str(src), test_src=str(test_src), out=str(test_src / "out"))
    assert f"overlaps the input folder {test_src}" in err and not (test_src / "out").exists()


def test_prepare_warns_when_the_xml_used_and_the_mask_beside_it_disagree(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    (src / "annotations" / "TILE-00.xml").write_text(
        "<Annotations><Annotation><Regions></Regions></Annotation></Annotations>"
    )
    with pytest.warns(
        UserWarning, match=r"TILE-00\.xml: 0 nuclei, but the mask beside it \(.*TILE-00\.png\) has 3; the XML is used"
    ):
        preparation.prepare(src=str(src), out=str(out))


def test_prepare_allow_unlabelled_lists_them_apart(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    (src / "masks" / "TILE-03.png").unlink()
    datalist = json.loads(Path(preparation.prepare(str(src), str(out), allow_unlabelled=True)).read_text())
    assert datalist["unlabelled"] == [{"image": "images/TILE-03.tif"}]
    labelled = [item["image"] for item in datalist["training"] + datalist["validation"]]
    assert len(labelled) == 5 and "images/TILE-03.tif" not in labelled
    assert (out / "images" / "TILE-03.tif").is_file() and not (out / "labels" / "TILE-03.tif").exists()


def test_prepare_refuses_a_label_without_image_even_when_unlabelled_allowed(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    (src / "annotations" / "TILE-99.xml").write_text(XML_TEXT)
    err = prepare_failure(capsys, src=str(src), out=str(out), allow_unlabelled=True)
    assert "1 label(s) without an image" in err and "TILE-99.xml" in err


def test_prepare_reports_unreadable_files_and_removes_the_stale_datalist(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    preparation.prepare(str(src), str(out))
    (src / "images" / "TILE-02.tif").write_bytes(b"II*\x00garbage")
    (src / "masks" / "TILE-04.png").write_bytes(b"")
    capsys.readouterr()
    err = prepare_failure(capsys, src=str(src), out=str(out))
    assert "2 problem(s)" in err and "TILE-02.tif: TIFF holds no image" in err and "TILE-04.png: empty file" in err
    assert not (out / "datalist.json").exists() and "removed the earlier" in err


def test_prepare_reports_image_and_label_of_different_sizes(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(src / "masks" / "TILE-01.png")
    err = prepare_failure(capsys, src=str(src), out=str(out))
    assert "TILE-01.tif: image is 40x48 but its label" in err and "TILE-01.png is 10x10" in err


@pytest.mark.parametrize("labels,sources", [("masks", {"mask"}), ("auto", {"xml", "mask"})])
def test_prepare_label_policy_picks_the_label_source(tmp_path, labels, sources):
    src = tmp_path / "src"
    make_monuseg_folder(src)
    datalist = json.loads(Path(preparation.prepare(str(src), str(tmp_path / "out"), labels=labels)).read_text())
    assert {item["label_source"] for item in datalist["training"] + datalist["validation"]} == sources


def test_prepare_xml_policy_leaves_tiles_without_xml_unlabelled(tmp_path, capsys):
    src = tmp_path / "src"
    make_monuseg_folder(src)
    err = prepare_failure(capsys, src=str(src), out=str(tmp_path / "out"), labels="xml")
    assert "5 image(s) without a label" in err


def test_prepare_lists_test_src_under_test_and_refuses_shared_stems(tmp_path, capsys):
    src, test_src = tmp_path / "src", tmp_path / "test_src"
    make_monuseg_folder(src)
    test_stems = make_monuseg_folder(test_src, n_tiles=2, first_seed=50)
    out = tmp_path / "out"
    datalist = json.loads(Path(preparation.prepare(str(src), str(out), test_src=str(test_src))).read_text())
    assert [item["image"] for item in datalist["test"]] == [f"images/{stem}.tif" for stem in test_stems]
    assert len(datalist["training"]) + len(datalist["validation"]) == 6
    assert all((out / "labels" / f"{stem}.tif").is_file() for stem in test_stems)

    make_tile(test_src, "TILE-01", seed=1)
    err = prepare_failure(capsys, src=str(src), out=str(out), test_src=str(test_src))
    assert "stem(s) in both src and test_src" in err and "TILE-01" in err


def test_prepare_rerun_replaces_outputs_and_leaves_no_temporary_files(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)
    first = Path(preparation.prepare(str(src), str(out), seed=0)).read_text()
    make_tile(src, "TILE-02", seed=77)
    second = Path(preparation.prepare(str(src), str(out), seed=1)).read_text()
    assert first != second
    image = read_image(out / "images" / "TILE-02.tif")
    np.testing.assert_array_equal(image, read_image(src / "images" / "TILE-02.tif"))
    assert not list(out.rglob(".*"))


def test_cli_runs_from_the_repository_root_and_summarizes(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_monuseg_folder(src)

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "scripts/prepare.py", *args]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)

    done = cli("prepare", f"--src={src}", f"--out={out}", "--fractions=0.5,1.0")
    assert done.returncode == 0, done.stderr
    assert "6 labelled tile(s) (1 labels from XML, 5 from masks)" in done.stdout
    assert list(json.loads((out / "datalist.json").read_text()))[-2:] == ["training_50", "training_100"]

    summary = cli("summarize", str(out / "datalist.json"))
    assert summary.returncode == 0, summary.stderr
    rows = {line.split()[0]: line.split() for line in summary.stdout.splitlines()}
    assert rows["training"][1:3] == ["5", "40x48"] and rows["validation"][1:3] == ["1", "40x48"]

    (src / "masks" / "TILE-05.png").unlink()
    failed = cli("prepare", f"--src={src}", f"--out={tmp_path / 'out2'}")
    assert failed.returncode == 1 and "TILE-05.tif" in failed.stderr


def test_summarize_prints_images_sizes_nuclei_and_mean_area(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    for seed, stem in enumerate(("A", "B", "C")):
        make_tile(src, stem, seed)
    preparation.prepare(str(src), str(out))
    capsys.readouterr()
    preparation.summarize(str(out / "datalist.json"))
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}

    training = json.loads((out / "datalist.json").read_text())["training"]
    masks = [read_label(src / "masks" / f"{Path(item['image']).stem}.png") for item in training]
    counts = [len(np.unique(mask)) - 1 for mask in masks]
    mean_area = sum(np.count_nonzero(mask) for mask in masks) / sum(counts)
    nuclei = f"{min(counts)}/{np.median(counts):g}/{max(counts)}"
    assert rows["training"] == ["training", "2", "40x48", nuclei, f"{mean_area:.1f}"]
    assert rows["validation"][:3] == ["validation", "1", "40x48"]
    assert rows["training_10"][:2] == ["training_10", "1"]


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:.*skipped 1 region:UserWarning")  # two XMLs hold a 2-vertex region
def test_prepare_the_real_monuseg_training_set(monuseg_train, tmp_path, capsys):
    start = time.perf_counter()
    datalist_path = Path(preparation.prepare(str(monuseg_train), str(tmp_path / "out")))
    seconds = time.perf_counter() - start
    datalist = json.loads(datalist_path.read_text())
    items = datalist["training"] + datalist["validation"]
    assert (len(datalist["training"]), len(datalist["validation"])) == (24, 6)
    xml_stems = {Path(item["image"]).stem for item in items if item["label_source"] == "xml"}
    assert xml_stems == {p.stem for p in (monuseg_train / "annotations").glob("*.xml")} and len(xml_stems) == 13
    assert sum(item["label_source"] == "mask" for item in items) == 17
    assert len(load_decathlon_datalist(datalist_path, data_list_key="training_10", base_dir=datalist_path.parent)) == 2
    with capsys.disabled():
        print(f"\n[prepare of the 30 MoNuSeg tiles took {seconds:.1f} s]")
