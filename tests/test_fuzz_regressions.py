"""Inputs found by benchmarks/fuzz.py (atheris) that once escaped the documented error types, kept as tests."""
import io
import zipfile

import pytest

import vitfiqa
from vitfiqa.eval import CorruptEntry, load_ijbc_meta, load_lfw_pairs, load_pair_list


def _rezip(blob: bytes, edit) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info.filename)))
    return out.getvalue()


def test_model_with_damaged_code_record_is_a_value_error(model_cases):
    """A byte changed in a TorchScript code record: the compiler's error (not a c10::Error) quoted the raw,
    non-UTF-8 source line, and came out as a UnicodeDecodeError from pybind11."""
    blob = open(model_cases["insightface-script"].path, "rb").read()

    def damage(name, data):
        return data.replace(b"def forward(", b"def forw\xc1rd(", 1) if name.endswith(".py") else data

    bad = _rezip(blob, damage)
    assert bad != blob
    with pytest.raises(ValueError, match="could not load a TorchScript model from bytes .*: .*\\?"):
        vitfiqa.load(bad)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_model_is_a_value_error(model_cases, fraction):
    blob = open(model_cases["insightface-script"].path, "rb").read()
    with pytest.raises(ValueError, match="could not load a TorchScript model"):
        vitfiqa.load(blob[:int(len(blob) * fraction)] or b"\0")


def test_list_files_that_are_not_utf8_are_corrupt_entries(tmp_path):
    """Non-UTF-8 bytes in a pair list or IJB-C meta file raised a bare UnicodeDecodeError."""
    (tmp_path / "image_path_list.txt").write_bytes(b"a.png\nb\xb7.png\n")
    (tmp_path / "pair_list.txt").write_text("0 1 1\n")
    with pytest.raises(CorruptEntry, match="image_path_list.txt line 2: not UTF-8 text"):
        load_pair_list(tmp_path)
    (tmp_path / "pairs.txt").write_bytes(b"Ann 1 2\n\xed\n")
    with pytest.raises(CorruptEntry, match="pairs.txt line 2: not UTF-8"):
        load_lfw_pairs(tmp_path, tmp_path / "pairs.txt")
    (tmp_path / "ijbc_face_tid_mid.txt").write_bytes(b"1.jpg 10 100\n\xd1\n")
    (tmp_path / "ijbc_template_pair_label.txt").write_text("10 10 1\n")
    with pytest.raises(CorruptEntry, match="ijbc_face_tid_mid.txt line 2"):
        load_ijbc_meta(tmp_path)


def _patch_central_directory(blob: bytes, version: int | None = None, bad_utf8_name: bool = False) -> bytes:
    b = bytearray(blob)
    cd = blob.index(b"PK\x01\x02")  # the first central-directory entry
    if version is not None:
        b[cd + 6:cd + 8] = version.to_bytes(2, "little")  # version needed to extract
    if bad_utf8_name:
        flags = int.from_bytes(b[cd + 8:cd + 10], "little") | 0x800  # "file name is UTF-8"
        b[cd + 8:cd + 10] = flags.to_bytes(2, "little")
        b[cd + 46 + 3] = 0x85  # ... and it is not
    return bytes(b)


def test_damaged_zip_directory_is_a_value_error(model_cases):
    """The input-contract reader (Python's zipfile on the model archive) let NotImplementedError ('zip file
    version 24.7') and UnicodeDecodeError (a non-UTF-8 name flagged as UTF-8) escape."""
    from vitfiqa.models import read_input_contract

    blob = open(model_cases["insightface-script"].path, "rb").read()
    with pytest.raises(ValueError, match="zip directory is damaged \\(NotImplementedError"):
        vitfiqa.load(_patch_central_directory(blob, version=247))
    with pytest.raises(ValueError, match="zip directory is damaged \\(UnicodeDecodeError"):
        read_input_contract(_patch_central_directory(blob, bad_utf8_name=True))
    with pytest.raises(ValueError):
        vitfiqa.load(_patch_central_directory(blob, bad_utf8_name=True))
