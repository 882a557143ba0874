"""Users' files are sacred: a catalogue of bad inputs, hostile files and unlucky paths.

Every case says what medrecon must do: exit 2 with one line naming the problem and the fix,
before any long computation, never touching an input or a foreign file, never leaving a
partial output, never allocating what a file cannot back. Cases come from issue reports and
from trying medrecon as a careful and as a hostile user; add new ones here as users hit them.

Everything runs through :func:`medrecon.cli.main` (the console entry point, exit codes
included) or the public Python API, on tiny files the tests make.
"""

from __future__ import annotations

import copy
import errno
import gzip
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medrecon.cli import main
from medrecon.errors import CheckpointError, MedreconInputError
from medrecon.io import MedicalImage, load_image, save_image
from medrecon.io.outputs import OutputExistsError, OutputStage, os_error_message

R = 16


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory) -> Path:
    from medrecon.priors import save_prior
    from tests._tiny import tiny_prior

    d = tmp_path_factory.mktemp("prior") / "tiny"
    save_prior(tiny_prior(resolution=R, seed=0), d)
    return d


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((R, R)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    m = np.zeros((R, R), np.uint8)
    m[4:8, 4:8] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    return tmp_path


def cli(*args, capsys=None) -> tuple[int, str]:
    """Run the console entry point; return (exit code, stderr + stdout)."""
    code = main([str(a) for a in args])
    text = ""
    if capsys is not None:
        out = capsys.readouterr()
        text = out.err + out.out
    return code, text


def digest(path: Path) -> str:
    p = Path(path)
    if p.is_dir():
        return "".join(f"{q.name}:{digest(q)}" for q in sorted(p.iterdir()))
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert ".part" not in text, text  # never a temporary file name
    return lines[0]


def sr(*extra, prior_dir):
    return ("sr", "img.png", "--prior", prior_dir, "--method", "bicubic", "-q", *extra)


# ------------------------------------------------------------------ data loss
@pytest.mark.parametrize("target", ["mask.png", "img.png"])
def test_output_onto_any_input_is_refused_even_with_overwrite(work, prior_dir, capsys, target):
    before = {p: digest(work / p) for p in ("img.png", "mask.png")}
    code, text = cli("inpaint", "img.png", "--mask", "mask.png", "-o", target, "--overwrite",
                     "--prior", prior_dir, "--method", "biharmonic", "-q", capsys=capsys)
    assert code == 2 and "never writes over" in one_error_line(text)
    assert {p: digest(work / p) for p in before} == before


def test_output_inside_or_around_an_input_folder_is_refused(work, prior_dir, capsys):
    series = work / "series"
    series.mkdir()
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    src.save_as(series / "a.dcm")
    before = digest(series)
    for out in (series / "x.nii.gz", series / "sub" / "x.nii.gz"):
        code, text = cli("sr", series, "-o", out, "--prior", prior_dir, "--method", "bicubic",
                         "-q", "--overwrite", capsys=capsys)
        assert code == 2 and "never writes over" in one_error_line(text)
    code, text = cli("sr", "img.png", "-o", prior_dir / "out.png", "--prior", prior_dir,
                     "--method", "bicubic", "-q", capsys=capsys)  # the prior's files too
    assert code == 2 and "never writes over" in one_error_line(text)
    # an output folder that would contain the input
    code, text = cli("sr", series / "a.dcm", "-o", f"{series}/", "--overwrite", "--prior",
                     prior_dir, "--method", "bicubic", "-q", capsys=capsys)
    assert code == 2 and digest(series) == before


def test_dicom_series_overwrite_never_removes_foreign_files(work, prior_dir, capsys):
    folder = work / "some_folder"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    code, text = cli(*sr("-o", f"{folder}/", "--overwrite", prior_dir=prior_dir), capsys=capsys)
    assert code == 2 and "did not write" in one_error_line(text)
    assert (folder / "thesis.txt").read_text() == "years of work" and tree(folder) == {"thesis.txt"}
    # a previous medrecon series is replaced with --overwrite, refused without
    out = work / "series_out"
    assert cli(*sr("-o", f"{out}/", prior_dir=prior_dir))[0] == 0
    assert tree(out) == {"IM00001.dcm"}
    code, text = cli(*sr("-o", f"{out}/", prior_dir=prior_dir), capsys=capsys)
    assert code == 2 and "already exists" in one_error_line(text)
    assert cli(*sr("-o", f"{out}/", "--overwrite", prior_dir=prior_dir))[0] == 0
    assert tree(out) == {"IM00001.dcm"}
    # a foreign DICOM file named like ours is foreign too
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(out / "IM00002.dcm")
    code, text = cli(*sr("-o", f"{out}/", "--overwrite", prior_dir=prior_dir), capsys=capsys)
    assert code == 2 and "IM00002.dcm" in one_error_line(text)
    assert {p.name for p in work.iterdir() if p.name.startswith(".")} == set()


def test_eval_out_rules(work, prior_dir, capsys):
    gt = work / "gt"
    gt.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((R, R)) * 255).astype(np.uint8)).save(
            gt / f"g{i}.png")
    base = ("eval", "--prior", prior_dir, "--task", "sr", "--scale", "2", "--methods",
            "bicubic", "--images", gt, "--no-lpips", "--out")
    # inside the ground truths: refused before any work
    code, text = cli(*base, gt / "report", capsys=capsys)
    assert code == 2 and "--images" in text and not (gt / "report").exists()
    code, text = cli(*base, gt, capsys=capsys)
    assert code == 2 and tree(gt) == {"g0.png", "g1.png"}
    out = work / "report"
    assert cli(*base, out)[0] == 0
    first = digest(out)
    code, text = cli(*base, out, capsys=capsys)
    assert code == 2 and "--overwrite" in text and digest(out) == first
    (out / "notes.txt").write_text("mine")
    assert cli(*base, out, "--overwrite", "--grid-images", "0")[0] == 0
    assert tree(out) == {"results.csv", "summary.md", "settings.json", "notes.txt"}  # stale grid gone
    assert (out / "notes.txt").read_text() == "mine"
    # a user's file with a report file's name, beside a report: never replaced nor removed
    (out / "grid.png").write_bytes((gt / "g0.png").read_bytes())
    (out / "calibration.csv").write_text("mine\n")
    code, text = cli(*base, out, "--overwrite", "--grid-images", "0", capsys=capsys)
    assert code == 2 and "report did not write" in text
    assert (out / "grid.png").read_bytes() == (gt / "g0.png").read_bytes()
    assert (out / "calibration.csv").read_text() == "mine\n"
    (out / "grid.png").unlink(), (out / "calibration.csv").unlink()
    assert cli(*base, out, "--overwrite")[0] == 0  # its own grid.png: replaced next time
    assert cli(*base, out, "--overwrite", "--grid-images", "0")[0] == 0
    assert "grid.png" not in tree(out)
    # a settings.json without the list of the files it wrote (written by hand, or by a report
    # older than the list) vouches for none of them: they were replaced
    settings = json.loads((out / "settings.json").read_text())
    del settings["report_files"]
    (out / "settings.json").write_text(json.dumps(settings))
    (out / "results.csv").write_text("mine\n")
    code, text = cli(*base, out, "--overwrite", capsys=capsys)
    assert code == 2 and "report did not write" in text and "results.csv" in text
    assert (out / "results.csv").read_text() == "mine\n"
    # a results.csv medrecon did not write is never replaced
    other = work / "other"
    other.mkdir()
    (other / "results.csv").write_text("a,b\n")
    code, text = cli(*base, other, "--overwrite", capsys=capsys)
    assert code == 2 and (other / "results.csv").read_text() == "a,b\n"
    # the list file of --images may sit in --out (names differ), but is never written over
    lst = work / "listed"
    lst.mkdir()
    (lst / "settings.json").write_text("gt/g0.png\n")
    code, text = cli(*base[:-4], "--images", lst / "settings.json", "--no-lpips", "--out", lst,
                     capsys=capsys)
    assert code == 2 and "would write over the input" in text
    assert (lst / "settings.json").read_text() == "gt/g0.png\n"
    # images named by a list file (or one by one): the report never goes beside them
    (gt / "list.txt").write_text("g0.png\ng1.png\n")
    for images in (gt / "list.txt", gt / "g0.png"):
        code, text = cli(*base[:-4], "--images", images, "--no-lpips", "--out", gt,
                         capsys=capsys)
        assert code == 2 and "folder of the ground truth" in text
    assert tree(gt) == {"g0.png", "g1.png", "list.txt"}


def _pickle(work: Path) -> Path:
    from tests._tiny import tiny_discriminator, tiny_generator
    from tests.test_checkpoints import write_nvidia_pickle

    pkl = work / "net.pkl"
    write_nvidia_pickle(pkl, G=tiny_generator(resolution=R, seed=1),
                        D=tiny_discriminator(resolution=R, seed=3),
                        G_ema=tiny_generator(resolution=R, seed=2))
    return pkl


def test_priors_import_never_replaces_without_overwrite(work, capsys):
    from medrecon.priors import load_prior

    pkl = _pickle(work)
    imp = ("priors", "import", pkl, "--w-samples", "20", "-o")
    assert cli(*imp, work / "p")[0] == 0
    (work / "p" / "folds.json").write_text("{}")  # a training record of the old network
    before = digest(work / "p")
    code, text = cli(*imp, work / "p", capsys=capsys)
    assert code == 2 and "--overwrite" in one_error_line(text) and digest(work / "p") == before
    # the generator file of a prior alone: refused, the prior still loads
    code, text = cli(*imp, work / "p" / "generator.safetensors", "--overwrite", capsys=capsys)
    assert code == 2 and "would no longer load" in one_error_line(text)
    load_prior(work / "p")
    # an existing file where the prior folder should go
    code, text = cli(*imp, work / "img.png", capsys=capsys)
    assert code == 2 and "is a file" in one_error_line(text)
    # with --overwrite the whole prior is replaced: the stale folds.json goes with it
    assert cli(*imp, work / "p", "--overwrite")[0] == 0
    assert tree(work / "p") == {"generator.safetensors", "generator.json", "w_stats.safetensors",
                                "prior.json", "model.pt"}
    load_prior(work / "p")
    # a folder of other files is never replaced
    (work / "mine").mkdir()
    (work / "mine" / "data.csv").write_text("x")
    code, text = cli(*imp, work / "mine", "--overwrite", capsys=capsys)
    assert code == 2 and tree(work / "mine") == {"data.csv"}
    # a bare network file: exclusive unless --overwrite
    assert cli(*imp, work / "bare" / "g.safetensors")[0] == 0
    assert tree(work / "bare") == {"g.safetensors", "g.json"}
    code, text = cli(*imp, work / "bare" / "g.safetensors", capsys=capsys)
    assert code == 2 and "already exists" in one_error_line(text)
    assert cli(*imp, work / "bare" / "g.safetensors", "--overwrite")[0] == 0  # its own pair
    # --overwrite never replaces a user's file of the pair's names (it replaced both halves)
    (work / "u").mkdir()
    (work / "u" / "net.json").write_text('{"my": "notes"}')
    (work / "u" / "w.safetensors").write_text("my weights")
    for target in ("net.safetensors", "w.safetensors"):
        code, text = cli(*imp, work / "u" / target, "--overwrite", capsys=capsys)
        assert code == 2 and "not a medrecon network file" in one_error_line(text)
    assert (work / "u" / "net.json").read_text() == '{"my": "notes"}'
    assert (work / "u" / "w.safetensors").read_text() == "my weights"
    assert not [p for p in work.rglob(".*")]


def test_concurrent_runs_to_one_new_output_exactly_one_wins(work, prior_dir):
    """Both runs pass the "output exists" check before either writes (a barrier in the
    progress callback): the exclusive creation lets one win, the other gets exit 2."""
    from medrecon.pipeline import reconstruct_file

    barrier = threading.Barrier(2, timeout=30)
    results: dict[int, object] = {}

    def run(k: int) -> None:
        def cb(event):
            if event.get("fraction") == 0.0:
                barrier.wait()
        try:
            res = reconstruct_file("img.png", "race.png", task="sr", prior=prior_dir,
                                   method="bicubic", scale=2, seed=k, callback=cb)
            results[k] = res
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], OutputExistsError), results
    # the loser learns it at the final check or at the exclusive commit, whichever it reaches
    assert "another program" in str(errors[0]) or "already exists" in str(errors[0])
    assert (work / "race.png").is_file()
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_output_appearing_during_the_run_is_never_replaced(work, prior_dir):
    from medrecon.pipeline import reconstruct_file

    def cb(event):
        if event.get("fraction") == 0.0:
            (work / "late.png").write_bytes(b"someone else's")

    with pytest.raises(OutputExistsError):
        reconstruct_file("img.png", "late.png", task="sr", prior=prior_dir, method="bicubic",
                         scale=2, callback=cb)
    assert (work / "late.png").read_bytes() == b"someone else's"


def test_output_stage_is_all_or_nothing(tmp_path):
    a, b = tmp_path / "new" / "a.txt", tmp_path / "new" / "b.txt"
    with pytest.raises(RuntimeError):
        with OutputStage() as st:
            st.file(a).write_text("a")
            st.file(b).write_text("b")
            raise RuntimeError("the solve failed")
    assert not (tmp_path / "new").exists()  # the folder it created is gone too
    # a conflict on the second output takes the first one back
    (tmp_path / "c.txt").write_text("theirs")
    with pytest.raises(OutputExistsError):
        with OutputStage() as st:
            st.file(tmp_path / "d.txt").write_text("d")
            st.file(tmp_path / "c.txt").write_text("c")
    assert not (tmp_path / "d.txt").exists() and (tmp_path / "c.txt").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


# ------------------------------------------------------------------ resource safety
def _nifti_bomb(path: Path, header_cls, shape) -> None:
    h = header_cls()
    h.set_data_shape(shape)
    h.set_data_dtype(np.float32)
    raw = h.binaryblock + b"\0" * 4 + b"\0" * 64
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


@pytest.mark.parametrize("name,header,shape", [
    ("a.nii", nib.Nifti1Header, (32767, 32767)),
    ("b.nii", nib.Nifti2Header, (100000, 100000)),
    ("c.nii.gz", nib.Nifti1Header, (32767, 32767)),
])
def test_nifti_header_claims_are_bounded_by_the_file(tmp_path, name, header, shape):
    _nifti_bomb(tmp_path / name, header, shape)
    tracemalloc.start()
    try:
        with pytest.raises(MedreconInputError, match="holds only"):
            load_image(tmp_path / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_numpy_and_dicom_claims_are_bounded(tmp_path, work, prior_dir, capsys):
    with open(work / "bomb.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
        f.write(b"\0" * 16)
    code, text = cli("sr", "bomb.npy", "-o", "x.nii.gz", "--prior", prior_dir, "-q",
                     capsys=capsys)
    assert code == 2 and "holds only" in one_error_line(text)
    code, text = cli("mri", "bomb.npy", "-o", "x.nii.gz", "--prior", prior_dir, "-q",
                     capsys=capsys)  # k-space goes through the same check
    assert code == 2 and "holds only" in one_error_line(text)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 10
    ds.save_as(work / "claim.dcm")
    code, text = cli("sr", "claim.dcm", "-o", "x.nii.gz", "--prior", prior_dir, "-q",
                     capsys=capsys)
    assert code == 2 and "holds only" in one_error_line(text)


def test_voxel_bound_can_be_raised(tmp_path, monkeypatch):
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    nib.save(img, str(tmp_path / "v.nii"))
    monkeypatch.setenv("MEDRECON_MAX_VOXELS", "100")
    with pytest.raises(MedreconInputError, match="MEDRECON_MAX_VOXELS"):
        load_image(tmp_path / "v.nii")
    monkeypatch.setenv("MEDRECON_MAX_VOXELS", "1000")
    assert load_image(tmp_path / "v.nii").shape == (8, 8, 8)


@pytest.mark.timeout(60)
def test_devices_pipes_and_link_loops_are_never_read(work, prior_dir, capsys):
    os.symlink("/dev/zero", work / "zero.dcm")
    code, text = cli("sr", "zero.dcm", "--prior", prior_dir, "-q", capsys=capsys)
    assert code == 2 and "character device" in text and "not a regular file" in text
    os.mkfifo(work / "fifo.png")
    code, text = cli("sr", "fifo.png", "--prior", prior_dir, "-q", capsys=capsys)
    assert code == 2 and "named pipe" in text
    os.symlink("loop_b", work / "loop_a")
    os.symlink("loop_a", work / "loop_b")
    code, text = cli("sr", "loop_a", "--prior", prior_dir, "-q", capsys=capsys)
    assert code == 2 and "symbolic link loop" in text and "does not exist" not in text
    os.symlink("gone.png", work / "dangling.png")
    code, text = cli("sr", "dangling.png", "--prior", prior_dir, "-q", capsys=capsys)
    assert code == 2 and "which does not exist" in text
    # inside a DICOM folder, a pipe, a device and a loop are skipped, the real slice read
    series = work / "series"
    series.mkdir()
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(series / "a.dcm")
    os.mkfifo(series / "b.dcm")
    os.symlink("/dev/zero", series / "c.dcm")
    os.symlink("d.dcm", series / "d.dcm")
    assert load_image(series).shape[2] == 1


def test_pickle_allocations_are_bounded(work, capsys):
    class Huge:
        def __reduce__(self):
            from numpy.core.multiarray import _reconstruct
            return (_reconstruct, (np.ndarray, (7 * 2**40,), np.dtype("u1")))

    (work / "huge.pkl").write_bytes(pickle.dumps({"G_ema": Huge()}, protocol=2))
    code, text = cli("priors", "import", "huge.pkl", "-o", "p", capsys=capsys)
    assert code == 2 and "more than the file could hold" in one_error_line(text)
    assert not (work / "p").exists()


def test_pickle_tensor_storage_claims_are_bounded():
    from medrecon.generators.checkpoints import _legacy_storage_bytes, _load_storage_from_bytes

    raw = io.BytesIO()  # what a pickled tensor's storage holds: a legacy torch.save payload
    torch.save(torch.zeros(77).storage(), raw, _use_new_zipfile_serialization=False)
    data = raw.getvalue()
    assert _legacy_storage_bytes(data) == 77 * 4 <= len(data)
    assert _load_storage_from_bytes(data).size() == 77
    # the element count 77 is pickled as BININT1 (K M); claim 2**30 elements instead
    idx = data.index(b"K" + bytes([77]))
    forged = data[:idx] + b"J" + (2**30).to_bytes(4, "little") + data[idx + 2:]
    assert _legacy_storage_bytes(forged) == 4 * 2**30
    with pytest.raises(CheckpointError, match="claims"):
        _load_storage_from_bytes(forged)


def test_torch_zip_checkpoint_is_named_for_what_it_is(work, capsys):
    torch.save({"w": torch.zeros(3)}, work / "state.pkl")
    code, text = cli("priors", "import", "state.pkl", "-o", "p", capsys=capsys)
    line = one_error_line(text)
    assert code == 2 and "torch.save zip checkpoint" in line and "truncated" not in line


# ------------------------------------------------------------------ exit codes and messages
def test_unwritable_places_are_input_errors_naming_the_path(work, prior_dir, capsys):
    (work / "notes.txt").write_text("x")
    os.symlink("out_b.png", work / "out_a.png")
    os.symlink("out_a.png", work / "out_b.png")
    cases = {
        "/proc/medrecon_out.png": "does not accept new files",
        "out_a.png": "symbolic link loop",
        "notes.txt/out.png": "is a file, not a folder",
    }
    for out, needle in cases.items():
        code, text = cli(*sr("-o", out, prior_dir=prior_dir), capsys=capsys)
        line = one_error_line(text)
        assert code == 2 and needle in line and out.split("/")[-1] in line, line
    # environment errors while writing: a full disk, a read-only file system, permissions
    for code_, needle in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                          (errno.EACCES, "permission denied")):
        msg = os_error_message(OSError(code_, os.strerror(code_)), Path("res/out.nii.gz"))
        assert needle in msg and "res/out.nii.gz" in msg
    # ... also when a writer wraps the system's error in an OSError of its own (pydicom on a
    # full disk: "cannot write ...: OSError.")
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as inner:
            raise OSError("write failed") from inner
    except OSError as wrapped:
        assert "no space left" in os_error_message(wrapped, Path("res/out.dcm"))


def test_disk_full_while_writing_leaves_nothing(work, prior_dir, capsys, monkeypatch):
    import medrecon.io.raster as raster

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(raster, "write_raster", full)
    monkeypatch.setattr("medrecon.io.api.write_raster", full)
    code, text = cli(*sr("-o", "sub/out.png", prior_dir=prior_dir), capsys=capsys)
    line = one_error_line(text)
    assert code == 2 and "no space left" in line and "sub/out.png" in line
    assert not (work / "sub").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_output_is_validated_before_the_solve(work, prior_dir, capsys, monkeypatch):
    import medrecon.solvers as solvers

    def never(*a, **k):
        raise AssertionError("the solver ran before the output was validated")

    monkeypatch.setattr(solvers, "solve", never)
    vol = nib.Nifti1Image(np.random.default_rng(0).random((R, R, 3)).astype(np.float32), np.eye(4))
    nib.save(vol, str(work / "vol.nii.gz"))
    for args, needle in (
        (("img.png", "-o", "out.xyz"), "unsupported suffix"),
        (("vol.nii.gz", "-o", "slice.png", "--plane", "axial"), "3D result"),
        (("vol.nii.gz", "-o", "slice.dcm", "--plane", "axial"), "3D result"),
        (("img.png", "-o", "/proc/x.png"), "does not accept"),
    ):
        code, text = cli("sr", *args, "--prior", prior_dir, "--method", "iagan", "-q",
                         capsys=capsys)
        assert code == 2 and needle in one_error_line(text)


def test_mri_on_an_image_needs_simulate(work, prior_dir, capsys):
    code, text = cli("mri", "img.png", "--prior", prior_dir, "--method", "zero_filled", "-q",
                     capsys=capsys)
    assert code == 2 and "--simulate" in one_error_line(text)
    assert not list(work.glob("img_mri*"))
    assert cli("mri", "img.png", "--simulate", "--prior", prior_dir, "--method", "zero_filled",
               "-q")[0] == 0


@pytest.mark.parametrize("task,method,needle", [
    ("sr", "biharmonic", "solves inpainting, not sr"),
    ("sr", "zero_filled", "solves mri, not sr"),
    ("deblur", "bicubic", "solves sr, not deblur"),
])
def test_method_of_another_task_is_named(work, prior_dir, capsys, task, method, needle):
    code, text = cli(task, "img.png", "--prior", prior_dir, "--method", method, "-q",
                     capsys=capsys)
    line = one_error_line(text)
    assert code == 2 and needle in line and "mask" not in line and "float32" not in line


@pytest.mark.parametrize("method", ["biharmonic", "csgm", "tv"])
def test_all_missing_mask_is_one_rule_for_every_method(work, prior_dir, capsys, method):
    Image.fromarray(np.full((R, R), 255, np.uint8)).save(work / "all.png")
    code, text = cli("inpaint", "img.png", "--mask", "all.png", "--prior", prior_dir,
                     "--method", method, "--steps", "2", "-q", capsys=capsys)
    assert code == 2 and "every pixel of slice 1 of 1 as missing" in one_error_line(text)


def test_tiny_images_and_thin_planes_say_what_is_wrong(work, prior_dir, capsys):
    Image.fromarray(np.full((1, 1), 9, np.uint8)).save(work / "dot.png")
    code, text = cli("sr", "dot.png", "--prior", prior_dir, "--method", "bicubic", "-q",
                     capsys=capsys)
    line = one_error_line(text)
    assert code == 2 and "too small" in line and "--plane" not in line
    slab = nib.Nifti1Image(np.random.default_rng(0).random((20, 3, 20)).astype(np.float32),
                           np.eye(4))
    nib.save(slab, str(work / "slab.nii.gz"))
    code, text = cli("sr", "slab.nii.gz", "--plane", "axial", "--prior", prior_dir, "--method",
                     "bicubic", "-q", capsys=capsys)
    line = one_error_line(text)
    assert code == 2 and "20x3" in line and "--plane coronal" in line


def test_demo_failure_leaves_nothing(work, prior_dir, capsys, monkeypatch):
    import medrecon.cli as mcli

    original = mcli._side_by_side

    def broken(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mcli, "_side_by_side", broken)
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(work / "hr.png")
    code, text = cli("demo", "--input", "hr.png", "-o", "demo_out", "--prior", prior_dir,
                     "--method", "bicubic", "-q", capsys=capsys)
    assert code == 2 and "no space left" in one_error_line(text)
    assert not (work / "demo_out").exists()
    monkeypatch.setattr(mcli, "_side_by_side", original)
    # an image under the SSIM window: PSNR only, no advice the CLI user cannot follow
    Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(work / "small.png")
    code, text = cli("demo", "--input", "small.png", "-o", "d2", "--prior", prior_dir,
                     "--method", "bicubic", "--scale", "4", "-q", capsys=capsys)
    assert code == 0 and "win_size" not in text and "SSIM n/a" in text
    assert tree(work / "d2") == {"sr.png", "lanczos_bp.png", "side_by_side.png"}
    # too small for the default x8: refused before any work, with the fix
    code, text = cli("demo", "--input", "small.png", "-o", "d3", "--prior", prior_dir, "-q",
                     capsys=capsys)
    assert code == 2 and "--scale" in one_error_line(text) and not (work / "d3").exists()


def test_json_log_errors_are_json_only(work, prior_dir, capsys):
    for args in (sr("-o", "img.png", "--log-format", "json", prior_dir=prior_dir),
                 ("sr", "nothing.png", "--log-format", "json"),
                 ("sr", "img.png", "--bogus", "--log-format=json")):
        code, text = cli(*args, capsys=capsys)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, text
        event = json.loads(lines[0])
        assert event["event"] == "error" and event["exit_code"] == 2


@pytest.mark.timeout(300)
def test_sigint_exits_130_and_writes_nothing(work, prior_dir):
    import queue

    cmd = [sys.executable, "-m", "medrecon", "sr", "img.png", "-o", "sig.png", "--prior",
           str(prior_dir), "--method", "csgm", "--steps", "100000", "--log-format", "json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a launcher may start the tests with SIGINT ignored (background jobs of a shell): give
    # the child the default disposition, as an interactive terminal would
    p = subprocess.Popen(cmd, cwd=work, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in p.stderr], daemon=True)
    reader.start()
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until the solve runs (its first step event)
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert p.poll() is None, "medrecon ended before it could be interrupted"
            continue
        if '"progress"' in line and "step" in line:
            break
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    reader.join(timeout=5)
    assert not (work / "sig.png").exists()
    assert not [q for q in work.iterdir() if q.name.startswith(".")]


def test_sigterm_while_writing_exits_143_and_leaves_nothing(work, prior_dir, capsys, monkeypatch):
    """kill / timeout / a batch scheduler send SIGTERM: its default action ended the process
    mid-write and left the staged .part file beside the output."""
    import nibabel as nib

    real_save = nib.save

    def save_then_terminated(img, filename):
        real_save(img, filename)  # a (partial) staged file exists now
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here

    monkeypatch.setattr(nib, "save", save_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, text = cli(*sr("-o", "t.nii.gz", prior_dir=prior_dir), capsys=capsys)
    assert code == 143 and "Terminated (SIGTERM); no output was written." in text
    assert not (work / "t.nii.gz").exists()
    assert not [q for q in work.iterdir() if q.name.startswith(".")]
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_wrapped_by_an_import_is_still_143(work, prior_dir, capsys, monkeypatch):
    """A SIGTERM at start-up, raised while a class was created during an import, reached the
    CLI wrapped in a RuntimeError and was reported as an internal error (exit 1)."""
    import medrecon.pipeline as pipeline
    from medrecon.cli import Terminated

    def wrapped(*a, **k):
        raise RuntimeError("Error calling __set_name__") from Terminated()

    monkeypatch.setattr(pipeline, "reconstruct_file", wrapped)
    code, text = cli(*sr("-o", "w.nii.gz", prior_dir=prior_dir), capsys=capsys)
    assert code == 143 and "Terminated (SIGTERM)" in text and "internal error" not in text


# ------------------------------------------------------------------ outputs people can use
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_users_default_permissions(work, prior_dir, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        assert cli(*sr("-o", "f.nii.gz", prior_dir=prior_dir))[0] == 0
        assert cli(*sr("-o", "series/", prior_dir=prior_dir))[0] == 0
        assert cli(*sr("-o", "deep/er/f.png", prior_dir=prior_dir))[0] == 0
    finally:
        os.umask(old)
    assert (work / "f.nii.gz").stat().st_mode & 0o777 == file_mode
    assert (work / "series").stat().st_mode & 0o777 == dir_mode
    assert (work / "series" / "IM00001.dcm").stat().st_mode & 0o777 == file_mode
    assert (work / "deep" / "er" / "f.png").stat().st_mode & 0o777 == file_mode


def test_lossy_conversions_are_said_in_one_line(work, prior_dir, capsys):
    rgba = np.random.default_rng(0).integers(0, 255, (R, R, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(work / "rgba.png")
    code, text = cli("sr", "rgba.png", "--prior", prior_dir, "--method", "bicubic", "-q",
                     capsys=capsys)
    warnings_ = [ln for ln in text.splitlines() if ln.startswith("Warning:")]
    assert code == 0 and len(warnings_) == 2
    assert "alpha" in warnings_[0] and "colour image" in warnings_[1]
    # grey stored as RGB with an opaque alpha loses nothing: no warning
    grey = np.repeat(rgba[..., :1], 3, axis=2)
    Image.fromarray(np.concatenate([grey, np.full((R, R, 1), 255, np.uint8)], 2)).save(
        work / "grey_rgba.png")
    code, text = cli("sr", "grey_rgba.png", "--prior", prior_dir, "--method", "bicubic", "-q",
                     capsys=capsys)
    assert code == 0 and "Warning" not in text


def test_save_image_api_follows_the_same_rules(tmp_path):
    img = MedicalImage(np.random.default_rng(0).random((R, R)).astype(np.float32))
    out = save_image(img, tmp_path / "a.nii.gz")
    with pytest.raises(OutputExistsError):
        save_image(img, out)
    src = copy.deepcopy(img)
    src.meta["source_paths"] = [str(out)]
    with pytest.raises(MedreconInputError, match="never writes over"):
        save_image(src, out, overwrite=True)


def test_an_existing_npy_output_is_refused_for_what_it_is(tmp_path):
    """A .npy that medrecon wrote was refused under --overwrite with 'medrecon did not write
    it': numpy's header has no room for a mark, so no .npy is told apart; the message says so."""
    from medrecon.errors import MedreconInputError
    from medrecon.io import MedicalImage, save_image

    img = MedicalImage(np.zeros((4, 4), np.float32), np.eye(4))
    out = save_image(img, tmp_path / "r.npy")
    with pytest.raises(MedreconInputError, match="a .npy file carries no mark"):
        save_image(img, out, overwrite=True)
    assert np.load(out).shape == (4, 4)
