import re
from pathlib import Path

import pytest
import torch

from basisconv.cifar10 import load_cifar10
from basisconv.cifar10_location import TEST_FILES, TRAIN_FILES
from basisconv.data import (MEAN, STD, TensorBatches, normalize, random_crop, random_flip,
                            stratified_subset, synthetic_stripes)
from basisconv.errors import ConfigError, DatasetError
from cifar_files import random_images, write_cifar


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_reads_both_distributions(tmp_path, fmt):
    write_cifar(tmp_path, fmt, n_train=50, n_test=20, seed=1)
    expected, labels = random_images(70, 1)
    for root in (tmp_path, tmp_path / f"cifar-10-batches-{fmt}"):
        data = load_cifar10(root, verify_md5=False)
        assert data.train_images.dtype == torch.uint8
        assert data.train_images.shape == (50, 3, 32, 32)
        assert data.test_images.shape == (20, 3, 32, 32)
        assert torch.equal(data.train_images, expected[:50])
        assert torch.equal(data.test_labels, labels[50:])


def test_md5_mismatch_is_a_clear_error(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(DatasetError, match=r"md5 mismatch for .*data_batch_1.bin.*verify_md5=false"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("size, said", [
    (0, r"It is empty \(0 bytes\)\."),
    (3073 * 10_000 - 100, r"It has 30729900 bytes, where the genuine file has 30730000\."),
    (3073 * 10_000, r"")])  # the genuine size: nothing to add
def test_an_md5_mismatch_says_when_the_file_is_empty_or_of_another_size(tmp_path, size, said):
    """Found in review: an empty or truncated download's md5 mismatch named two digests
    alone (the empty file's d41d8cd9...), not that the file was empty or short."""
    folder = write_cifar(tmp_path)
    (folder / "data_batch_1.bin").write_bytes(bytes(size))
    with pytest.raises(DatasetError, match=rf"md5 mismatch for \S*data_batch_1.bin: expected "
                                           rf"\w+, got \w+\. {said}\s?The file is corrupt"):
        load_cifar10(tmp_path)


def test_a_folder_without_the_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match=rf"not found: looked in {re.escape(str(tmp_path))} "
                                           r"and its subfolders .*CIFAR10_ROOT"):
        load_cifar10(tmp_path)


def test_a_data_root_that_does_not_exist_says_so_in_one_line_with_the_fix(tmp_path):
    """Found in review: a data.root that does not exist said "looked in <it> and its
    subfolders", where a user expects "<it> does not exist", the key to set and where the
    data is published."""
    missing = tmp_path / "missing"
    with pytest.raises(DatasetError) as raised:
        load_cifar10(missing)
    said = str(raised.value)
    assert "\n" not in said
    assert re.fullmatch(rf"CIFAR-10 not found: data\.root {re.escape(str(missing))} does not "
                        rf"exist\. Point data\.root \(or the CIFAR10_ROOT environment variable\) "
                        rf"at .*https://www\.cs\.toronto\.edu/~kriz/cifar\.html.*"
                        rf"data\.download=true.*", said), said


def test_a_data_root_with_an_unexpanded_variable_says_how_to_write_it(tmp_path, monkeypatch):
    """Found in review: data.root='$HOME/cifar' (single-quoted in the shell) is not
    expanded, as Hydra expands none; "data.root <cwd>/$HOME/cifar does not exist" named
    neither that nor Hydra's way, ${oc.env:HOME}."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"does not exist \(\$HOME is not expanded here: "
                                           r"write \$\{oc\.env:HOME\} .*\)\. Point data\.root"):
        load_cifar10("$HOME/cifar")


def test_a_dollar_in_a_real_folder_name_is_not_called_an_unexpanded_variable(tmp_path):
    """Found in review: a missing data.root inside a real folder whose name holds a $
    (``price$data``) was said to hold an unexpanded variable $data; that part exists as
    written, and only the missing rest is news."""
    missing = tmp_path / "price$data" / "cifar"
    missing.parent.mkdir()
    with pytest.raises(DatasetError) as raised:
        load_cifar10(missing)
    assert "does not exist. Point data.root" in str(raised.value)
    assert "not expanded" not in str(raised.value)


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    write_cifar(tmp_path, n_train=50, n_test=10)
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path))
    assert load_cifar10(verify_md5=False).train_labels.numel() == 50


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_truncated_file_is_a_clear_error(tmp_path, fmt):
    folder = write_cifar(tmp_path, fmt)
    batch = folder / ("data_batch_3.bin" if fmt == "bin" else "data_batch_3")
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3.* truncated"):
        load_cifar10(tmp_path, verify_md5=False)


@pytest.mark.parametrize("damage", ["one_label_short", "rows_of_half_an_image"])
def test_a_python_batch_whose_images_and_labels_disagree_is_a_clear_error(tmp_path, damage):
    """Found in review: 10 images with 9 labels were read, and with data.verify_md5=false
    every later image of the split was trained on the wrong label."""
    import pickle

    folder = write_cifar(tmp_path, "py")
    path = folder / "data_batch_2"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    if damage == "one_label_short":
        batch[b"labels"] = batch[b"labels"][:-1]
    else:  # the same bytes as twice the rows of half an image each
        batch[b"data"] = batch[b"data"].reshape(-1, 3 * 32 * 16)
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match=r"data_batch_2 is not a CIFAR-10 python batch.*\(N, 3072\)"):
        load_cifar10(tmp_path, verify_md5=False)


def test_an_own_python_batch_with_text_keys_is_read(tmp_path):
    """Left at stop 70: a batch pickled by Python 3 with ``"data"`` and ``"labels"`` keys
    (as one writes one's own data) was called truncated: CIFAR-10's own are bytes keys."""
    import pickle

    folder = write_cifar(tmp_path, "py")
    expected = load_cifar10(tmp_path, verify_md5=False)
    for path in folder.glob("*_batch*"):
        batch = pickle.loads(path.read_bytes(), encoding="bytes")
        path.write_bytes(pickle.dumps({key.decode(): value for key, value in batch.items()}))
    got = load_cifar10(tmp_path, verify_md5=False)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def test_a_python_batch_without_its_entries_names_them(tmp_path):
    import pickle

    folder = write_cifar(tmp_path, "py")
    (folder / "data_batch_1").write_bytes(pickle.dumps({"images": [], "labels": []}))
    with pytest.raises(DatasetError, match=r"data_batch_1 is not a CIFAR-10 python batch: it "
                                           r"has no 'data' entry \(its keys: 'images', "
                                           r"'labels'\)"):
        load_cifar10(tmp_path, verify_md5=False)


@pytest.mark.parametrize("pixels", ["float_in_0_1", "int64_beyond_255", "int64_bytes",
                                    "uint16_beyond_255", "uint16_bytes", "uint32_bytes",
                                    "uint64_bytes", "bool_mask"])
def test_own_python_batches_whose_pixels_are_not_bytes_are_a_clear_error(tmp_path, pixels):
    """Found in review: float pixels in [0, 1] were cast to uint8 (near-black images) and
    wider integers wrapped modulo 256, silently. Integers within 0..255 are bytes. Unsigned
    wider integers (numpy's uint16, uint32, uint64, e.g. 16-bit images) are checked the
    same way: torch has no minimum of them, and their check was a NotImplementedError
    from deep inside torch instead. Found by a randomized test: bool pixels (a mask) were
    read as the bytes 0 and 1, black images, silently."""
    import pickle

    folder = write_cifar(tmp_path, "py")
    path = folder / "data_batch_2"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    data = batch[b"data"]
    batch[b"data"] = {"float_in_0_1": data.astype("float32") / 255,
                      "int64_beyond_255": data.astype("int64") * 4,
                      "int64_bytes": data.astype("int64"),
                      "uint16_beyond_255": data.astype("uint16") * 4,
                      "uint16_bytes": data.astype("uint16"),
                      "uint32_bytes": data.astype("uint32"),
                      "uint64_bytes": data.astype("uint64"),
                      "bool_mask": data > 127}[pixels]
    path.write_bytes(pickle.dumps(batch))
    if pixels.endswith("_bytes"):
        loaded = load_cifar10(tmp_path, verify_md5=False).train_images
        assert loaded.dtype == torch.uint8 and torch.equal(
            loaded[len(data):2 * len(data)].reshape(len(data), -1), torch.as_tensor(data))
        return
    with pytest.raises(DatasetError, match=r"data_batch_2: its data is .*CIFAR-10 stores "
                                           r"uint8 pixels 0..255"):
        load_cifar10(tmp_path, verify_md5=False)


@pytest.mark.parametrize("labels, said", [
    ("fraction_in_a_list", "1.5"), ("fraction_in_an_array", "2.25"),
    ("nan_in_an_array", "nan"), ("bools_in_an_array", "true/false values"),
    ("bools_in_a_list", "true/false values"), ("a_bool_among_ints", "true/false values"),
    ("whole_floats_in_a_list", None), ("whole_floats_in_an_array", None)])
def test_own_python_batches_whose_labels_are_not_whole_classes_are_a_clear_error(
        tmp_path, labels, said):
    """Found by a randomized test: a fractional label (1.5) was cast to its class's int
    (1), and bools read as classes 1 and 0, silently. Whole numbers stored as floats are
    classes, read exactly."""
    import pickle

    import numpy as np

    folder = write_cifar(tmp_path, "py")
    path = folder / "data_batch_2"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    given = batch[b"labels"]
    changed = {"fraction_in_a_list": given[:-1] + [1.5],
               "fraction_in_an_array": np.array(given[:-1] + [2.25]),
               "nan_in_an_array": np.array(given[:-1] + [float("nan")]),
               "bools_in_an_array": np.array(given) > 4,
               "bools_in_a_list": [label > 4 for label in given],
               "a_bool_among_ints": given[:-1] + [True],
               "whole_floats_in_a_list": [float(label) for label in given],
               "whole_floats_in_an_array": np.array(given, dtype="float32")}[labels]
    batch[b"labels"] = changed
    path.write_bytes(pickle.dumps(batch))
    if said is None:
        read = load_cifar10(tmp_path, verify_md5=False).train_labels
        assert read.dtype == torch.int64
        assert read[len(given):2 * len(given)].tolist() == given
        return
    with pytest.raises(DatasetError, match=rf"data_batch_2: its labels include {said}, where "
                                           rf"CIFAR-10 stores each image's class as a whole "
                                           rf"number 0..9; fix the labels") as err:
        load_cifar10(tmp_path, verify_md5=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", ["bin", "py"])
@pytest.mark.parametrize("verify_md5", [True, False])
def test_an_unreadable_batch_file_is_a_clear_error(tmp_path, monkeypatch, fmt, verify_md5):
    """A batch file this user may not read (a copy made by another user with mode 600, a
    failing disk) is one line naming the file and the fix, not a PermissionError's stack
    trace from the md5 check or the reader (nor "truncated": re-downloading does not help).
    The refusal is made where the file is opened, as a test run as root can read a file
    whatever its mode."""
    import builtins
    import io

    folder = write_cifar(tmp_path, fmt, n_train=50, n_test=10)
    locked = folder / ("data_batch_1.bin" if fmt == "bin" else "data_batch_1")  # read first
    real_open = io.open

    def refusing_open(file, *args, **kwargs):
        if Path(str(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", refusing_open)
    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(DatasetError, match=rf"^cannot read {locked} \(Permission denied\): "
                                           r"make it readable"):
        load_cifar10(tmp_path, verify_md5=verify_md5)


def refuse_to_enter(folder, monkeypatch):
    """``folder`` as one this user may not enter (mode 700, another user's): a stat of
    anything in it is a PermissionError, made where it is looked in, as a test run as root
    may enter a folder whatever its mode; a download into it fails the test."""
    import os

    from basisconv import cifar10

    def no_download(root):
        raise AssertionError(f"downloaded into {root}")

    real_stat = os.stat

    def refusing_stat(path, *args, **kwargs):
        if Path(os.fspath(path)).parent == folder:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    # patched where load_cifar10 reads it: cifar10's binding of cifar10_download's
    monkeypatch.setattr(cifar10, "download_cifar10", no_download)
    monkeypatch.setattr(os, "stat", refusing_stat)


@pytest.mark.parametrize("download", [False, True])
def test_a_data_root_this_user_may_not_enter_is_a_clear_error(tmp_path, monkeypatch,
                                                               download):
    """Found in review: ``data.root`` in a folder this user may not enter (another user's
    copy, mode 700) stopped with a PermissionError's stack trace from looking for the
    files (``Path.is_file`` ignores only a missing file); with data.download=true it
    must not be taken for a missing dataset and downloaded over. The refusal is made where
    the folder is looked in, as a test run as root may enter a folder whatever its mode."""
    folder = write_cifar(tmp_path / "theirs", n_train=50, n_test=10)
    refuse_to_enter(folder, monkeypatch)
    with pytest.raises(DatasetError, match=rf"^cannot look in {folder} for CIFAR-10 "
                                           r"\(Permission denied\): make it readable"):
        load_cifar10(tmp_path / "theirs", verify_md5=False, download=download)


@pytest.mark.parametrize("download", [False, True])
def test_a_data_root_inside_a_folder_this_user_may_not_enter_is_a_clear_error(
        tmp_path, monkeypatch, download):
    """Found in review: ``data.root`` inside a folder this user may not enter (chmod 000,
    run without root's override of permissions) stopped ``scripts/train.py`` with a
    PermissionError's stack trace from asking whether data.root is a file. It names the
    folder that cannot be entered, as a data.root that can be entered but not read does."""
    theirs = tmp_path / "theirs"
    refuse_to_enter(theirs, monkeypatch)
    with pytest.raises(DatasetError, match=rf"^cannot look in {theirs} for CIFAR-10 "
                                           r"\(Permission denied\): make it readable"):
        load_cifar10(theirs / "cifar-10-batches-bin", verify_md5=False, download=download)


def test_a_stray_file_above_a_complete_folder_does_not_hide_it(tmp_path):
    """Left at stop 70: a test_batch.bin in data.root, beside a complete
    cifar-10-batches-bin/, was taken as the dataset's folder and refused as incomplete.
    The complete one is read; with neither complete, the first is named as before."""
    from basisconv.cifar10_location import find_cifar10

    folder = write_cifar(tmp_path, "bin")
    (tmp_path / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes())
    assert find_cifar10(tmp_path) == (folder, "bin")
    assert len(load_cifar10(tmp_path, verify_md5=False).test_images) == 100
    (folder / "data_batch_5.bin").unlink()
    assert find_cifar10(tmp_path) == (tmp_path, "bin")


@pytest.mark.parametrize("fmt, folder_name", [("py", "cifar-10-batches-bin"),
                                               ("bin", "cifar-10-batches-py")])
def test_a_dataset_under_the_other_formats_folder_name_is_found(tmp_path, fmt, folder_name):
    """Found in review: the python batches extracted into a folder named
    cifar-10-batches-bin/ (or the reverse), with data.root above it, were "not found",
    though the message said that folder had been looked in. The files tell the format."""
    written = write_cifar(tmp_path, fmt, n_train=50, n_test=20)
    written.rename(tmp_path / folder_name)
    data = load_cifar10(tmp_path, verify_md5=False)
    assert data.source == str((tmp_path / folder_name).resolve())  # absolute, resolved
    assert (len(data.train_labels), len(data.test_labels)) == (50, 20)


def test_a_python_batchs_md5_mismatch_says_its_size_as_a_binary_batchs_does(tmp_path):
    """Found in review: a python batch's md5 mismatch added its size only when it was empty,
    where a binary batch's says it at any other size than the genuine one. The genuine
    pickles' sizes are not published beside their md5 sums, so the size is said alone."""
    folder = write_cifar(tmp_path, "py")
    size = (folder / "data_batch_1").stat().st_size
    with pytest.raises(DatasetError, match=rf"md5 mismatch for \S*data_batch_1: expected "
                                           rf"\w+, got \w+\. It has {size} bytes\. The file "
                                           rf"is corrupt"):
        load_cifar10(tmp_path)


def test_missing_batch_file(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_5.bin").unlink()
    with pytest.raises(DatasetError, match="file missing: .*data_batch_5.bin"):
        load_cifar10(tmp_path, verify_md5=False)


def test_a_batch_path_that_is_a_folder_says_so(tmp_path):
    """Found in review: a ``data_batch_5.bin`` that is a folder (an archive extracted into
    a folder of the file's name) was reported as missing."""
    folder = write_cifar(tmp_path)
    (folder / "data_batch_5.bin").unlink()
    (folder / "data_batch_5.bin").mkdir()
    with pytest.raises(DatasetError, match=r"data_batch_5.bin is a folder, where CIFAR-10's "
                                           r"file data_batch_5.bin belongs: replace it"):
        load_cifar10(tmp_path, verify_md5=False)


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_each_file_is_read_once_when_its_md5_is_checked(tmp_path, monkeypatch, fmt):
    """Found in review: the md5 check read each file, then the reader read it again; the
    bytes hashed are now the bytes parsed. (The published sums are swapped for the
    generated files' own, so the check passes.)"""
    import builtins
    import hashlib
    import io

    from basisconv import cifar10

    folder = write_cifar(tmp_path, fmt, n_train=50, n_test=20)
    for path in folder.iterdir():
        monkeypatch.setitem(cifar10.MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    opened = []

    def counting(real):
        def open_(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file).parent == folder:
                opened.append(Path(file).name)
            return real(file, *args, **kwargs)
        return open_

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(io, "open", counting(io.open))
    assert len(load_cifar10(tmp_path).train_images) == 50
    assert sorted(opened) == sorted(TRAIN_FILES[fmt] + TEST_FILES[fmt])


def as_fips_mode(monkeypatch):
    """hashlib made as a FIPS-mode Python has it: md5 refused unless ``usedforsecurity=False``
    (Python 3.9+), which says it is a checksum."""
    import hashlib

    md5, new = hashlib.md5, hashlib.new

    def refused(name):
        return ValueError(f"[digital envelope routines] unsupported: {name} (FIPS mode)")

    def fips_md5(*args, usedforsecurity=True, **kwargs):
        if usedforsecurity:
            raise refused("md5")
        return md5(*args, usedforsecurity=False, **kwargs)

    def fips_new(name, *args, usedforsecurity=True, **kwargs):
        if usedforsecurity and name.lower() == "md5":
            raise refused(name)
        return new(name, *args, usedforsecurity=usedforsecurity, **kwargs)

    monkeypatch.setattr(hashlib, "md5", fips_md5)
    monkeypatch.setattr(hashlib, "new", fips_new)


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_the_md5_checks_run_on_a_fips_mode_python(tmp_path, monkeypatch, fmt):
    """Found in review: the dataset's md5 sums (a checksum, not security) were computed as
    a FIPS-mode Python refuses, so CIFAR-10 did not load there, nor the archive check."""
    import hashlib

    from basisconv import cifar10
    from basisconv.records import file_digest

    folder = write_cifar(tmp_path, fmt, n_train=50, n_test=20)
    sums = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}
    for name, digest in sums.items():
        monkeypatch.setitem(cifar10.MD5, name, digest)
    as_fips_mode(monkeypatch)  # (after the sums above, which use the real md5)
    assert len(load_cifar10(tmp_path).train_images) == 50
    path = next(folder.iterdir())
    assert file_digest(path, "md5") == sums[path.name]


def test_offline_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    from basisconv import cifar10_download

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar10_download.urllib.request, "urlretrieve", offline)
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)  # force the stdlib path
    with pytest.raises(DatasetError, match="could not download CIFAR-10.*offline"):
        load_cifar10(tmp_path / "new", download=True)


def test_runs_started_together_download_once(tmp_path, monkeypatch):
    """Found in review: runs started together with data.download=true (reproduce.sh's
    JOBS on a fresh machine, torchrun's ranks) each downloaded the archive into the same
    folder at once. One downloads; the others wait for it and read what it fetched."""
    import threading
    import time

    from basisconv import cifar10

    fetched = []

    def fake_download(root):  # slow enough for the other to arrive while it runs
        fetched.append(root)
        time.sleep(0.5)
        write_cifar(root, "py", n_train=50, n_test=10)

    # patched where load_cifar10 reads it: cifar10's binding of cifar10_download's
    monkeypatch.setattr(cifar10, "download_cifar10", fake_download)
    loaded = []
    runs = [threading.Thread(target=lambda: loaded.append(
        load_cifar10(tmp_path, verify_md5=False, download=True))) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(fetched) == 1 and len(loaded) == 2
    assert all(torch.equal(d.train_images, loaded[0].train_images) for d in loaded)


def test_stratified_subset_is_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    idx = stratified_subset(labels, 105, seed=3)
    assert idx.numel() == 105
    counts = labels[idx].bincount(minlength=10)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(idx, stratified_subset(labels, 105, seed=3))
    assert not torch.equal(idx, stratified_subset(labels, 105, seed=4))
    assert stratified_subset(labels, 0.5).numel() == 500
    # a fraction is rounded, not cut: in floating point 0.29 * 100 is 28.999999999999996,
    # and 0.018 of CIFAR-10's 50000 training images 899.9999999999999
    assert stratified_subset(labels[:100], 0.29).numel() == 29
    assert stratified_subset(torch.arange(50000) % 10, 0.018).numel() == 900
    # and halves round up, as basis sizes do (one rule): 0.5 of 5 images is 3
    assert stratified_subset(labels[:5], 0.5).numel() == 3
    with pytest.raises(ConfigError, match="between 1 and 1000"):
        stratified_subset(labels, 2000)


@pytest.mark.parametrize("size", [True, "0.5"])
def test_a_subset_size_that_is_no_number_is_refused_naming_its_key(size):
    """Found in review: the config refuses a bool before it, but called directly
    ``stratified_subset(labels, True)`` took ``True`` for the fraction 1.0 (every image)."""
    with pytest.raises(ConfigError, match=rf"^data.test_subset={size!r} is neither a count "
                                          r"\(an int\) nor a fraction \(a float\)$"):
        stratified_subset(torch.arange(10) % 2, size, key="data.test_subset")


@pytest.mark.parametrize("size", [float("nan"), float("inf")])
def test_a_subset_size_that_is_no_finite_number_is_refused_naming_its_key(size):
    """Found in self-review: the check of a size that is no number let NaN and infinity
    through, which the fraction's rounding (``counts.share_of``) then refused as a bare
    ``ValueError: Invalid literal for Fraction: 'nan'``, naming no key."""
    with pytest.raises(ConfigError, match=rf"^data.test_subset={size!r} as a fraction must be "
                                          r"in \(0, 1\]$"):
        stratified_subset(torch.arange(10) % 2, size, key="data.test_subset")


def test_stratified_subset_draws_each_class_independently():
    """Each class's images are picked by its own draws from the one generator: a generator
    seeded afresh per class would pick the same positions in every class (images at the
    same place in the files), the same in all ten."""
    labels = torch.arange(1000) % 10  # class c holds images c, c + 10, c + 20, ...
    idx = stratified_subset(labels, 100, seed=0)
    positions = [set((idx[labels[idx] == c] // 10).tolist()) for c in range(10)]
    assert len({frozenset(p) for p in positions}) == 10


def test_stratified_subset_of_unbalanced_classes_still_has_the_size_asked():
    # your own CIFAR-format data: class 0 has 20 images, the others 200 each
    labels = torch.cat([torch.zeros(20, dtype=torch.long),
                        torch.arange(1, 10).repeat_interleave(200)])
    idx = stratified_subset(labels, 500, seed=0)
    assert idx.numel() == 500 and idx.unique().numel() == 500
    counts = labels[idx].bincount(minlength=10)
    assert counts[0] == 20 and counts[1:].max() - counts[1:].min() <= 1
    assert torch.equal(stratified_subset(labels, 1.0), torch.arange(labels.numel()))
    assert stratified_subset(labels, 0.5).numel() == labels.numel() // 2


def test_class_quotas_are_as_equal_as_the_classes_allow():
    """A class too small for its share gives all it has and the rest is shared equally
    among the others (your own CIFAR-format data with unbalanced classes): every class not
    taken whole gets the largest quota or one less, the extra ones going to the first
    classes. A small class among the first ones was given a remainder it could not take,
    and that one image went to the next class (1, 3, 1 of 1, 10, 10 images for 5)."""
    import itertools

    from basisconv.data import class_quotas

    assert class_quotas([1, 10, 10], 5) == [1, 2, 2]
    assert class_quotas([10, 10, 4, 4, 2, 10], 21) == [4, 4, 4, 4, 2, 3]
    assert class_quotas([5, 5, 5], 7) == [3, 2, 2]  # balanced: the remainder to the first
    for sizes in itertools.product(range(1, 5), repeat=3):
        for count in range(1, sum(sizes) + 1):
            quotas = class_quotas(list(sizes), count)
            assert sum(quotas) == count and all(0 <= q <= s for q, s in zip(quotas, sizes))
            open_quotas = [q for q, s in zip(quotas, sizes) if q < s]
            assert all(q >= max(quotas) - 1 for q in open_quotas), (sizes, count, quotas)
            assert open_quotas == sorted(open_quotas, reverse=True), (sizes, count, quotas)


def test_random_crop_shapes_and_variation():
    images = torch.arange(8 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8)
    images = images.view(8, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    crops = random_crop(images, 4, g)
    assert crops.shape == images.shape and crops.dtype == torch.uint8
    # each crop is a window of the zero-padded image
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(8):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # [3, 9, 9, 32, 32]
        assert (windows == crops[i][:, None, None]).all(0).all(-1).all(-1).any()
    # offsets differ between images and between calls
    assert len({crops[i].float().sum().item() - images[i].float().sum().item()
                for i in range(8)}) > 1
    assert not torch.equal(crops, random_crop(images, 4, g))


def test_random_crop_draws_the_two_offsets_independently():
    """Every (dy, dx) of the 9 x 9 is drawn, not one offset for both axes. Each pixel of
    the image holds its own index, so a crop's centre pixel tells its offsets."""
    image = torch.arange(32 * 32, dtype=torch.float64).view(1, 1, 32, 32) + 1
    # 1000 draws: each of the 81 pairs is missed with probability (80/81)^1000 ~ 4e-6
    crops = random_crop(image.expand(1000, 1, 32, 32), 4, torch.Generator().manual_seed(0))
    index = crops[:, 0, 16, 16].long() - 1  # padded[dy + 16, dx + 16] = image[dy + 12, dx + 12]
    offsets = set(zip((index // 32 - 12).tolist(), (index % 32 - 12).tolist()))
    assert offsets == {(dy, dx) for dy in range(9) for dx in range(9)}


def test_random_flip_flips_about_half():
    images = torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 150 < mirrored.sum() < 250


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_random_flip_mirrors_the_images_its_seeded_draw_chooses(memory_format):
    """Which images a seed flips is pinned (one uniform draw per image, below 1/2 flips),
    so that a faster way to flip them keeps a seeded run's augmentation bit for bit."""
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8).contiguous(
        memory_format=memory_format)
    chosen = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    flipped = random_flip(images, torch.Generator().manual_seed(3))
    assert torch.equal(flipped, torch.where(chosen[:, None, None, None], images.flip(-1), images))
    assert flipped.dtype == images.dtype and flipped.shape == images.shape


def test_training_batches_flip_as_configured_and_evaluation_batches_never():
    """``data.flip`` reaches the batches: with it about half the training images come
    mirrored, without it and in evaluation none. (Each image's label is its index, so a
    batch's labels say which image each row is.)"""
    images, _ = random_images(64, 0)
    index = torch.arange(64)

    def mirrored(**options):
        (x, y), = list(TensorBatches(images, index, 64, crop_padding=0, **options))
        plain = normalize(images[y])
        flipped = [not torch.equal(x[i], plain[i]) for i in range(64)]
        for i in range(64):
            assert torch.equal(x[i], plain[i].flip(-1) if flipped[i] else plain[i])
        return sum(flipped)

    assert 16 < mirrored(train=True, seed=0) < 48
    assert mirrored(train=True, seed=0, flip=False) == 0
    assert mirrored(train=False) == 0


def test_normalize_standardizes_and_keeps_layout():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images, memory_format=torch.channels_last)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)


def test_batches_cover_the_epoch_and_reshuffle():
    images, labels = random_images(100, 0)
    batches = TensorBatches(images, labels, 32, train=True, seed=0)
    assert len(batches) == 3  # drop_last for training
    first = torch.cat([y for _, y in batches])
    second = torch.cat([y for _, y in batches])
    assert first.numel() == 96 and not torch.equal(first, second)
    test = TensorBatches(images, labels, 32, train=False)
    assert len(test) == 4
    got = list(test)
    assert torch.equal(torch.cat([y for _, y in got]), labels)
    assert got[0][0].dtype == torch.float32 and got[0][0].shape == (32, 3, 32, 32)
    # evaluation images are only normalized: no crop, no flip, in order
    torch.testing.assert_close(torch.cat([x for x, _ in got]), normalize(images), rtol=0, atol=0)


def test_training_batches_follow_their_seed():
    """The batch order and augmentation are the seed's: the same seed gives the same
    batches, another seed other ones (a seed ignored would give every seed of a
    configuration the same batches, and its repeats less spread than real ones)."""
    images, labels = random_images(64, 0)

    def epoch(seed):
        return list(TensorBatches(images, labels, 16, train=True, seed=seed))

    same, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(same, again))
    assert not torch.equal(torch.cat([y for _, y in same]), torch.cat([y for _, y in other]))


def _augmented_by_hand(images, labels, batch_size, seed, padding, layout):
    """The training batches of :class:`TensorBatches`, one image at a time: the seed's
    permutation, then per batch every row offset, every column offset and every flip draw,
    each image's window sliced from its zero-padded copy, and (pixels - 255 mean) / (255 std)
    in float32, in ``layout``."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=g)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1).mul(255)
    std = torch.tensor(STD).view(1, 3, 1, 1).mul(255)
    h, w = images.shape[-2:]
    for start in range(0, labels.numel() - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        dy = torch.randint(0, 2 * padding + 1, (batch_size,), generator=g)
        dx = torch.randint(0, 2 * padding + 1, (batch_size,), generator=g)
        flips = torch.rand(batch_size, generator=g) < 0.5
        padded = torch.nn.functional.pad(images[index], (padding,) * 4)
        crops = [padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))]
        crops = torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips)])
        yield ((crops.float() - mean) / std).contiguous(memory_format=layout), labels[index]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels_last"])
def test_training_batches_are_the_seeds_crops_flips_and_normalization_bit_for_bit(layout):
    """Pins what the batched crop, flip and normalization compute, to the bit and the
    stride, so that a faster form of them (one gather, one pass) cannot change a run's
    batches: the same seed gives the same numbers before and after."""
    images, labels = random_images(64, 0)
    got = list(TensorBatches(images, labels, 16, train=True, seed=7, memory_format=layout))
    expected = list(_augmented_by_hand(images, labels, 16, 7, 4, layout))
    assert len(got) == len(expected) == 4
    for (x, y), (want_x, want_y) in zip(got, expected):
        assert torch.equal(y, want_y) and torch.equal(x, want_x)
        assert x.dtype == torch.float32 and x.stride() == want_x.stride()
    crops = random_crop(images, 4, torch.Generator().manual_seed(3))
    assert crops.is_contiguous() and crops.dtype == torch.uint8


def test_batches_resume_from_state():
    images, labels = random_images(64, 0)
    a = TensorBatches(images, labels, 16, train=True, seed=5)
    list(a)
    state = a.state_dict()
    expected = [x for x, _ in a]
    b = TensorBatches(images, labels, 16, train=True, seed=99)
    b.load_state_dict(state)
    for x, y in zip(expected, (x for x, _ in b)):
        assert torch.equal(x, y)


def test_batch_larger_than_dataset():
    images, labels = random_images(10, 0)
    # found in review: data.train_subset=1 (one image, meant as "all") was blamed on the
    # batch size alone
    with pytest.raises(ConfigError, match=r"larger than the 10 training examples; lower "
                                          r"trainer.batch_size, or keep more images "
                                          r"\(data.train_subset, .*sensitivity.val_size\)$"):
        TensorBatches(images, labels, 32, train=True)


def test_the_test_subset_is_drawn_with_the_runs_seed(tmp_path):
    """The README: runs of different seeds draw different test images, and the seeds'
    spread includes that draw (found by a helper's mutation test: a subset drawn with a
    fixed seed failed no test)."""
    from omegaconf import OmegaConf

    from basisconv.data import prepare_data

    write_cifar(tmp_path, n_train=100, n_test=100)
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "verify_md5": False,
                            "download": False, "train_subset": None, "test_subset": 20})
    first = prepare_data(cfg, 0).test_images
    assert torch.equal(prepare_data(cfg, 0).test_images, first)
    assert not torch.equal(prepare_data(cfg, 1).test_images, first)


def test_the_training_subset_is_class_balanced_and_drawn_with_the_runs_seed(tmp_path):
    """data.train_subset (the quick profile's 5000 images) keeps exactly that many images,
    an equal share of each class, drawn with the run's seed (runs of one seed train on the
    same images, runs of two seeds not); the test set is left whole. (No test read data
    with a training subset before the coverage review.)"""
    from omegaconf import OmegaConf

    from basisconv.data import prepare_data

    write_cifar(tmp_path, n_train=200, n_test=40)
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "verify_md5": False,
                            "download": False, "train_subset": 50, "test_subset": None})
    first = prepare_data(cfg, 0)
    assert first.train_images.shape == (50, 3, 32, 32) and first.test_labels.numel() == 40
    assert torch.bincount(first.train_labels, minlength=10).tolist() == [5] * 10
    whole = load_cifar10(tmp_path, verify_md5=False)
    kept = [(whole.train_images == image).flatten(1).all(1).nonzero().item()
            for image in first.train_images]
    assert torch.equal(whole.train_labels[kept], first.train_labels)  # images keep labels
    assert torch.equal(prepare_data(cfg, 0).train_images, first.train_images)
    assert not torch.equal(prepare_data(cfg, 1).train_images, first.train_images)


def test_labels_outside_the_ten_classes_are_a_clear_error(tmp_path):
    """Your own data in CIFAR format (data.verify_md5=false) with a label 10 or more: one
    line naming the file, not an index error in the loss mid-training."""
    folder = write_cifar(tmp_path, n_train=50, n_test=10)
    test = folder / "test_batch.bin"
    raw = bytearray(test.read_bytes())
    raw[0] = 10  # the first record's label byte
    test.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"test_batch.bin has labels outside 0..9 \(record "
                                           r"0: 10\): not a CIFAR-10 file. Re-download or "
                                           r"re-extract it, or fix the labels if it is your own "
                                           r"data \(one class 0..9 per image\).$"):
        load_cifar10(tmp_path, verify_md5=False)


def test_a_text_file_where_a_binary_batch_belongs_is_one_line_naming_the_fix(tmp_path):
    """A text file in a .bin's place (a Git LFS pointer, an HTML error page saved as the
    file) whose length happens to be a whole number of records, read with
    data.verify_md5=false: its "label" bytes are printable characters, 10 or more. The
    error said only "not a CIFAR-10 file", naming neither the fix nor what was wrong."""
    folder = write_cifar(tmp_path, n_train=50, n_test=10)
    text = b"version https://git-lfs.github.com/spec/v1\n" * 3073
    (folder / "data_batch_2.bin").write_bytes(text)
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path, verify_md5=False)
    message = str(err.value)
    assert "\n" not in message and "data_batch_2.bin" in message
    assert "(record 0: 118)" in message  # "v", the first byte
    assert "Re-download or re-extract it" in message


def test_subset_errors_name_their_key_and_zero_images_is_its_own_message():
    from basisconv.data import stratified_subset

    labels = torch.arange(100) % 10
    with pytest.raises(ConfigError, match=r"^data.test_subset=999999 must select between 1 and 100"):
        stratified_subset(labels, 999999, key="data.test_subset")
    with pytest.raises(ConfigError, match=r"^sensitivity.val_size=0.001 must select"):
        stratified_subset(labels, 0.001, key="sensitivity.val_size")
    images, _ = random_images(10, 0)
    with pytest.raises(ConfigError, match="there are no training images") as err:
        TensorBatches(images[:0], labels[:0], 32, train=True)
    assert "lower trainer.batch_size" not in str(err.value)


def test_batches_resume_a_generator_state_saved_on_another_kind_of_device(caplog):
    """A CUDA generator's state (8-byte seed, 8-byte Philox offset) does not fit the CPU's
    (a CUDA run resumed on the CPU: trainer.device may change on resume), so the batches
    draw a new order seeded from it, the same each time, with a warning; a stack trace
    from ``Generator.set_state`` before. A state of this device's generator still
    continues its stream exactly."""
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 10

    def first_batch(state):
        batches = TensorBatches(images, labels, 5, train=True, seed=3)
        batches.load_state_dict(state)
        return next(iter(batches))

    cuda_state = {"generator": torch.tensor([7] + [0] * 7 + [4] + [0] * 7, dtype=torch.uint8)}
    with caplog.at_level("WARNING", logger="basisconv.data"):
        x, y = first_batch(cuda_state)
    assert "another kind of device" in caplog.text
    x2, y2 = first_batch(cuda_state)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    source = TensorBatches(images, labels, 5, train=True, seed=1)
    state = source.state_dict()
    x3, y3 = next(iter(source))
    x4, y4 = first_batch(state)
    assert torch.equal(x3, x4) and torch.equal(y3, y4)


def test_a_python_batch_is_verified_before_it_is_unpickled(tmp_path):
    """Found in review: the md5 was compared after the batch was read, so a pickle that is
    not the genuine CIFAR-10 ran its code first, with data.verify_md5=true."""
    import pathlib
    import pickle

    class RunsCode:
        def __reduce__(self):
            return pathlib.Path.touch, (tmp_path / "code_ran",)

    folder = write_cifar(tmp_path, "py")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": RunsCode()}))
    with pytest.raises(DatasetError, match="md5 mismatch for .*data_batch_1"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "code_ran").exists()


def test_a_root_under_home_is_expanded_for_the_download_lock_too(tmp_path, monkeypatch):
    """Found in review: data.root=~/cifar with data.download=true searched and downloaded
    under $HOME but took its lock in a folder named '~' of the working directory."""
    from basisconv import cifar10, cifar10_download

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(cifar10, "download_cifar10",  # where load_cifar10 reads it
                        lambda root: write_cifar(root, "py", n_train=50, n_test=10))
    assert load_cifar10("~/cifar", verify_md5=False, download=True).train_labels.numel() == 50
    assert (home / "cifar" / cifar10_download.DOWNLOAD_LOCK).exists()
    assert not any(cwd.iterdir())


def test_a_download_torchvision_refuses_is_a_clear_error(tmp_path, monkeypatch):
    """torchvision's downloader reports an archive with the wrong md5 as a RuntimeError."""
    import sys
    import types

    def corrupted(*args, **kwargs):
        raise RuntimeError("File not found or corrupted.")

    utils = types.ModuleType("torchvision.datasets.utils")
    utils.download_and_extract_archive = corrupted
    for name, module in (("torchvision", types.ModuleType("torchvision")),
                         ("torchvision.datasets", types.ModuleType("torchvision.datasets")),
                         ("torchvision.datasets.utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(DatasetError, match="could not download CIFAR-10 .*corrupted"):
        load_cifar10(tmp_path / "new", download=True)


def _serve_archive(tmp_path, monkeypatch):
    """A small CIFAR-10 python archive behind a fake urlretrieve (the stdlib path)."""
    import hashlib
    import io
    import tarfile

    from basisconv import cifar10_download

    folder = write_cifar(tmp_path / "archive", "py", n_train=50, n_test=10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    blob = buffer.getvalue()
    # patched where download_cifar10 reads it: cifar10_download's binding of
    # cifar10_location.ARCHIVE
    monkeypatch.setattr(cifar10_download, "ARCHIVE",
                        {"url": "https://example.invalid/cifar.tar.gz",
                         "md5": hashlib.md5(blob).hexdigest()})
    monkeypatch.setattr(cifar10_download.urllib.request, "urlretrieve",
                        lambda url, path: Path(path).write_bytes(blob))
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)
    return blob


def test_a_download_is_never_seen_half_extracted(tmp_path, monkeypatch):
    """Found in review: the archive was extracted straight into data.root, so a run started
    during the extraction (a staggered array job) found the folder, skipped the download
    lock and read a half-written dataset ("file missing", a false md5 mismatch). It is
    extracted aside and renamed into place whole."""
    import tarfile

    from basisconv.cifar10_location import find_cifar10

    _serve_archive(tmp_path, monkeypatch)
    root = tmp_path / "new"
    seen = []
    extract = tarfile.TarFile.extractall

    def extract_and_look(self, *args, **kwargs):
        extract(self, *args, **kwargs)
        try:  # what a run started now would find: nothing, so it waits for the lock
            seen.append(find_cifar10(root))
        except DatasetError:
            seen.append(None)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extract_and_look)
    loaded = load_cifar10(root, verify_md5=False, download=True)
    assert seen == [None] and loaded.train_labels.numel() == 50
    assert [p.name for p in root.iterdir() if p.name.startswith(".cifar-10-extracting")] == []


def test_an_interrupted_extraction_leaves_no_half_folder(tmp_path, monkeypatch):
    import tarfile

    _serve_archive(tmp_path, monkeypatch)
    root = tmp_path / "new"
    extract = tarfile.TarFile.extractall

    def disk_full(self, path, *args, **kwargs):
        extract(self, path, *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", disk_full)
    with pytest.raises(DatasetError, match="could not download CIFAR-10 .*No space left"):
        load_cifar10(root, verify_md5=False, download=True)
    assert not (root / "cifar-10-batches-py").exists()
    assert not [p for p in root.iterdir() if p.is_dir()]
    monkeypatch.setattr(tarfile.TarFile, "extractall", extract)  # the next try completes
    assert load_cifar10(root, verify_md5=False, download=True).test_labels.numel() == 10


def test_a_killed_extractions_leftover_is_removed_and_a_full_disk_is_one_line(tmp_path,
                                                                           monkeypatch):
    """Found in review: a SIGKILLed extraction's hidden staging folder (a whole copy of the
    dataset) stayed for good; and a staging folder that could not be made was a traceback."""
    import errno

    from basisconv import cifar10_download

    _serve_archive(tmp_path, monkeypatch)
    root = tmp_path / "new"
    (root / f"{cifar10_download.STAGING_PREFIX}old" / "cifar-10-batches-py").mkdir(
        parents=True)
    made = cifar10_download.tempfile.mkdtemp

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cifar10_download.tempfile, "mkdtemp", disk_full)
    with pytest.raises(DatasetError, match="could not download CIFAR-10 .*No space left"):
        load_cifar10(root, verify_md5=False, download=True)
    monkeypatch.setattr(cifar10_download.tempfile, "mkdtemp", made)
    assert load_cifar10(root, verify_md5=False, download=True).train_labels.numel() == 50
    assert not list(root.glob(f"{cifar10_download.STAGING_PREFIX}*"))


def test_a_download_over_an_incomplete_folder_says_delete_it(tmp_path, monkeypatch):
    _serve_archive(tmp_path, monkeypatch)
    (tmp_path / "new" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py exists but holds no CIFAR-10 "
                                           r"batch .*delete it"):
        load_cifar10(tmp_path / "new", download=True)


def test_a_download_with_the_wrong_md5_says_so_not_offline(tmp_path, monkeypatch):
    from basisconv import cifar10_download

    monkeypatch.setattr(cifar10_download.urllib.request, "urlretrieve",
                        lambda url, path: Path(path).write_bytes(b"not a tarball"))
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)  # the stdlib path
    with pytest.raises(DatasetError, match=r"^downloaded .* has the wrong md5; delete it "
                                           r"and retry\.$"):
        load_cifar10(tmp_path / "new", download=True)


@pytest.mark.parametrize("archive", ["cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"])
def test_an_archive_never_extracted_is_named(tmp_path, archive):
    """Found in the data review: the published archive copied into data.root and never
    extracted was only 'not found'."""
    (tmp_path / archive).write_bytes(b"an archive")
    with pytest.raises(DatasetError, match=rf"It holds {archive}, never extracted: "
                                           rf"extract it there \(tar -xzf "):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("name", ["cifar-10-binary.tar.gz", "data_batch_1.bin"])
@pytest.mark.parametrize("download", [False, True])
def test_a_file_given_as_data_root_is_said_to_be_one(tmp_path, name, download):
    """data.root at a file (the archive, or one batch file) was "not found: looked in
    .../data_batch_1.bin and its subfolders", and with data.download=true a download
    was tried into it; it is one line saying so, the archive's with how to extract it."""
    (tmp_path / name).write_bytes(b"a file")
    said = r"data\.root is a file, not a folder: .*" + re.escape(name)
    if name.endswith(".tar.gz"):
        said += re.escape(f", the published archive: extract it (tar -xzf {tmp_path / name}")
    with pytest.raises(DatasetError, match=said):
        load_cifar10(tmp_path / name, download=download)


def test_a_download_offline_extracts_the_archive_already_there(tmp_path, monkeypatch):
    """Found in the data review: without torchvision (the CPU torch build cannot import it)
    data.download=true fetched the archive again over one already in data.root, so an
    offline machine failed beside it; torchvision's downloader uses it."""
    from basisconv import cifar10_download

    blob = _serve_archive(tmp_path, monkeypatch)
    root = tmp_path / "new"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(blob)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar10_download.urllib.request, "urlretrieve", offline)
    assert load_cifar10(root, verify_md5=False, download=True).train_labels.numel() == 50


@pytest.mark.parametrize("given", ["root", "env"])
def test_a_root_under_an_unknown_users_home_is_one_error(monkeypatch, given):
    """Found by fuzzing: ``data.root='~alcie/data'`` (a user this machine has not, or
    ``CIFAR10_ROOT`` so) ended in pathlib's RuntimeError "Could not determine home
    directory." and a traceback, naming neither the key nor the fix."""
    root = "~no-such-user-basisconv/cifar"
    if given == "env":
        monkeypatch.setenv("CIFAR10_ROOT", root)
    with pytest.raises(DatasetError, match=r"^data\.root='~no-such-user-basisconv/cifar': "
                                           r"'~no-such-user-basisconv' names no user's home.*"
                                           r"CIFAR10_ROOT"):
        load_cifar10(root if given == "root" else None, download=True)


def test_a_root_under_an_unknown_users_home_is_one_error_where_it_keys_a_table(repo,
                                                                              tmp_path):
    """Found in review of 079095b: own data (``data.verify_md5=false``) is known by its
    folder in the sensitivity cache key and on resume; there ``~alcie/data`` was still
    pathlib's RuntimeError "Could not determine home directory." and a traceback (before
    the data was ever looked for: ``scripts/sensitivity.py``, ``reproduce.sh``'s keys)."""
    from hydra import compose, initialize_config_dir

    from basisconv.same_run import same_data
    from basisconv.sensitivity_key import cache_key

    root = "~no-such-user-basisconv/cifar"
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        cfg = compose("sensitivity", overrides=[
            "profile=smoke", "data=cifar10", f"data.root='{root}'", "data.verify_md5=false",
            f"sensitivity.cache_dir={tmp_path}"])
    with pytest.raises(DatasetError, match=r"^data\.root='~no-such-user-basisconv/cifar': "):
        cache_key(cfg)
    old = {"data.name": "cifar10", "data.verify_md5": False, "data.root": str(tmp_path)}
    with pytest.raises(DatasetError, match=r"names no user's home"):
        same_data(old, {**old, "data.root": root})


def test_normalize_uses_each_channels_own_cifar10_statistics():
    """The published per-channel statistics, written out here (not read from MEAN and STD,
    as test_normalize_standardizes_and_keeps_layout does, which any change to the constants
    passes): red, green and blue in that order, and the true std, not kuangliu's (0.2023,
    0.1994, 0.2010). A pure red pixel is then far above the mean in red and below it in
    green and blue (found by a mutation test: the means of red and blue swapped failed no
    test)."""
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[0, 0] = 255
    expected = [(1 - 0.4914) / 0.2470, (0 - 0.4822) / 0.2435, (0 - 0.4465) / 0.2616]
    torch.testing.assert_close(normalize(red).flatten(), torch.tensor(expected))


def test_the_generated_problems_test_images_are_not_its_training_images():
    """``data=stripes`` draws its test images apart from its training ones: a held-out
    accuracy measured on images the model trained on would pass for learning (found by a
    mutation test: test images taken from the training images' draw failed no test; the
    learning test then passes on memorized images)."""
    data = synthetic_stripes(60, 40, seed=3)
    assert data.train_images.shape[0] == 60 and data.test_images.shape[0] == 40
    train = {bytes(image.flatten().tolist()) for image in data.train_images}
    assert not any(bytes(image.flatten().tolist()) in train for image in data.test_images)


def test_the_test_subset_is_drawn_from_the_test_split(tmp_path):
    """data.test_subset keeps images of the test split, each with its own label: drawn from
    the training split, the held-out accuracy would be measured on images the model trained
    on (found by a mutation test: the subset's indices applied to the training images failed
    no test, as the subset's size, labels' balance and seed were all still right)."""
    from omegaconf import OmegaConf

    from basisconv.data import prepare_data

    write_cifar(tmp_path, n_train=200, n_test=40)
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "verify_md5": False,
                            "download": False, "train_subset": None, "test_subset": 20})
    subset, whole = prepare_data(cfg, 0), load_cifar10(tmp_path, verify_md5=False)
    assert subset.test_images.shape == (20, 3, 32, 32)
    kept = [(whole.test_images == image).flatten(1).all(1).nonzero().flatten().tolist()
            for image in subset.test_images]
    assert all(len(found) == 1 for found in kept), "a test image not of the test split"
    assert torch.equal(whole.test_labels[[found[0] for found in kept]], subset.test_labels)
