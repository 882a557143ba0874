"""Tests of the 3D Slicer module (``slicer_extension/MedRecon``).

The logic is exercised against real MRML nodes from the ``slicer-core`` wheel (skipped with a
reason when it is not installed), with a stand-in ``medrecon`` script written here that speaks
the CLI's JSON protocol: it reads the NIfTI the logic wrote, writes a result with an updated
affine, and prints progress/done lines. One test runs the real ``python -m medrecon`` with a tiny
prior when that CLI exists; one runs the module's self-test inside Slicer when a Slicer
executable is available (``SLICER_EXECUTABLE`` or ``Slicer`` on PATH).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "slicer_extension"
MODULE_DIR = EXTENSION / "MedRecon"
MODULE_FILE = MODULE_DIR / "MedRecon.py"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MedReconLib import runner  # noqa: E402  (pure Python, no slicer needed)
from MedReconLib.errors import MedreconInputError, ReconstructionError  # noqa: E402


# --------------------------------------------------------------------------------------------
# A stand-in for the medrecon CLI, speaking its JSON protocol.
# --------------------------------------------------------------------------------------------
FAKE_CLI = textwrap.dedent(
    r'''
    import argparse, json, os, subprocess, sys, time
    import numpy as np
    import nibabel as nib

    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    for opt in ("--prior", "--method", "--steps", "--ensemble", "--device", "--seed", "--samples", "--scale",
                "--mask", "--acceleration", "--center-fraction", "--noise-sigma", "--log-format"):
        p.add_argument(opt)
    p.add_argument("--simulate", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()

    def emit(**event):
        sys.stderr.write(json.dumps(event) + "\n")
        sys.stderr.flush()

    code = int(os.environ.get("FAKE_EXIT", "0"))
    if code:  # as medrecon.cli reports errors: a JSON event, then the one-line message
        message = os.environ.get("FAKE_MESSAGE", "bad input").replace("{input}", repr(a.input))
        if code == 1:
            message = "internal error: RuntimeError: " + message
        if os.environ.get("FAKE_JSON_ERROR", "1") == "1":
            emit(event="error", message=message, exit_code=code)
        sys.stderr.write("Error: " + message + "\n")
        if code == 1:
            sys.stderr.write("Run `medrecon --debug ...` for the traceback, and please report it.\n")
        sys.exit(code)

    pidfile = os.environ.get("FAKE_GRANDCHILD_PIDFILE")
    if pidfile:  # a worker in the same process group, as a real pipeline may start
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(pidfile, "w") as f:
            f.write(str(child.pid))

    sleep = float(os.environ.get("FAKE_SLEEP", "0"))
    print("stand-in medrecon starting", flush=True)
    sys.stderr.write("UserWarning: this line is not JSON\n")
    steps = int(os.environ.get("FAKE_STEPS", "3"))
    for i in range(steps):
        emit(event="progress", fraction=(i + 1) / steps, message=f"step {i + 1}/{steps}")
        time.sleep(sleep)

    img = nib.load(a.input)
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine.copy()
    if a.task == "sr":
        s = int(a.scale)
        data = np.repeat(np.repeat(data, s, axis=0), s, axis=1)
        # voxel i of the fine grid sits at coarse voxel coordinate (i + 0.5) / s - 0.5
        zoom = np.diag([1.0 / s, 1.0 / s, 1.0, 1.0])
        zoom[:2, 3] = (1.0 / s - 1.0) / 2.0
        affine = affine @ zoom
    elif a.task == "inpaint":
        mask = nib.load(a.mask)
        assert np.allclose(mask.affine, img.affine, atol=1e-4), "mask grid differs"
        m = np.asarray(mask.dataobj) != 0
        data = np.where(m, np.float32(1000.0), data)
    else:
        data = 2.0 * data + 1.0
    out = nib.Nifti1Image(data.astype(np.float32), affine)
    a.output = os.environ.get("FAKE_REPORT_OUTPUT") or a.output  # a CLI writing elsewhere
    nib.save(out, a.output)
    std = None
    if a.samples and int(a.samples) > 0:
        name = a.output
        stem, suffix = (name[:-7], ".nii.gz") if name.endswith(".nii.gz") else os.path.splitext(name)
        std = stem + "_std" + suffix
        nib.save(nib.Nifti1Image(np.full(data.shape, 0.25, np.float32), affine), std)
    # as medrecon.cli reports it: the method as it ran (noiseless generative runs add BP)
    method = a.method or "iagan"
    if method in ("iagan", "csgm", "brgm") and not float(a.noise_sigma or 0):
        method += "+bp"
    emit(event="done", output=a.output, std=std, seconds=0.5, argv=sys.argv[1:], method=method)
    '''
)


@pytest.fixture(scope="module")
def fake_cli(tmp_path_factory) -> list:
    pytest.importorskip("nibabel")
    script = tmp_path_factory.mktemp("fake_cli") / "fake_medrecon.py"
    script.write_text(FAKE_CLI)
    return [sys.executable, str(script)]


@pytest.fixture(scope="module")
def slicer_mod():
    return pytest.importorskip(
        "slicer", reason="slicer-core is not installed (pip install slicer-core) - MRML tests skipped"
    )


@pytest.fixture()
def scene(slicer_mod):
    if not hasattr(slicer_mod, "vtkMRMLScene"):
        pytest.skip("this 'slicer' module has no vtkMRMLScene (slicer-core is not installed)")
    return slicer_mod.vtkMRMLScene()


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def _rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


# An oblique (non axis-aligned) direction with a reflection, as scanners write them.
DIRECTION = _rotation([1.0, 2.0, 0.5], 0.4) @ np.diag([-1.0, 1.0, 1.0])
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (12.5, -30.25, 7.0)


def _volume(scene, slicer_mod, array_kji, *, name="scan", spacing=SPACING, origin=ORIGIN,
            direction=DIRECTION, node_class="vtkMRMLScalarVolumeNode"):
    import vtk
    from vtkmodules.util import numpy_support

    node = scene.AddNewNodeByClass(node_class, name)
    k, j, i = array_kji.shape
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(np.ascontiguousarray(array_kji).reshape(-1), deep=True)
    )
    node.SetAndObserveImageData(image)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(direction[r, c]))
    node.SetIJKToRASDirectionMatrix(matrix)
    return node


def _directions(node) -> np.ndarray:
    out = np.zeros((3, 3))
    node.GetIJKToRASDirections(out)
    return out


def _volume_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode"))]


def _logic(command, runs_dir, **kwargs):
    from MedReconLib.logic import ReconstructionLogic

    return ReconstructionLogic(command=command, temp_root=str(runs_dir), **kwargs)


# --------------------------------------------------------------------------------------------
# Pure Python: protocol and command line
# --------------------------------------------------------------------------------------------
def test_parse_line_protocol():
    e = runner.parse_line('{"event": "progress", "fraction": 0.37, "message": "slice 3/10"}\n')
    assert (e.kind, e.fraction, e.message) == ("progress", 0.37, "slice 3/10")
    assert runner.parse_line('{"event": "progress", "fraction": 7}').fraction == 1.0
    assert runner.parse_line('{"event": "progress", "fraction": -1}').fraction == 0.0
    assert runner.parse_line('{"event": "progress", "fraction": "x"}').fraction is None
    done = runner.parse_line('{"event": "done", "output": "/o.nii", "std": null, "seconds": 2}')
    assert done.kind == "done" and done.data["output"] == "/o.nii" and done.data["std"] is None
    err = runner.parse_line('{"event": "error", "message": "no such prior", "exit_code": 2}')
    assert (err.kind, err.message, err.data["exit_code"]) == ("error", "no such prior", 2)
    for line in ("Error: no such prior", "{not json}", '{"event": "other"}', "[1, 2]", ""):
        e = runner.parse_line(line + "\n", stream="stdout")
        assert e.kind == "log" and e.message == line and e.stream == "stdout"


def test_cli_arguments_per_task():
    P = runner.ReconstructionParameters
    sr = P(task="sr", scale=2, steps=7, seed=3, device="cpu", samples=4, method="brgm",
           ensemble=2).cli_arguments("i.nii", "o.nii")
    assert sr[:4] == ["sr", "i.nii", "-o", "o.nii"]
    flags = dict(zip(sr[4::2], sr[5::2]))
    assert sr[-2:] == ["json", "--overwrite"] or sr[-1] == "--overwrite"
    assert "--log-format" in sr and sr[sr.index("--log-format") + 1] == "json"
    assert flags["--scale"] == "2" and flags["--steps"] == "7" and flags["--seed"] == "3"
    assert flags["--device"] == "cpu" and flags["--samples"] == "4" and flags["--prior"] == "chest_xray"
    assert flags["--ensemble"] == "2" and "--ensemble" not in P(task="sr").cli_arguments("i", "o")
    mri = P(task="mri", acceleration=8, center_fraction=0.04, method=None).cli_arguments("i", "o")
    assert "--simulate" in mri and "--method" not in mri and "--scale" not in mri
    assert mri[mri.index("--acceleration") + 1] == "8"
    assert float(mri[mri.index("--center-fraction") + 1]) == 0.04
    inp = P(task="inpaint", noise_sigma=0.1, extra_args=("--no-bp",)).cli_arguments("i", "o", mask_path="m.nii")
    assert inp[inp.index("--mask") + 1] == "m.nii" and inp[-1] == "--no-bp"
    assert float(inp[inp.index("--noise-sigma") + 1]) == 0.1
    assert "--samples" not in P(task="denoise").cli_arguments("i", "o")


def test_defaults_are_the_clis():
    """Without a prior or method the module runs what `medrecon TASK` runs: the CLI's prior
    for the task and the prior's method (it ran brain_mri with iagan for every task)."""
    from medrecon.cli import DEFAULT_PRIOR

    assert runner.DEFAULT_PRIOR == {t: DEFAULT_PRIOR[t] for t in runner.TASKS}
    for task in runner.TASKS:
        p = runner.ReconstructionParameters(task=task)
        args = p.cli_arguments("i", "o", mask_path="m" if task == "inpaint" else None)
        assert "--method" not in args and args[args.index("--prior") + 1] == DEFAULT_PRIOR[task]
        assert p.prior_name == DEFAULT_PRIOR[task]
    mine = runner.ReconstructionParameters(task="mri", prior="/p/prior", method="csgm")
    args = mine.cli_arguments("i", "o")
    assert args[args.index("--prior") + 1] == "/p/prior" and "csgm" in args


def test_module_owned_options_cannot_be_passed_attached_or_clustered():
    """`-o/path` and `-qo` passed the check of `-o` alone, and with the module's --overwrite
    the CLI replaced a file of the user's."""
    from medrecon.limits import MAX_NOISE_SIGMA

    P = runner.ReconstructionParameters
    for extra in (("-o/home/me/result.nii.gz",), ("-qo", "x.nii"), ("-oq",), ("-q",),
                  ("--output=/x.nii",), ("--overwrite",)):
        with pytest.raises(MedreconInputError, match="set by the module"):
            P(extra_args=extra).validate()
    P(extra_args=("--no-bp", "--plane", "axial", "--seed", "3")).validate()
    assert runner.MAX_NOISE_SIGMA == MAX_NOISE_SIGMA
    with pytest.raises(MedreconInputError, match="noise_sigma"):
        P(noise_sigma=5.0).validate()
    P(noise_sigma=2.0).validate()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(task="superres"), "'superres'"),
        (dict(prior=""), "prior"),
        (dict(method="--evil"), "method"),
        (dict(steps=0), "steps"),
        (dict(ensemble=0), "ensemble"),
        (dict(device="tpu"), "'tpu'"),
        (dict(seed=-1), "seed"),
        (dict(samples=1.5), "samples"),
        (dict(scale=1), "scale"),
        (dict(center_fraction=1.5), "center_fraction"),
        (dict(noise_sigma=float("nan")), "noise_sigma"),
        (dict(extra_args="--no-bp"), "shlex"),
        (dict(scale=33), "from 2 to 32"),  # the CLI's ranges, before the CLI is started
        (dict(seed=2**63), "seed"),
        (dict(acceleration=65), "from 1 to 64"),  # the CLI's range
        (dict(samples=2, method="iagan"), "with method 'iagan'"),
        (dict(samples=2), "with the default method"),  # the CLI refuses it too
    ],
)
def test_parameters_reject_bad_values(kwargs, needle):
    with pytest.raises(MedreconInputError) as info:
        runner.ReconstructionParameters(**kwargs).validate()
    assert needle in str(info.value) and "expected" in str(info.value)


def test_parameters_take_what_the_cli_takes():
    """Acceleration 1 and a centre fraction of 1 (the CLI's ranges) were refused."""
    runner.ReconstructionParameters(task="mri", acceleration=1, center_fraction=1.0).validate()


def test_parameters_take_numpy_integers():
    import numpy as np

    runner.ReconstructionParameters(seed=np.int64(3), scale=np.int32(2), samples=np.int64(2),
                                    method="brgm").validate()


@pytest.mark.parametrize("extra", [("-o", "/home/user/scan.nii.gz"), ("--output=x.nii.gz",),
                                   ("--overwrite",), ("--log-format", "text"), ("--mask", "m")])
def test_extra_args_cannot_take_over_what_the_module_sets(extra):
    """-o in the extra arguments wrote, with the module's --overwrite, over any file of the
    user's (the module then loaded it as the result)."""
    with pytest.raises(MedreconInputError, match="set by the module"):
        runner.ReconstructionParameters(extra_args=extra).validate()
    runner.ReconstructionParameters(extra_args=("--no-bp", "--plane", "axial")).validate()


def test_mask_only_with_inpainting():
    with pytest.raises(MedreconInputError, match="needs a mask"):
        runner.ReconstructionParameters(task="inpaint").cli_arguments("i", "o")
    with pytest.raises(MedreconInputError, match="only used by 'inpaint'"):
        runner.ReconstructionParameters(task="sr").cli_arguments("i", "o", mask_path="m")


def test_cli_process_streams_and_cancels_group(tmp_path):
    """The process runner alone: progress arrives while running; cancel kills the whole group."""
    script = tmp_path / "slow.py"
    pidfile = tmp_path / "grandchild.pid"
    script.write_text(textwrap.dedent(f"""
        import json, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        for i in range(1000):
            sys.stderr.write(json.dumps({{"event": "progress", "fraction": i / 1000, "message": str(i)}}) + "\\n")
            time.sleep(0.05)
    """))
    proc = runner.CliProcess([sys.executable, str(script)])
    proc.start()
    events = []
    deadline = time.monotonic() + 20
    while not any(e.kind == "progress" for e in events) and time.monotonic() < deadline:
        events += proc.poll()
        time.sleep(0.02)
    assert any(e.kind == "progress" for e in events) and not proc.finished
    _wait_for(pidfile.exists)
    proc.terminate(timeout=5)
    assert proc.returncode is not None and proc.returncode != 0
    _assert_dead(int(pidfile.read_text()))


def test_cli_process_finishes_when_an_orphan_holds_the_pipes(tmp_path):
    """A worker left behind by the CLI keeps stdout open: the run still ends, the worker dies."""
    pidfile = tmp_path / "orphan.pid"
    script = tmp_path / "leaky.py"
    script.write_text(textwrap.dedent(f"""
        import json, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        sys.stderr.write(json.dumps({{"event": "done", "output": "x", "std": None}}) + "\\n")
    """))
    proc = runner.CliProcess([sys.executable, str(script)])
    proc.start()
    started = time.monotonic()
    proc.wait(timeout=30)
    assert proc.returncode == 0 and proc.done == {"event": "done", "output": "x", "std": None}
    assert time.monotonic() - started < 20
    _assert_dead(int(pidfile.read_text()))


def test_cli_process_missing_executable():
    with pytest.raises(MedreconInputError, match="Cannot start"):
        runner.CliProcess(["/nonexistent/PythonSlicer", "-m", "medrecon"]).start()


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _assert_dead(pid: int, timeout: float = 10.0) -> None:
    """The process is gone or a zombie (killed, not yet reaped by its new parent)."""
    if not sys.platform.startswith("linux"):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError(f"process {pid} survived the cancel")


# --------------------------------------------------------------------------------------------
# The logic against real MRML nodes (slicer-core)
# --------------------------------------------------------------------------------------------
def test_sr_node_in_node_out_geometry(scene, slicer_mod, fake_cli, runs_dir):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 5, 6)).astype(np.float32)  # (K, J, I)
    volume = _volume(scene, slicer_mod, data)
    before = _volume_nodes(scene)
    logic = _logic(fake_cli, runs_dir)
    progress = []
    logs = []
    params = runner.ReconstructionParameters(task="sr", scale=4, steps=5, seed=11, device="cpu")
    result = logic.process(volume, params, progress_callback=lambda f, m: progress.append((f, m)),
                           log_callback=logs.append)
    out = result.output_volume

    # A new node, in the scene, the input untouched.
    assert out is not None and out not in before and out.GetScene() is scene
    assert len(_volume_nodes(scene)) == len(before) + 1 and result.uncertainty_volume is None
    assert out.GetName() == "scan_sr_iagan-bp"  # the method as the CLI reports it ran
    np.testing.assert_allclose(volume.GetSpacing(), SPACING)

    # Geometry: in-plane spacing / 4, same direction, same physical field of view.
    np.testing.assert_allclose(out.GetSpacing(), (SPACING[0] / 4, SPACING[1] / 4, SPACING[2]), rtol=1e-5)
    np.testing.assert_allclose(_directions(out), DIRECTION, atol=1e-5)
    dims_in = np.array(volume.GetImageData().GetDimensions())
    dims_out = np.array(out.GetImageData().GetDimensions())
    np.testing.assert_array_equal(dims_out, dims_in * [4, 4, 1])
    np.testing.assert_allclose(dims_out * np.array(out.GetSpacing()), dims_in * np.array(SPACING), rtol=1e-5)
    # the corner of the field of view (origin minus half a voxel) is the same physical point
    corner_in = np.array(ORIGIN) - DIRECTION @ (0.5 * np.array(SPACING))
    corner_out = np.array(out.GetOrigin()) - DIRECTION @ (0.5 * np.array(out.GetSpacing()))
    np.testing.assert_allclose(corner_out, corner_in, atol=1e-4)

    # Voxel order survived both NIfTI trips: the stand-in repeated I and J.
    got = slicer_mod.util.arrayFromVolume(out)
    np.testing.assert_allclose(got, np.repeat(np.repeat(data, 4, axis=2), 4, axis=1), rtol=1e-6)

    # Progress streamed, non-JSON lines logged, the command carried the parameters.
    assert [f for f, _ in progress] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert any("not JSON" in line for line in logs)
    argv = result.info["argv"]
    assert argv[0] == "sr" and argv[argv.index("--scale") + 1] == "4"
    assert argv[argv.index("--seed") + 1] == "11" and argv[argv.index("--steps") + 1] == "5"
    assert out.GetAttribute("MedRecon.Task") == "sr" and out.GetAttribute("MedRecon.Seed") == "11"
    assert result.seconds == 0.5
    assert list(runs_dir.iterdir()) == []  # temporary files removed


def test_geometry_round_trip_is_exact(scene, slicer_mod, fake_cli, runs_dir):
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    volume = _volume(scene, slicer_mod, data, spacing=(1.3, 0.45, 3.1), origin=(-100.0, 55.5, -7.25))
    result = _logic(fake_cli, runs_dir).process(volume, runner.ReconstructionParameters(task="denoise"))
    out = result.output_volume
    np.testing.assert_allclose(out.GetSpacing(), volume.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), volume.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(_directions(out), _directions(volume), atol=1e-6)
    np.testing.assert_allclose(slicer_mod.util.arrayFromVolume(out), 2 * data + 1)


def test_samples_give_uncertainty_node(scene, slicer_mod, fake_cli, runs_dir):
    volume = _volume(scene, slicer_mod, np.ones((2, 4, 4), np.float32))
    params = runner.ReconstructionParameters(task="deblur", samples=3, method="brgm")
    result = _logic(fake_cli, runs_dir).process(volume, params, output_name="restored")
    std = result.uncertainty_volume
    assert std is not None and std.GetName() == "restored_std" and result.output_volume.GetName() == "restored"
    np.testing.assert_allclose(slicer_mod.util.arrayFromVolume(std), 0.25)
    np.testing.assert_allclose(std.GetSpacing(), SPACING, rtol=1e-5)
    assert std.GetAttribute("MedRecon.Role") == "uncertainty"
    assert list(runs_dir.iterdir()) == []


def test_result_follows_parent_transform(scene, slicer_mod, fake_cli, runs_dir):
    volume = _volume(scene, slicer_mod, np.zeros((1, 3, 3), np.float32))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    out = _logic(fake_cli, runs_dir).process(volume, runner.ReconstructionParameters(task="denoise")).output_volume
    assert out.GetTransformNodeID() == transform.GetID()


@pytest.mark.parametrize("kind", ["labelmap", "segmentation"])
def test_inpaint_mask_reaches_cli_on_input_grid(scene, slicer_mod, fake_cli, runs_dir, kind):
    data = np.zeros((3, 6, 5), np.float32)
    volume = _volume(scene, slicer_mod, data)
    box = np.zeros(data.shape, np.uint8)
    box[1, 2:4, 1:3] = 1  # an off-centre box: a transposed or flipped mask would miss it
    labelmap = _volume(scene, slicer_mod, box, name="hole", node_class="vtkMRMLLabelMapVolumeNode")
    mask = labelmap
    if kind == "segmentation":
        mask = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hole_seg")
        assert slicer_mod.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, mask)
    n_before = scene.GetNumberOfNodes()
    result = _logic(fake_cli, runs_dir).process(
        volume, runner.ReconstructionParameters(task="inpaint"), mask=mask)
    got = slicer_mod.util.arrayFromVolume(result.output_volume)
    np.testing.assert_array_equal(got == 1000.0, box.astype(bool))
    # only the result (and its display/storage helpers, if any) were added: no temporary nodes
    added = [scene.GetNthNode(i) for i in range(n_before, scene.GetNumberOfNodes())]
    assert all(not n.GetName().startswith("MedReconTemporary") for n in added)
    assert result.output_volume in added


def test_a_transformed_labelmap_on_the_inputs_grid_marks_its_world_place(
        scene, slicer_mod, fake_cli, runs_dir):
    """A labelmap on the input's IJK grid under a parent transform was copied voxel for voxel,
    so it filled where it would lie untransformed (the same box on a finer grid, or as a
    segmentation, filled where it is shown). It is now resampled like them."""
    import vtk

    eye = np.eye(3)
    volume = _volume(scene, slicer_mod, np.zeros((1, 10, 10), np.float32), direction=eye,
                     spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    box = np.zeros((1, 10, 10), np.uint8)
    box[0, 2:4, 2:4] = 1
    labelmap = _volume(scene, slicer_mod, box, name="hole",
                       node_class="vtkMRMLLabelMapVolumeNode", direction=eye,
                       spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 4.0)  # +4 mm along R: +4 voxels along I
    shift.SetMatrixTransformToParent(matrix)
    labelmap.SetAndObserveTransformNodeID(shift.GetID())
    result = _logic(fake_cli, runs_dir).process(
        volume, runner.ReconstructionParameters(task="inpaint"), mask=labelmap)
    filled = slicer_mod.util.arrayFromVolume(result.output_volume)[0] == 1000.0
    expected = np.zeros((10, 10), bool)
    expected[2:4, 6:8] = True
    np.testing.assert_array_equal(filled, expected)


def test_labelmap_on_coarser_grid_is_resampled(scene, slicer_mod, fake_cli, runs_dir):
    volume = _volume(scene, slicer_mod, np.zeros((2, 8, 8), np.float32), direction=np.eye(3),
                     spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    coarse = np.zeros((2, 4, 4), np.uint8)
    coarse[:, 0:2, 0:2] = 1  # first 2x2 coarse voxels = first 4x4 fine voxels
    labelmap = _volume(scene, slicer_mod, coarse, name="coarse", node_class="vtkMRMLLabelMapVolumeNode",
                       direction=np.eye(3), spacing=(2.0, 2.0, 1.0), origin=(0.5, 0.5, 0.0))
    result = _logic(fake_cli, runs_dir).process(
        volume, runner.ReconstructionParameters(task="inpaint"), mask=labelmap)
    filled = slicer_mod.util.arrayFromVolume(result.output_volume) == 1000.0
    expected = np.zeros((2, 8, 8), bool)
    expected[:, 0:4, 0:4] = True
    np.testing.assert_array_equal(filled, expected)


def test_a_result_outside_the_run_folder_is_not_loaded(scene, slicer_mod, fake_cli, runs_dir,
                                                       tmp_path):
    """The module loads only what medrecon wrote into its own temporary folder (a result
    reported elsewhere means the output went to a file of the user's)."""
    volume = _volume(scene, slicer_mod, np.ones((2, 3, 4), np.float32))
    env = dict(os.environ, FAKE_REPORT_OUTPUT=str(tmp_path / "elsewhere.nii"))
    before = len(_volume_nodes(scene))
    with pytest.raises(ReconstructionError, match="outside the run.s temporary folder"):
        _logic(fake_cli, runs_dir, env=env).process(volume, runner.ReconstructionParameters())
    assert len(_volume_nodes(scene)) == before and list(runs_dir.iterdir()) == []


def test_cancel_leaves_no_node_no_files_no_process(scene, slicer_mod, fake_cli, runs_dir, tmp_path):
    volume = _volume(scene, slicer_mod, np.ones((2, 3, 4), np.float32))
    pidfile = tmp_path / "grandchild.pid"
    env = dict(os.environ, FAKE_SLEEP="0.2", FAKE_STEPS="500", FAKE_GRANDCHILD_PIDFILE=str(pidfile))
    logic = _logic(fake_cli, runs_dir, env=env, terminate_timeout=5.0)
    n_before = scene.GetNumberOfNodes()
    run = logic.start(volume, runner.ReconstructionParameters(task="sr", scale=2))
    assert run.workdir.is_dir() and (run.workdir / "input.nii").is_file()
    _wait_for(lambda: run.poll() is not None and run.fraction > 0)
    _wait_for(pidfile.exists)
    run.cancel()
    assert run.state == "cancelled" and run.result is None
    assert scene.GetNumberOfNodes() == n_before
    assert not run.workdir.exists() and list(runs_dir.iterdir()) == []
    _assert_dead(int(pidfile.read_text()))
    run.cancel()  # idempotent
    assert run.poll() == []


@pytest.mark.parametrize("json_error", ["1", "0"])
@pytest.mark.parametrize("code, error", [(2, MedreconInputError), (1, ReconstructionError)])
def test_cli_failure_raises_and_leaves_nothing(scene, slicer_mod, fake_cli, runs_dir, code, error,
                                               json_error):
    volume = _volume(scene, slicer_mod, np.ones((1, 2, 2), np.float32))
    env = dict(os.environ, FAKE_EXIT=str(code), FAKE_JSON_ERROR=json_error,
               FAKE_MESSAGE="unknown prior 'x': use medrecon priors list")
    n_before = scene.GetNumberOfNodes()
    with pytest.raises(error) as info:
        _logic(fake_cli, runs_dir, env=env).process(volume, runner.ReconstructionParameters(prior="x"))
    assert "unknown prior 'x': use medrecon priors list" in str(info.value)
    assert "--debug" not in str(info.value) and "Error: internal" not in str(info.value)
    if code == 2:
        assert str(info.value) == "unknown prior 'x': use medrecon priors list"
    else:
        assert info.value.returncode == 1 and "--debug" in info.value.log_tail
    assert scene.GetNumberOfNodes() == n_before and list(runs_dir.iterdir()) == []


def test_cli_errors_name_the_volume_not_its_temporary_export(scene, slicer_mod, fake_cli,
                                                             runs_dir):
    volume = _volume(scene, slicer_mod, np.ones((1, 2, 2), np.float32), name="T1 head")
    env = dict(os.environ, FAKE_EXIT="2", FAKE_MESSAGE="{input} has 1 non-finite voxel(s)")
    logs = []
    with pytest.raises(MedreconInputError) as info:
        _logic(fake_cli, runs_dir, env=env).process(volume, runner.ReconstructionParameters(),
                                                    log_callback=logs.append)
    assert str(info.value) == "the volume 'T1 head' has 1 non-finite voxel(s)"
    # the log lines too (they named a temporary file deleted with the run)
    assert logs and not any("input.nii" in line or str(runs_dir) in line for line in logs)
    # and the events the panel polls (its log showed the temporary path)
    run = _logic(fake_cli, runs_dir, env=env).start(volume, runner.ReconstructionParameters())
    events = []
    while not run.finished:
        events += run.poll()
        time.sleep(0.02)
    said = [e.message for e in events if e.kind in ("log", "error") and e.message.strip()]
    assert any("the volume 'T1 head' has 1 non-finite" in m for m in said), said
    assert not any("input.nii" in m or str(runs_dir) in m for m in said)


def test_a_failure_while_importing_leaves_no_node(scene, slicer_mod, fake_cli, runs_dir):
    """A step after the result node was read (orientation, annotation, a subclass's hook)
    raised from poll() with the state still 'running' and the node left in the scene."""
    from MedReconLib.logic import ReconstructionLogic

    class Failing(ReconstructionLogic):
        def on_volume_imported(self, node, role):
            raise ValueError("hook failed")

    volume = _volume(scene, slicer_mod, np.ones((1, 2, 2), np.float32))
    n_before = scene.GetNumberOfNodes()
    logic = Failing(command=fake_cli, temp_root=str(runs_dir))
    with pytest.raises(ReconstructionError, match="hook failed"):
        logic.process(volume, runner.ReconstructionParameters(task="sr", scale=2))
    assert scene.GetNumberOfNodes() == n_before and list(runs_dir.iterdir()) == []


def test_bad_inputs_are_refused_before_anything_runs(scene, slicer_mod, runs_dir):
    logic = _logic(["/nonexistent/python"], runs_dir)
    volume = _volume(scene, slicer_mod, np.ones((1, 2, 2), np.float32))
    label = _volume(scene, slicer_mod, np.ones((1, 2, 2), np.uint8), name="lab",
                    node_class="vtkMRMLLabelMapVolumeNode")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    rgb = _volume(scene, slicer_mod, np.ones((1, 2, 2), np.float32), name="rgb")
    import vtk
    from vtkmodules.util import numpy_support
    image = vtk.vtkImageData()
    image.SetDimensions(2, 2, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ones((4, 3), np.uint8), deep=True))
    rgb.SetAndObserveImageData(image)
    cases = [
        (None, {}, "No input volume"),
        (label, {}, "labelmap"),
        (empty, {}, "no image data"),
        (rgb, {}, "3 components"),
        (volume, dict(parameters=runner.ReconstructionParameters(task="inpaint")), "needs a mask"),
        (volume, dict(mask=label), "only used by 'inpaint'"),
        (volume, dict(parameters=runner.ReconstructionParameters(task="inpaint"), mask=volume), "Invalid mask"),
        (volume, dict(parameters="sr"), "ReconstructionParameters"),
        (volume, {}, "Cannot start"),
    ]
    for node, kwargs, needle in cases:
        with pytest.raises(MedreconInputError, match=needle):
            logic.start(node, **kwargs)
        assert list(runs_dir.iterdir()) == [], needle
    zero = _volume(scene, slicer_mod, np.zeros((1, 2, 2), np.uint8), name="zero",
                   node_class="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(MedreconInputError, match="marks no voxel"):
        logic.start(volume, runner.ReconstructionParameters(task="inpaint"), mask=zero)
    assert list(runs_dir.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The module file: Slicer conventions, resources, CMake
# --------------------------------------------------------------------------------------------
def _classes(tree) -> dict:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _base_names(cls) -> list:
    return [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in cls.bases]


def test_module_file_follows_slicer_conventions():
    tree = ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))
    classes = _classes(tree)
    expected = {
        "MedRecon": "ScriptedLoadableModule",
        "MedReconWidget": "ScriptedLoadableModuleWidget",
        "MedReconLogic": "ScriptedLoadableModuleLogic",
        "MedReconTest": "ScriptedLoadableModuleTest",
    }
    for name, base in expected.items():
        assert name in classes, f"{name} missing"
        assert base in _base_names(classes[name]), f"{name} must derive from {base}"
    assert "ReconstructionLogic" in _base_names(classes["MedReconLogic"])
    wrapper = classes["MedReconParameterNode"]
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in wrapper.decorator_list)
    test_methods = [f.name for f in classes["MedReconTest"].body if isinstance(f, ast.FunctionDef)]
    assert "runTest" in test_methods and "setUp" in test_methods
    assert any(m.startswith("test_MedRecon") for m in test_methods)
    # Nothing is installed or run at import time: module level holds only imports,
    # definitions, constants and the docstring.
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef,
                                 ast.Assign, ast.AnnAssign, ast.Expr)), ast.unparse(node)
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant), ast.unparse(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] == "medrecon" for n in names), "medrecon imported at load time"
    source = MODULE_FILE.read_text()
    assert "pip_install" in source or "pip_ensure" in source  # installation is offered on use


def test_ui_file_matches_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text())
    wrapper = _classes(tree)["MedReconParameterNode"]
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedRecon.ui").getroot()
    assert ui.tag == "ui" and ui.find("class").text == "MedRecon"
    top = ui.find("widget")
    assert top.get("class") == "qMRMLWidget"
    bound = {}
    names = set()
    for widget in top.iter("widget"):
        names.add(widget.get("name"))
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) <= fields, set(bound) - fields
    assert {"inputVolume", "task", "prior", "method", "steps", "device", "seed", "samples"} <= set(bound)
    for widget in ("applyButton", "cancelButton", "progressBar", "logTextEdit", "installButton"):
        assert widget in names, widget
    # every MRML node selector is given the scene by the top-level widget
    selectors = {w.get("name") for w in top.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.find("receiver").text for c in ui.find("connections")
                 if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and selectors <= connected


def test_icon_and_cmake():
    from PIL import Image

    icon = MODULE_DIR / "Resources" / "Icons" / "MedRecon.png"
    with Image.open(icon) as im:
        assert im.format == "PNG" and im.size == (128, 128)
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module_cmake
    assert "slicer_add_python_unittest" in module_cmake
    listed = [line.strip() for line in module_cmake.splitlines()
              if line.strip().endswith((".py", ".png", ".ui", ".txt")) and "${" not in line]
    listed += ["MedRecon.py", "Resources/Icons/MedRecon.png", "Resources/UI/MedRecon.ui"]
    for rel in listed:
        assert (MODULE_DIR / rel).is_file(), rel
    for path in MODULE_DIR.joinpath("MedReconLib").glob("*.py"):
        assert f"MedReconLib/{path.name}" in module_cmake, f"{path.name} not installed by CMake"
    ext_cmake = (EXTENSION / "CMakeLists.txt").read_text()
    for key in ("project(MedRecon)", "find_package(Slicer REQUIRED)", "add_subdirectory(MedRecon)",
                "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK", "EXTENSION_DEPENDS"):
        assert key in ext_cmake, key


# --------------------------------------------------------------------------------------------
# The real CLI and the in-Slicer self-test, when available
# --------------------------------------------------------------------------------------------
def _real_cli_available() -> bool:
    try:
        import medrecon.cli  # noqa: F401
        import medrecon.priors as priors
        sys.path.insert(0, str(ROOT / "tests"))
        import _tiny  # noqa: F401
    except Exception:
        return False
    return hasattr(priors, "save_prior") and hasattr(_tiny, "tiny_prior")


def test_real_medrecon_cli_with_tiny_prior(scene, slicer_mod, runs_dir, tmp_path):
    if not _real_cli_available():
        pytest.skip("medrecon.cli, medrecon.priors.save_prior or tests/_tiny.tiny_prior not available yet")
    import _tiny
    import medrecon.priors as priors

    prior_path = tmp_path / "tiny_prior"
    priors.save_prior(_tiny.tiny_prior(), prior_path)
    data = np.random.default_rng(1).uniform(size=(2, 8, 8)).astype(np.float32)
    volume = _volume(scene, slicer_mod, data)
    # The child runs in a temporary directory: make this checkout importable even when
    # medrecon is not pip-installed (CI installs it; a developer may run from the tree).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    logic = _logic([sys.executable, "-m", "medrecon"], runs_dir, env=env)
    params = runner.ReconstructionParameters(task="sr", scale=2, prior=str(prior_path), method="csgm",
                                             steps=2, device="cpu", seed=0)
    progress = []
    result = logic.process(volume, params, timeout=300,
                           progress_callback=lambda f, m: progress.append(f))
    out = result.output_volume
    np.testing.assert_allclose(_directions(out), DIRECTION, atol=1e-4)
    np.testing.assert_array_equal(
        np.array(out.GetImageData().GetDimensions()), np.array([8, 8, 2]) * [2, 2, 1])
    np.testing.assert_allclose(out.GetSpacing(), (SPACING[0] / 2, SPACING[1] / 2, SPACING[2]), rtol=1e-4)
    assert np.isfinite(slicer_mod.util.arrayFromVolume(out)).all()
    assert progress and all(0.0 <= f <= 1.0 for f in progress)
    assert list(runs_dir.iterdir()) == []


def _slicer_executable():
    exe = os.environ.get("SLICER_EXECUTABLE") or shutil.which("Slicer")
    return exe if exe and Path(exe).exists() else None


def test_selftest_inside_slicer(tmp_path):
    exe = _slicer_executable()
    if exe is None:
        pytest.skip("no 3D Slicer executable (set SLICER_EXECUTABLE or put Slicer on PATH)")
    code = (
        "import sys, slicer.testing; "
        "slicer.testing.runUnitTest([r'%s'], 'MedRecon')" % str(MODULE_DIR)
    )
    proc = subprocess.run(
        [exe, "--no-splash", "--no-main-window", "--testing", "--disable-cli-modules",
         "--additional-module-paths", str(MODULE_DIR), "--python-code", code],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


# --------------------------------------------------------------------------------------------
# MedRecon.py itself, imported with stand-ins for the parts of Slicer that need the application
# (Qt, ScriptedLoadableModule, parameterNodeWrapper); MRML and slicer.util are the real ones.
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def medrecon_module(slicer_mod, monkeypatch):
    import importlib.util
    import types

    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # as in Slicer: cooperative __init__, module name from class
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self):
            raise NotImplementedError

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls

    class _Validator:
        def __init__(self, *args):
            self.args = args

    pnw.Choice = type("Choice", (_Validator,), {})
    pnw.WithinRange = type("WithinRange", (_Validator,), {})
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("slicer.ScriptedLoadableModule", slm),
                         ("slicer.parameterNodeWrapper", pnw)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("MedRecon", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_logic_runs_without_gui(medrecon_module, scene, slicer_mod, fake_cli, runs_dir):
    logic = medrecon_module.MedReconLogic(command=fake_cli)
    assert logic.moduleName == "MedRecon" and logic.command == fake_cli
    assert logic.isMedreconAvailable()  # a custom command is trusted as given
    default = medrecon_module.MedReconLogic.defaultCommand()
    assert default[-2:] == ["-m", "medrecon"] and os.path.exists(default[0])
    logic.temp_root = str(runs_dir)
    volume = _volume(scene, slicer_mod, np.ones((2, 3, 4), np.float32))
    result = logic.process(volume, runner.ReconstructionParameters(task="sr", method="brgm", scale=2, samples=2))
    assert result.output_volume.GetDisplayNode() is not None  # display nodes made by the module
    assert result.uncertainty_volume.GetDisplayNode() is not None
    assert list(runs_dir.iterdir()) == []


def test_parameter_node_translation(medrecon_module):
    from types import SimpleNamespace

    Task = medrecon_module.Task
    assert [t.value for t in Task] == list(runner.TASKS)
    assert Task.MRI.label() == runner.TASK_LABELS["mri"]
    node = SimpleNamespace(task=Task.MRI, prior=" chest_xray ", method="default", steps=0,
                           device="cpu", seed=5, samples=0, scale=4, acceleration=8,
                           centerFraction=0.04, noiseSigma=0.0, extraArguments="--plane 'axial'")
    p = medrecon_module.parametersFromNode(node)
    assert (p.task, p.prior, p.method, p.steps, p.acceleration, p.seed) == ("mri", "chest_xray", None, None, 8, 5)
    assert p.extra_args == ("--plane", "axial")
    node.prior = "  "  # an empty field: the task's prior, as the CLI chooses it
    assert medrecon_module.parametersFromNode(node).prior is None
    assert [medrecon_module._duration(t) for t in (45, 200, 3900)] == ["45 s", "3 min",
                                                                       "1 h 05 min"]
    node_class = medrecon_module.MedReconParameterNode
    assert (node_class.prior, node_class.method) == ("", medrecon_module.DEFAULT_METHOD)
    node.extraArguments = "--plane 'axial"
    with pytest.raises(MedreconInputError, match="Cannot parse"):
        medrecon_module.parametersFromNode(node)


def test_selftest_standin_cli(scene, slicer_mod, runs_dir):
    """The SimpleITK stand-in used by MedReconTest inside Slicer behaves like the nibabel one."""
    pytest.importorskip("SimpleITK")
    standin = MODULE_DIR / "MedReconLib" / "standin.py"
    data = np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32)
    volume = _volume(scene, slicer_mod, data)
    result = _logic([sys.executable, str(standin)], runs_dir).process(
        volume, runner.ReconstructionParameters(task="sr", method="brgm", scale=2, samples=1))
    out = result.output_volume
    np.testing.assert_allclose(out.GetSpacing(), (SPACING[0] / 2, SPACING[1] / 2, SPACING[2]), rtol=1e-5)
    np.testing.assert_allclose(_directions(out), DIRECTION, atol=1e-5)
    corner_in = np.array(ORIGIN) - DIRECTION @ (0.5 * np.array(SPACING))
    corner_out = np.array(out.GetOrigin()) - DIRECTION @ (0.5 * np.array(out.GetSpacing()))
    np.testing.assert_allclose(corner_out, corner_in, atol=1e-4)
    np.testing.assert_allclose(slicer_mod.util.arrayFromVolume(out),
                               np.repeat(np.repeat(data, 2, axis=2), 2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(slicer_mod.util.arrayFromVolume(result.uncertainty_volume), 0.25)
