"""MedRecon: reconstruct the loaded volume with medrecon (StyleGAN2 priors: CSGM, BRGM, IAGAN).

The module holds no reconstruction code. Its logic writes the selected volume to a temporary
NIfTI file, runs ``PythonSlicer -m medrecon <task> ...`` as a separate process (the UI stays
responsive), streams the progress into the panel, and loads the result - and the uncertainty map
when posterior samples were asked for - as new volume nodes with the geometry medrecon wrote.

medrecon itself is installed into Slicer's Python on first use, after the user agrees (never at
import time). See docs/slicer.md in the medrecon repository.
"""

import enum
import logging
import os
import shlex
import shutil
import sys
import time
from typing import Annotated, Optional, Union

import numpy as np
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from MedReconLib.errors import MedreconInputError, ReconstructionCancelled
from MedReconLib.logic import ReconstructionLogic, ReconstructionResult, ReconstructionRun
from MedReconLib.runner import (
    DEFAULT_PRIOR,
    DEVICES,
    METHODS,
    SHIPPED_PRIORS,
    TASK_LABELS,
    ReconstructionParameters,
    python_module_command,
)

#: Settings key of the pip requirement used to install medrecon (editable in the panel).
REQUIREMENT_SETTING = "MedRecon/Requirement"

#: Milliseconds between two polls of a running reconstruction.
POLL_INTERVAL_MS = 200

def _duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min"``, ``"1 h 05 min"``: a progress bar's time left."""
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    m = int(round(s / 60))
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"


#: "Method" choice meaning: let medrecon pick the prior's default for the task.
DEFAULT_METHOD = "default"


#
# MedRecon
#


class MedRecon(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedRecon")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["medrecon developers"]
        self.parent.helpText = _("""
Reconstruct the selected volume with <b>medrecon</b>: super-resolution, inpainting of a masked
region, undersampled-MRI simulation and reconstruction, deblurring or denoising, by inverting a
pre-trained StyleGAN2 prior (IAGAN, BRGM, CSGM) or with a classical baseline. The result, and an
uncertainty (standard deviation) map when samples are requested, are added as new volumes.
medrecon runs in a separate process; it is installed into Slicer's Python on first use.
""")
        self.parent.acknowledgementText = _("""
medrecon builds on CSGM (Bora et al. 2017), IAGAN (Abu Hussein, Tirer and Giryes) and BRGM
(Marinescu, Moyer and Golland), and on StyleGAN2 (Karras et al.).
""")


#
# Parameter node
#


class Task(enum.Enum):
    """Reconstruction tasks; values are the medrecon CLI subcommands."""

    SR = "sr"
    INPAINT = "inpaint"
    MRI = "mri"
    DEBLUR = "deblur"
    DENOISE = "denoise"

    def label(self) -> str:
        """Text shown in the task selector."""
        return TASK_LABELS[self.value]


@parameterNodeWrapper
class MedReconParameterNode:
    """Parameters of the MedRecon module, saved with the scene.

    inputVolume - The volume to reconstruct.
    task - Which forward model the volume went through (medrecon subcommand).
    mask - Inpainting only: labelmap or segmentation marking the voxels to fill in.
    prior - Shipped prior name (brain_mri, chest_xray) or path to a saved prior; empty: the
        CLI's prior for the task.
    method - Solver or baseline ("default": the prior's default for the task).
    steps - Optimisation steps per slice (0: the method's default).
    device - auto (GPU when available), cuda or cpu.
    seed - Seed of every random choice, for reproducible results.
    samples - Posterior samples for an uncertainty map (0: none).
    scale - Super-resolution factor.
    acceleration, centerFraction - Simulated MRI undersampling.
    noiseSigma - Measurement noise std in generator units ([-1, 1] images).
    extraArguments - Further medrecon CLI options, shell-quoted.
    outputVolume, uncertaintyVolume - Results of the last run.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    task: Task = Task.SR
    mask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    prior: str = ""
    method: Annotated[str, Choice((DEFAULT_METHOD,) + METHODS)] = DEFAULT_METHOD
    steps: Annotated[int, WithinRange(0, 100000)] = 0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    samples: Annotated[int, WithinRange(0, 256)] = 0
    scale: Annotated[int, WithinRange(2, 16)] = 4
    acceleration: Annotated[int, WithinRange(2, 32)] = 4
    centerFraction: Annotated[float, WithinRange(0.01, 0.5)] = 0.08
    noiseSigma: Annotated[float, WithinRange(0.0, 2.0)] = 0.0
    extraArguments: str = ""
    outputVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode


def parametersFromNode(node: MedReconParameterNode) -> ReconstructionParameters:
    """Translate the parameter node into the logic's :class:`ReconstructionParameters`.

    Raises:
        MedreconInputError: The extra arguments are not valid shell syntax.
    """
    try:
        extra = tuple(shlex.split(node.extraArguments or "", posix=(os.name != "nt")))
    except ValueError as exc:
        raise MedreconInputError(
            f"Cannot parse the additional arguments {node.extraArguments!r}: {exc}. "
            "Expected medrecon options such as: --no-bp --plane axial"
        ) from exc
    return ReconstructionParameters(
        task=node.task.value,
        prior=(node.prior or "").strip() or None,
        method=None if node.method == DEFAULT_METHOD else node.method,
        steps=node.steps if node.steps > 0 else None,
        device=node.device,
        seed=int(node.seed),
        samples=int(node.samples),
        scale=int(node.scale),
        acceleration=int(node.acceleration),
        center_fraction=float(node.centerFraction),
        noise_sigma=float(node.noiseSigma),
        extra_args=extra,
    )


#
# MedReconWidget
#


class MedReconWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel (see ScriptedLoadableModuleWidget)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: Optional[ReconstructionRun] = None
        self._timer = None

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the panel from the .ui file and connect it."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedReconLogic()

        self.ui.priorLineEdit.setCompleter(qt.QCompleter(list(SHIPPED_PRIORS), self.ui.priorLineEdit))
        self.ui.requirementLineEdit.text = self.logic.requirement()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.browsePriorButton.connect("clicked(bool)", self.onBrowsePrior)
        self.ui.requirementLineEdit.connect("editingFinished()", self.onRequirementEdited)

        self._setRunning(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: never leave a process running."""
        self._cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module (a run keeps going)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is closing: stop a run (its result would land in a closed scene)."""
        self._cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Recreate the parameter node if the module is shown."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists, is observed, and has an input selected."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[MedReconParameterNode]) -> None:
        """Set and observe the parameter node; the GUI follows it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        node = self._parameterNode
        task = node.task if node else Task.SR
        self.ui.maskLabel.visible = self.ui.maskSelector.visible = task == Task.INPAINT
        self.ui.scaleLabel.visible = self.ui.scaleSpinBox.visible = task == Task.SR
        for widget in (self.ui.accelerationLabel, self.ui.accelerationSpinBox,
                       self.ui.centerFractionLabel, self.ui.centerFractionSpinBox):
            widget.visible = task == Task.MRI
        running = self._run is not None
        missing = []
        if not node or not node.inputVolume:
            missing.append(_("an input volume"))
        if node and task == Task.INPAINT and not node.mask:
            missing.append(_("a mask (labelmap or segmentation)"))
        # an empty prior runs the CLI's prior for the task, as `medrecon TASK` does
        self.ui.priorLineEdit.placeholderText = _("default: {prior}").format(
            prior=DEFAULT_PRIOR.get(task.value, ""))
        self.ui.applyButton.enabled = not running and not missing
        self.ui.applyButton.toolTip = (
            _("Select {what} first.").format(what=", ".join(missing)) if missing
            else _("Run medrecon on the input volume in a separate process.")
        )

    # -- actions -------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        """Start a reconstruction (after offering to install medrecon if it is missing)."""
        if self._run is not None:
            return
        available = False
        with slicer.util.tryWithErrorDisplay(_("Could not check the medrecon installation."), waitCursor=True):
            available = self.logic.isMedreconAvailable()  # a few seconds the first time (imports torch)
        if not available and not self._offerInstall():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start medrecon."), waitCursor=True):
            node = self._parameterNode
            parameters = parametersFromNode(node)
            mask = node.mask if node.task == Task.INPAINT else None
            self.ui.logTextEdit.clear()
            self._run = self.logic.start(node.inputVolume, parameters, mask=mask)
            self._log(_("Running: {command}").format(command=" ".join(self._run.command)))
            self._setRunning(True)
            self._timer.start()

    def onCancelButton(self) -> None:
        """Stop the running reconstruction; nothing is added to the scene."""
        if self._run is not None:
            self._cancelRun()
            self._log(_("Cancelled: no volume was created."))

    def onPoll(self) -> None:
        """Timer slot: forward progress and log lines; finish the run when it ends."""
        run = self._run
        if run is None:
            self._timer.stop()
            return
        for event in run.poll():
            if event.kind == "progress":
                self.ui.progressBar.value = int(round(100 * run.fraction))
                eta = event.data.get("eta_s")
                left = f" (about {_duration(eta)} left)" if isinstance(eta, (int, float)) and eta > 0 else ""
                self.ui.progressBar.setFormat(f"%p% {event.message}{left}")
            elif event.kind in ("log", "error") and event.message.strip():
                self._log(event.message)
        if run.finished:
            self._timer.stop()
            self._run = None
            self._setRunning(False)
            self._onFinished(run)

    def _onFinished(self, run: ReconstructionRun) -> None:
        if run.state == "succeeded":
            result: ReconstructionResult = run.result
            self._parameterNode.outputVolume = result.output_volume
            self._parameterNode.uncertaintyVolume = result.uncertainty_volume
            slicer.util.setSliceViewerLayers(background=result.output_volume, fit=True)
            self._log(_("Done in {seconds:.1f} s: {name}").format(
                seconds=result.seconds, name=result.output_volume.GetName()))
            if result.uncertainty_volume is not None:
                self._log(_("Uncertainty map: {name}").format(name=result.uncertainty_volume.GetName()))
        elif run.state == "failed":
            error = run.error
            details = getattr(error, "log_tail", "")
            self._log(str(error))
            extra = {"detailedText": details} if details else {}
            slicer.util.errorDisplay(_("medrecon failed: {error}").format(error=error), **extra)

    def onInstallButton(self) -> None:
        """Install or update medrecon into Slicer's Python."""
        self._offerInstall(force=True)

    def onRequirementEdited(self) -> None:
        """Remember the pip requirement for the next installation."""
        self.logic.setRequirement(self.ui.requirementLineEdit.text)

    def onBrowsePrior(self) -> None:
        """Pick a prior directory saved by medrecon."""
        path = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Select a medrecon prior directory"))
        if path and self._parameterNode:
            self._parameterNode.prior = path

    # -- helpers -------------------------------------------------------------------------------
    def _offerInstall(self, force: bool = False) -> bool:
        requirement = self.ui.requirementLineEdit.text.strip() or self.logic.requirement()
        question = _(
            "MedRecon runs medrecon, which is not installed in Slicer's Python yet.\n\n"
            "Install '{requirement}' and its dependencies (PyTorch, MONAI, ...) now? "
            "This downloads several GB and can take a few minutes."
        ) if not force else _("Install or update '{requirement}' into Slicer's Python now?")
        if not slicer.util.confirmOkCancelDisplay(question.format(requirement=requirement)):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing medrecon failed."), waitCursor=True):
            self.logic.setRequirement(requirement)
            self.logic.installMedrecon(requirement)
            self._log(_("Installed {requirement}.").format(requirement=requirement))
            return self.logic.isMedreconAvailable()
        return False

    def _cancelRun(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        run, self._run = self._run, None
        if run is not None:
            run.cancel()
        if self._timer is not None:  # widget was set up
            self._setRunning(False)

    def _setRunning(self, running: bool) -> None:
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
            self.ui.progressBar.setFormat("%p%")
        self._updateGui()

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info("MedRecon: %s", text)


#
# MedReconLogic
#


class MedReconLogic(ScriptedLoadableModuleLogic, ReconstructionLogic):
    """Reconstruction logic usable without the GUI (see MedReconLib.logic.ReconstructionLogic).

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("MedRecon")
        params = MedReconLib.ReconstructionParameters(task="sr", scale=4, steps=300)
        result = logic.process(getNode("MRHead"), params)   # blocking
        run = logic.start(getNode("MRHead"), params)        # non-blocking: run.poll(), run.cancel()

    Args:
        command: Command that runs medrecon; default ``[PythonSlicer, "-m", "medrecon"]``.
    """

    def __init__(self, command=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ReconstructionLogic.__init__(
            self,
            command=command if command is not None else self.defaultCommand(),
            env=_childEnvironment(),
            temp_root=slicer.app.temporaryPath if hasattr(slicer, "app") else None,
        )

    def getParameterNode(self):
        """The module's (typed) parameter node."""
        return MedReconParameterNode(super().getParameterNode())

    @staticmethod
    def defaultCommand() -> list:
        """``[PythonSlicer, "-m", "medrecon"]``: Slicer's own Python, in a separate process."""
        python = shutil.which("PythonSlicer")
        if python is None:  # e.g. a build tree: PythonSlicer lives beside the Slicer executable
            candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer")
            python = candidate + (".exe" if os.name == "nt" else "")
            if not os.path.exists(python):
                python = sys.executable
        return python_module_command(python)

    # -- medrecon installation (on request only, never at import time) -------------------------
    def isMedreconAvailable(self) -> bool:
        """Whether medrecon can run in the configured interpreter (a positive answer is cached).

        A custom command (not ``<python> -m medrecon``) is trusted as given.
        """
        if getattr(self, "_medreconAvailable", False):
            return True
        if self.command[-2:] != ["-m", "medrecon"]:
            return True
        import subprocess

        try:
            proc = subprocess.run(self.command[:-2] + ["-c", "import medrecon.cli"],
                                  capture_output=True, timeout=300, env=self.env)
        except (OSError, subprocess.TimeoutExpired):
            return False
        self._medreconAvailable = proc.returncode == 0
        return self._medreconAvailable

    def requirement(self) -> str:
        """pip requirement used to install medrecon (setting, else Resources/requirements.txt)."""
        stored = qt.QSettings().value(REQUIREMENT_SETTING)
        if stored:
            return str(stored)
        path = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        return " ".join(lines) or "medrecon"

    def setRequirement(self, requirement: str) -> None:
        """Remember a pip requirement (e.g. a wheel path or ``git+https://...``) for installs."""
        qt.QSettings().setValue(REQUIREMENT_SETTING, requirement.strip())

    def installMedrecon(self, requirement: Optional[str] = None) -> None:
        """Install medrecon and its dependencies into Slicer's Python.

        PyTorch is installed first through the PyTorch extension when it is present (it picks
        the build matching the GPU driver); pip then installs medrecon.

        Args:
            requirement: pip requirement; default :meth:`requirement`.
        """
        requirement = requirement or self.requirement()
        try:
            import PyTorchUtils  # from the "PyTorch" Slicer extension, if installed

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.2")
        except ImportError:
            logging.info("MedRecon: PyTorch extension not found; pip installs the default torch build.")
        slicer.util.pip_install(requirement)
        self._medreconAvailable = False  # re-check on next use

    # -- display ---------------------------------------------------------------------------------
    def on_volume_imported(self, node, role: str) -> None:
        """Give new result volumes display nodes; the uncertainty map gets a heat colormap."""
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None and role == "uncertainty":
            colorNode = node.GetScene().GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt")
            if colorNode is not None:
                display.SetAndObserveColorNodeID(colorNode.GetID())


def _childEnvironment() -> Optional[dict]:
    """Environment for PythonSlicer: the one Slicer was started with (as launchConsoleProcess)."""
    try:
        return slicer.util.startupEnvironment()
    except Exception:  # outside the application
        return None


#
# MedReconTest
#


class MedReconTest(ScriptedLoadableModuleTest):
    """Self-test: runs inside Slicer (Reload & Test, or ``slicer_add_python_unittest``).

    It uses the stand-in CLI of MedReconLib.standin (no medrecon or prior needed) to check the
    plumbing: node -> file -> process -> file -> node, with an oblique geometry, progress,
    cancel and the parameter-node-driven widget.
    """

    def setUp(self):
        """Reset the scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run all tests."""
        self.setUp()
        self.test_MedRecon_SuperResolutionGeometry()
        self.setUp()
        self.test_MedRecon_CancelLeavesNothing()
        self.setUp()
        self.test_MedRecon_Widget()

    def _standInLogic(self, **env):
        import MedReconLib.standin

        python = MedReconLogic.defaultCommand()[0]
        logic = MedReconLogic(command=[python, MedReconLib.standin.__file__])
        logic.env = dict(logic.env or os.environ, **env)
        return logic

    def _obliqueVolume(self):
        angle = 0.35
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                             [np.sin(angle), np.cos(angle), 0.0],
                             [0.0, 0.0, 1.0]])
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = rotation @ np.diag([0.7, 0.8, 2.5])
        ijkToRas[:3, 3] = [12.5, -30.25, 7.0]
        array = np.random.default_rng(0).normal(size=(3, 5, 6)).astype(np.float32)
        volume = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRas, name="MedReconTestInput")
        return volume, array, rotation

    def test_MedRecon_SuperResolutionGeometry(self):
        """SR x2 with the stand-in: spacing / 2 in-plane, same direction and field of view."""
        self.delayDisplay("Super-resolution geometry")
        volume, array, rotation = self._obliqueVolume()
        logic = self._standInLogic()
        progress = []
        result = logic.process(volume, ReconstructionParameters(task="sr", method="brgm", scale=2, samples=2),
                               timeout=120, progress_callback=lambda f, m: progress.append(f))
        out = result.output_volume
        np.testing.assert_allclose(out.GetSpacing(), (0.35, 0.4, 2.5), rtol=1e-5)
        directions = np.zeros((3, 3))
        out.GetIJKToRASDirections(directions)
        np.testing.assert_allclose(directions, rotation, atol=1e-5)
        cornerIn = np.array(volume.GetOrigin()) - rotation @ (0.5 * np.array(volume.GetSpacing()))
        cornerOut = np.array(out.GetOrigin()) - rotation @ (0.5 * np.array(out.GetSpacing()))
        np.testing.assert_allclose(cornerOut, cornerIn, atol=1e-4)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(out),
                                   np.repeat(np.repeat(array, 2, axis=2), 2, axis=1), rtol=1e-6)
        self.assertIsNotNone(result.uncertainty_volume)
        self.assertEqual(progress[-1], 1.0)
        self.delayDisplay("Super-resolution geometry passed")

    def test_MedRecon_CancelLeavesNothing(self):
        """Cancelling a run creates no node and removes the temporary directory."""
        self.delayDisplay("Cancel")
        volume, _array, _rotation = self._obliqueVolume()
        logic = self._standInLogic(MEDRECON_STANDIN_SLEEP="0.2", MEDRECON_STANDIN_STEPS="300")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        run = logic.start(volume, ReconstructionParameters(task="denoise"))
        for _attempt in range(200):
            run.poll()
            if run.fraction > 0:
                break
            slicer.app.processEvents()
            time.sleep(0.025)
        run.cancel()
        self.assertEqual(run.state, "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertFalse(os.path.exists(run.workdir))
        with self.assertRaises(ReconstructionCancelled):
            run.wait()
        self.delayDisplay("Cancel passed")

    def test_MedRecon_Widget(self):
        """The panel follows the parameter node and enables Apply only when it can run."""
        self.delayDisplay("Widget")
        slicer.util.selectModule("MedRecon")
        widget = slicer.modules.MedReconWidget
        node = widget.logic.getParameterNode()
        node.inputVolume = None
        self.assertFalse(widget.ui.applyButton.enabled)
        volume, _array, _rotation = self._obliqueVolume()
        node.inputVolume = volume
        node.task = Task.SR
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertTrue(widget.ui.scaleSpinBox.visible)
        node.task = Task.INPAINT
        self.assertFalse(widget.ui.applyButton.enabled)  # no mask yet
        self.assertTrue(widget.ui.maskSelector.visible)
        node.steps = 25
        self.assertEqual(widget.ui.stepsSpinBox.value, 25)
        parameters = parametersFromNode(node)
        self.assertEqual((parameters.task, parameters.steps), ("inpaint", 25))
        self.delayDisplay("Widget passed")
