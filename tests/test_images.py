"""Image datasets: the original layouts, the cache, the split, and clear errors."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest

from images_fixtures import fake_miniimagenet, fake_omniglot, zip_omniglot
from metagrad.errors import ConfigError
from metagrad.tasks import images


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))


def test_folders_and_zips_give_the_same_images(tmp_path):
    folder = fake_omniglot(tmp_path / "omniglot")
    zipped = zip_omniglot(folder, tmp_path / "zipped")
    a, b = images.load_omniglot(folder), images.load_omniglot(zipped)
    assert a.images.shape == (12, 20, 28, 28) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.names == b.names
    assert a.names[0] == "Alphabet_b0/character01" and a.names[-1] == "Alphabet_e1/character03"


def test_cache_is_used_then_rebuilt_when_corrupt_or_stale(tmp_path, monkeypatch, capsys):
    folder = fake_omniglot(tmp_path / "omniglot")
    first = images.load_omniglot(folder)
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    monkeypatch.setattr(images, "_omniglot_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    assert np.array_equal(images.load_omniglot(folder).images, first.images)  # from the cache, nothing decoded
    monkeypatch.undo()
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    raw = bytearray(cached[0].read_bytes())
    raw[-100] ^= 0xFF  # flip bits in the pixels: the checksum no longer matches
    cached[0].write_bytes(bytes(raw))
    assert np.array_equal(images.load_omniglot(folder).images, first.images)
    assert "corrupt; rebuilding" in capsys.readouterr().err
    png = next((folder / "images_background").glob("*/*/*.png"))
    png.write_bytes(png.read_bytes() + b"\0")  # the source changed: another fingerprint, another cache file
    images.load_omniglot(folder)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    stat = png.stat()
    png.write_bytes(bytes(stat.st_size))  # same size, other content (a damaged copy): read again, and refused
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConfigError, match="not a readable image") as refused:
        images.load_omniglot(folder)
    assert "BytesIO" not in str(refused.value)  # PIL's name for its buffer, said as "its bytes"


def test_a_changed_decoding_is_not_served_the_old_decodings_pixels(tmp_path, monkeypatch):
    """The cache's key held the files alone: after a change to how pixels are decoded (transparency composited on
    white), images cached by the older decoding came back unchanged. The decoding's version is part of the key."""
    folder = fake_omniglot(tmp_path / "omniglot")
    first = images.load_omniglot(folder)
    decoded = []
    real = images._omniglot_image
    monkeypatch.setattr(images, "_omniglot_image", lambda *a: decoded.append(1) or real(*a))
    images.load_omniglot(folder)
    assert not decoded  # the same decoding: from the cache
    monkeypatch.setattr(images, "DECODING", images.DECODING + 1)
    again = images.load_omniglot(folder)
    assert decoded and np.array_equal(again.images, first.images)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_two_runs_building_the_same_cache_at_once_both_keep_it(tmp_path, monkeypatch, capsys):
    """A second run writes the same cache between the first's write and rename (two jobs started together): each
    renames a whole file of its own, so neither fails nor leaves a partial or stray file."""
    folder = fake_omniglot(tmp_path / "omniglot")
    real_replace, raced = images.os.replace, []

    def replace_after_another_run(src, dst):
        if not raced:
            raced.append(dst)
            monkeypatch.setattr(images.os, "replace", real_replace)
            images.load_omniglot(folder)  # the other run, start to finish
            monkeypatch.setattr(images.os, "replace", replace_after_another_run)
        real_replace(src, dst)

    monkeypatch.setattr(images.os, "replace", replace_after_another_run)
    first = images.load_omniglot(folder)
    monkeypatch.setattr(images.os, "replace", real_replace)
    assert raced and "could not write" not in capsys.readouterr().err
    cache = tmp_path / "cache"
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]  # no temporary file left behind
    monkeypatch.setattr(images, "_omniglot_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    assert np.array_equal(images.load_omniglot(folder).images, first.images)  # intact: read back, nothing decoded


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p / "nowhere", "does not exist"),
    (lambda p: p, "has no images_background"),
    (lambda p: (p / "images_background").mkdir() or (p / "images_evaluation").mkdir() or p, "holds no"),
    (lambda p: fake_omniglot(p, drawings=19), "has 19 drawings, expected 20"),
])
def test_wrong_omniglot_folders_name_the_problem(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        images.load_omniglot(make(tmp_path))


def test_a_zip_of_another_part_under_a_parts_name_is_refused_in_one_line(tmp_path):
    """images_background.zip that holds another folder (a renamed images_background_small1.zip): its drawings are
    not the part's, named as such (it was a KeyError traceback when the first drawing was read)."""
    zipped = zip_omniglot(fake_omniglot(tmp_path / "folder"), tmp_path / "zipped")
    (tmp_path / "zipped" / "images_background.zip").unlink()
    shutil.copy(zipped / "images_evaluation.zip", zipped / "images_background.zip")
    with pytest.raises(ConfigError, match=r"images_background\.zip holds no <alphabet>/<character>/"):
        images.load_omniglot(zipped)


def test_miniimagenet_layout(tmp_path):
    splits = images.load_miniimagenet(fake_miniimagenet(tmp_path / "mini"))
    assert {k: v.images.shape for k, v in splits.items()} == {
        "train": (4, 6, 3, 84, 84), "val": (2, 6, 3, 84, 84), "test": (3, 6, 3, 84, 84)}
    assert splits["test"].names == ["ntest00000", "ntest00001", "ntest00002"]


def _rows(root, csv_name: str, per_class: int = 6) -> None:
    """Append a whole class of ``train.csv`` to ``csv_name``."""
    rows = (root / "train.csv").read_text().splitlines()[1:1 + per_class]
    with open(root / csv_name, "a") as f:
        f.write("\n".join(rows) + "\n")


@pytest.mark.parametrize(("damage", "match"), [
    (lambda p: _rows(p, "test.csv"), "class ntrain00000 is listed in test.csv and in train.csv"),
    (lambda p: (p / "val.csv").write_text((p / "val.csv").read_text().replace("nval00001", "nval00000")
                                          .replace("nval0000100000000", "nval0000000000000")),
     "file nval0000000000000.jpg is listed twice"),
])
def test_miniimagenet_splits_that_overlap_or_repeat_an_image_are_refused(tmp_path, damage, match):
    root = fake_miniimagenet(tmp_path / "mini")
    damage(root)
    with pytest.raises(ConfigError, match=match):
        images.load_miniimagenet(root)


@pytest.mark.parametrize(("damage", "match"), [
    (lambda p: (p / "val.csv").unlink(), "val.csv is missing"),
    (lambda p: (p / "test.csv").write_text("file,class\na.jpg,x\n"), "header 'filename,label'"),
    (lambda p: (p / "test.csv").write_text("filename,label\na.jpg\n"), "test.csv, line 2: expected 'filename,label'"),
    (lambda p: next((p / "images").glob("ntrain*.jpg")).unlink(), "listed in train.csv but missing"),
    (lambda p: (p / "test.csv").write_text((p / "test.csv").read_text() + "ntest0000000000099.jpg,ntest00000\n"),
     r"ntest0000000000099.jpg is listed in test.csv but missing"),  # was: every class needs the same number
    (lambda p: (p / "test.csv").write_text("\n".join((p / "test.csv").read_text().splitlines()[:-1]) + "\n"),
     r"test.csv: every class needs the same number of images; most have 6, but ntest00002 \(5\)"),
])
def test_broken_miniimagenet_folders(tmp_path, damage, match):
    root = fake_miniimagenet(tmp_path / "mini")
    damage(root)
    with pytest.raises(ConfigError, match=match):
        images.load_miniimagenet(root)


def test_real_omniglot_split_is_fixed_and_disjoint(real_omniglot):
    splits = real_omniglot
    sizes = {k: v.num_classes for k, v in splits.items()}
    assert sizes == {"train": 1100, "val": 100, "test": 423}  # 1200 training characters, 423 for test
    names = {k: set(v.names) for k, v in splits.items()}
    assert not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert not (names["train"] & names["val"])
    assert len(names["train"] | names["val"] | names["test"]) == 1623
    # irrespective of alphabet: test characters come from background and evaluation alphabets alike
    assert {n.split("/")[0] for n in names["test"]} & {n.split("/")[0] for n in names["train"]}
    # the split is fixed across versions: pinned here so that a change to it cannot pass unnoticed
    assert splits["test"].names[:3] == ["Tifinagh/character09", "Bengali/character04", "Oriya/character09"]
    digest = hashlib.sha1("\n".join(splits["test"].names).encode()).hexdigest()
    assert digest == "944359009415153c6a3a5ba559dd319970a0dc7a"
    assert splits["train"].images.shape[1:] == (20, 28, 28)
    assert splits["train"].images.mean() < 60  # inverted: strokes bright on a dark background


def test_a_relabelled_miniimagenet_csv_is_not_read_from_the_old_cache(tmp_path):
    """The cache's key held file names and stamps only: merging classes in train.csv (rows and images unchanged)
    reloaded the old 4 classes from the cache, silently."""
    root = fake_miniimagenet(tmp_path / "mini")
    assert images.load_miniimagenet(root)["train"].images.shape[:2] == (4, 6)
    csv_path = root / "train.csv"
    merged = {"ntrain00001": "ntrain00000", "ntrain00003": "ntrain00002"}
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    csv_path.write_text("".join(f"{name},{merged.get(label, label)}\n" for name, label in rows))
    relabelled = images.load_miniimagenet(root)["train"]
    assert relabelled.images.shape[:2] == (2, 12) and relabelled.names == ["ntrain00000", "ntrain00002"]


def test_one_file_name_in_two_class_folders_is_two_images_and_a_repeat_spelt_otherwise_is_refused(tmp_path):
    """The once-listed check compared the CSV's strings: images/<label>/<file> folders that reuse file names (1.jpg
    per class) were refused as a repeat, while ``./a.jpg`` beside ``a.jpg`` (one image twice) passed."""
    root = fake_miniimagenet(tmp_path / "mini")
    for split in images.MINIIMAGENET_SPLITS:
        rows = [line.split(",") for line in (root / f"{split}.csv").read_text().splitlines()[1:]]
        for i, (name, label) in enumerate(rows):
            (root / "images" / label).mkdir(exist_ok=True)
            (root / "images" / name).rename(root / "images" / label / f"{i % 6}.jpg")
        (root / f"{split}.csv").write_text("filename,label\n" + "".join(f"{i % 6}.jpg,{label}\n"
                                                                       for i, (_, label) in enumerate(rows)))
    assert images.load_miniimagenet(root)["train"].images.shape[:2] == (4, 6)
    flat = fake_miniimagenet(tmp_path / "flat")
    csv_text = (flat / "val.csv").read_text()  # its second image replaced by its first, spelt ./<name>
    (flat / "val.csv").write_text(csv_text.replace("nval0000000000001.jpg", "./nval0000000000000.jpg"))
    with pytest.raises(ConfigError, match=r"file nval0000000000000\.jpg is listed twice"):
        images.load_miniimagenet(flat)


def test_miniimagenet_images_in_a_folder_per_class_and_a_csv_with_a_byte_order_mark(tmp_path):
    """images/<label>/<file> (mmfewshot's layout; mini-imagenet-tools' processed_images/<split>/<label>/ moved
    into images/) was refused file by file; a CSV saved with a byte-order mark (Excel's) was refused as headerless."""
    flat = images.load_miniimagenet(fake_miniimagenet(tmp_path / "flat"))
    root = fake_miniimagenet(tmp_path / "nested")
    for split in images.MINIIMAGENET_SPLITS:
        for name, label in (line.split(",") for line in (root / f"{split}.csv").read_text().splitlines()[1:]):
            (root / "images" / label).mkdir(exist_ok=True)
            (root / "images" / name).rename(root / "images" / label / name)
    (root / "val.csv").write_text((root / "val.csv").read_text(), encoding="utf-8-sig")
    nested = images.load_miniimagenet(root)
    for split in images.MINIIMAGENET_SPLITS:
        assert np.array_equal(nested[split].images, flat[split].images) and nested[split].names == flat[split].names


def test_sixteen_bit_and_rotated_images_decode_as_they_look_and_float_ones_are_refused(tmp_path):
    """A 16-bit grey ramp came out near white (convert clips it), an EXIF-rotated JPEG unrotated, a floating-point
    TIFF all black."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 84 * 84).reshape(84, 84).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    got = images._rgb_image(tmp_path / "grey16.png", 84)
    assert np.abs(got[0].astype(float) - ramp / 257).max() <= 1 and (got[0] == got[2]).all()
    wide = np.zeros((40, 84, 3), dtype=np.uint8)
    wide[:, :42] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(wide).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = images._rgb_image(tmp_path / "rotated.jpg", 84)[0].astype(float)
    assert upright[:42].mean() > 200 and upright[42:].mean() < 50  # the white half on top once rotated
    older = Image.fromarray(ramp.astype(np.int32))  # how Pillow before 10.3 opens a 16-bit grey PNG: mode I
    older.format = "PNG"
    assert np.abs(np.asarray(images._eight_bit(older, "x"), dtype=float) - ramp / 257).max() <= 0.5
    Image.fromarray(np.linspace(0, 1, 64).reshape(8, 8).astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ConfigError, match=r"float\.tif has floating-point pixels \(PIL mode F\).*8-bit"):
        images._rgb_image(tmp_path / "float.tif", 84)


def test_an_omniglot_copy_short_of_the_original_says_its_split_is_not_the_papers(tmp_path, capsys, monkeypatch):
    """A copy with alphabets missing (an extraction cut short) loaded silently with a reshuffled split. A copy of
    under half the characters is a small one on purpose (as the tests'): no word."""
    folder = fake_omniglot(tmp_path / "omniglot")
    images.omniglot_splits(folder)
    assert "characters" not in capsys.readouterr().err
    monkeypatch.setattr(images, "OMNIGLOT_CHARACTERS", 14)  # 12 characters: most of such an original
    images.omniglot_splits(folder)
    assert "holds 12 characters, not the original's 14" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_decode_as_white_as_a_viewer_shows_them(tmp_path, mode):
    """A drawing on a transparent background stored as black (RGBA (0, 0, 0, 0)) came out as a black page: an
    Omniglot character all bright once inverted, a MiniImagenet image black."""
    from PIL import Image

    stroke = np.zeros((28, 28), dtype=bool)
    stroke[10:18, 4:24] = True
    if mode == "P":  # palette index 0 black and transparent, index 1 the opaque black stroke
        im = Image.fromarray(stroke.astype(np.uint8), "P")
        im.putpalette([0, 0, 0] * 256)
        im.save(tmp_path / "drawing.png", transparency=0)
    else:
        rgba = np.zeros((28, 28, 4), dtype=np.uint8)  # transparent black
        rgba[stroke, 3] = 255  # the stroke opaque black
        Image.fromarray(rgba, "RGBA").convert(mode).save(tmp_path / "drawing.png")
    rgb = images._rgb_image(tmp_path / "drawing.png", 28).astype(int)
    assert (rgb[:, ~stroke] == 255).all() and (rgb[:, stroke] == 0).all()
    drawing = images._omniglot_image((tmp_path / "drawing.png").read_bytes(), 28, "drawing.png")
    assert (drawing[~stroke] == 0).all() and (drawing[stroke] == 255).all()  # strokes bright on a dark background


def test_images_linked_to_one_stored_file_are_not_a_repeat_and_16_bit_with_transparency_is_scaled(tmp_path):
    """Stores by content (git-annex, DVC, the Hugging Face cache) link equal images to one file: following the links
    refused them as one file listed twice. A 16-bit grey PNG with a transparent value decoded all white."""
    from PIL import Image

    root = fake_miniimagenet(tmp_path / "mini")
    (root / "blobs").mkdir()
    files = sorted((root / "images").iterdir())
    shutil.copy(files[1], files[0])  # two equal images
    for f in files:
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        f.replace(blob)
        f.symlink_to(os.path.relpath(blob, f.parent))
    assert images.load_miniimagenet(root)["train"].images.shape[:2] == (4, 6)
    ramp = np.linspace(0, 65535, 84 * 84).reshape(84, 84).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png", transparency=5)
    got = images._rgb_image(tmp_path / "grey16.png", 84)
    assert np.abs(got[0].astype(float) - ramp / 257).max() <= 1
