"""GUI-free logic of the MedRecon module: node in -> ``medrecon`` process -> new node out.

The module holds no reconstruction code (STYLE rule 13). :class:`ReconstructionLogic` writes the
input volume (and the inpainting mask) to a fresh temporary directory, starts the ``medrecon`` CLI
there as a separate process, and returns a :class:`ReconstructionRun`. Polling the run (from a Qt
timer in the GUI, or :meth:`ReconstructionRun.wait` in scripts) streams progress; when the process
succeeds the result, and the uncertainty map when samples were asked for, are read into new
volume nodes with the geometry the CLI wrote. Cancelling terminates the process group, deletes
the temporary directory and creates no node.

Example (Slicer's Python console, or plain Python with ``slicer-core``)::

    logic = ReconstructionLogic()
    result = logic.process(volumeNode, ReconstructionParameters(task="sr", scale=4, steps=200))
    result.output_volume.GetSpacing()
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import mrml_io
from .errors import MedreconInputError, ReconstructionCancelled, ReconstructionError
from .runner import CliProcess, Event, ReconstructionParameters, python_module_command

#: Exit status of the CLI for bad input / usage errors (its message is user-facing).
EXIT_BAD_INPUT = 2

#: Node attributes recording how a result was made (visible in the Data module).
ATTRIBUTE_PREFIX = "MedRecon."

ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]


@dataclass
class ReconstructionResult:
    """What a finished run produced.

    Attributes:
        output_volume: New ``vtkMRMLScalarVolumeNode`` holding the reconstruction.
        uncertainty_volume: New node with the per-voxel posterior std, or ``None`` when no
            samples were asked for.
        seconds: Wall-clock seconds reported by medrecon (else measured here).
        command: The full command line that ran.
        info: The CLI's final ``done`` JSON object.
    """

    output_volume: Any
    uncertainty_volume: Optional[Any]
    seconds: float
    command: List[str]
    info: Dict[str, Any] = field(default_factory=dict)


class ReconstructionRun:
    """One ``medrecon`` process started by :meth:`ReconstructionLogic.start`.

    States: ``"running"`` -> ``"succeeded"`` | ``"failed"`` | ``"cancelled"``. The temporary
    directory exists only while running; every final state has removed it.

    Attributes:
        state: Current state.
        fraction: Last progress fraction in [0, 1].
        message: Last progress message.
        result: :class:`ReconstructionResult` once succeeded.
        error: The exception describing a failure (``MedreconInputError`` for bad input reported
            by the CLI, :class:`ReconstructionError` otherwise).
        workdir: The temporary directory holding ``input.nii`` / ``output.nii``.
        command: The command line.
    """

    def __init__(
        self,
        *,
        process: CliProcess,
        workdir: Path,
        output_path: Path,
        input_volume: Any,
        output_name: str,
        parameters: ReconstructionParameters,
        on_volume_imported: Optional[Callable[[Any, str], None]] = None,
        terminate_timeout: float = 5.0,
        name_from_method: bool = False,
    ) -> None:
        self._process = process
        self._name_from_method = name_from_method
        self.workdir = workdir
        self._output_path = output_path
        self._input = input_volume
        self._output_name = output_name
        self._parameters = parameters
        self._on_volume_imported = on_volume_imported
        self._terminate_timeout = terminate_timeout
        self._started = time.monotonic()
        self.command: List[str] = list(process.command)
        self.state = "running"
        self.fraction = 0.0
        self.message = "starting"
        self.result: Optional[ReconstructionResult] = None
        self.error: Optional[BaseException] = None

    @property
    def finished(self) -> bool:
        """True in every final state."""
        return self.state != "running"

    def poll(self) -> List[Event]:
        """Read new events; finish the run when the process has exited. Never blocks long.

        Call this from the thread that owns the MRML scene (the GUI thread in Slicer): on
        success it creates the result nodes.

        Returns:
            The events read by this call; log and error lines name the temporary exports as
            the user knows them (:meth:`_named`: the folder is deleted when the run ends).
        """
        if self.finished:
            return []
        events = [dataclasses.replace(e, message=self._named(e.message))
                  if e.kind in ("log", "error") else e for e in self._process.poll()]
        for event in events:
            if event.kind == "progress":
                if event.fraction is not None:
                    self.fraction = event.fraction
                self.message = event.message
        if self._process.finished and not self.finished:
            self._finish()
        return events

    def cancel(self) -> None:
        """Stop the process (whole process group), delete the temporary files, create no node."""
        if self.finished:
            return
        try:
            self._process.terminate(timeout=self._terminate_timeout)
        finally:
            self.state = "cancelled"
            self.message = "cancelled"
            self._cleanup()

    def wait(
        self,
        *,
        timeout: Optional[float] = None,
        interval: float = 0.05,
        progress_callback: Optional[ProgressCallback] = None,
        log_callback: Optional[LogCallback] = None,
    ) -> ReconstructionResult:
        """Block until the run ends; return its result or raise its error.

        Args:
            timeout: Seconds before the run is cancelled and :class:`TimeoutError` raised;
                ``None`` waits forever. Default ``None``.
            interval: Polling interval in seconds. Default 0.05.
            progress_callback: Called as ``(fraction, message)`` on each progress event.
            log_callback: Called with each non-JSON output line and each error message.

        Returns:
            The result.

        Raises:
            MedreconInputError: medrecon rejected the input (exit status 2).
            ReconstructionError: medrecon failed otherwise.
            ReconstructionCancelled: :meth:`cancel` was called (e.g. from a callback).
            TimeoutError: ``timeout`` elapsed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for event in self.poll():
                if event.kind == "progress" and progress_callback is not None:
                    fraction = self.fraction if event.fraction is None else event.fraction
                    progress_callback(fraction, event.message)
                elif event.kind in ("log", "error") and log_callback is not None:
                    log_callback(event.message)
            if self.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"medrecon did not finish within {timeout} s (cancelled)")
            time.sleep(interval)
        if self.state == "succeeded":
            assert self.result is not None
            return self.result
        if self.state == "cancelled":
            raise ReconstructionCancelled("The reconstruction was cancelled; no node was created.")
        assert self.error is not None
        raise self.error

    # -- internals -------------------------------------------------------------------------
    def _finish(self) -> None:
        code = self._process.returncode
        tail = "\n".join(self._process.tail)
        try:
            if code != 0:
                self.error = self._failure(code, tail)
                self.state = "failed"
                return
            try:
                self.result = self._import_results()
            except Exception as exc:  # noqa: BLE001 - any failure: no node, a failed run
                self.error = ReconstructionError(
                    f"medrecon finished but its output could not be loaded: {exc}",
                    returncode=code, log_tail=tail,
                )
                self.state = "failed"
                return
            self.state = "succeeded"
            self.fraction = 1.0
            self.message = "done"
        finally:
            self._cleanup()

    def _named(self, message: str) -> str:
        """``message`` with the temporary exports the CLI read named as the user knows them
        (the volume, its mask) and any other path in the run's temporary folder shortened to
        its file name: that folder is deleted when the run ends."""
        work = str(Path(self.workdir))
        message = message.replace(repr(str(Path(work) / "input.nii")),
                                  f"the volume {self._input.GetName()!r}")
        message = message.replace(repr(str(Path(work) / "mask.nii")), "the mask")
        for sep in ("/", "\\"):  # POSIX and Windows paths
            message = message.replace(work + sep, "")
        return message.replace(work, "the run's temporary folder")

    def _failure(self, code: Optional[int], tail: str) -> BaseException:
        # Prefer the CLI's JSON error event; else its "Error: ..." line; else the last line.
        lines = [line for line in self._process.tail if line.strip()]
        message = str((self._process.error or {}).get("message") or "")
        if not message:
            error_lines = [line for line in lines if line.startswith("Error:")]
            message = error_lines[-1][len("Error:"):].strip() if error_lines else (lines[-1] if lines else "")
        message = self._named(message)
        if code == EXIT_BAD_INPUT:
            return MedreconInputError(message or f"medrecon rejected the input (exit status {code}).")
        return ReconstructionError(
            f"medrecon failed with exit status {code}: {message or 'no output'}",
            returncode=code, log_tail=tail,
        )

    def _import_results(self) -> ReconstructionResult:
        done = dict(self._process.done or {})
        output = Path(done.get("output") or self._output_path)
        if Path(self.workdir).resolve() not in output.resolve().parents:
            raise OSError(f"medrecon reported its result at {output}, outside the run's "
                          "temporary folder; it was not loaded (the module writes no file of "
                          "yours)")
        if not output.is_file():
            raise OSError(f"expected the reconstruction at {output}, found nothing")
        std_path = done.get("std")
        if std_path is None and self._parameters.samples > 0:
            # Fallback to the CLI's naming rule: <output stem>_std<suffix> beside the output.
            candidate = _std_path(output)
            std_path = str(candidate) if candidate.is_file() else None
        if self._parameters.samples > 0 and std_path is None:
            raise OSError("samples were asked for but medrecon wrote no uncertainty (std) map")
        method = done.get("method")
        if self._name_from_method and isinstance(method, str) and method.strip():
            # the method as it ran, as in the CLI's file names: "iagan+bp" -> "..._iagan-bp"
            self._output_name = (f"{self._input.GetName()}_{self._parameters.task}_"
                                 f"{method.strip().replace('+', '-')}")
        scene = self._input.GetScene()
        created: List[Any] = []
        seconds = done.get("seconds")
        if not isinstance(seconds, (int, float)):
            seconds = time.monotonic() - self._started
        try:  # all of it or no node: a failure in any step removes what was added
            volume = mrml_io.read_volume(scene, str(output), self._output_name)
            created.append(volume)
            uncertainty = None
            if std_path is not None:
                uncertainty = mrml_io.read_volume(scene, str(std_path), self._output_name + "_std")
                created.append(uncertainty)
            for node, role in ((volume, "reconstruction"), (uncertainty, "uncertainty")):
                if node is None:
                    continue
                mrml_io.match_orientation(node, self._input)
                mrml_io.copy_parent_transform(self._input, node)
                self._annotate(node, role, float(seconds))
                if self._on_volume_imported is not None:
                    self._on_volume_imported(node, role)
        except BaseException:
            for node in created:
                scene.RemoveNode(node)
            raise
        return ReconstructionResult(
            output_volume=volume, uncertainty_volume=uncertainty, seconds=float(seconds),
            command=self.command, info=done,
        )

    def _annotate(self, node: Any, role: str, seconds: float) -> None:
        p = self._parameters
        attributes = {
            "Role": role,
            "Source": self._input.GetID() or "",
            "Task": p.task,
            "Prior": p.prior_name,
            "Method": p.method or "default",
            "Seed": str(p.seed),
            "Seconds": f"{seconds:.3f}",
            "Command": " ".join(self.command),
        }
        for key, value in attributes.items():
            node.SetAttribute(ATTRIBUTE_PREFIX + key, value)

    def _cleanup(self) -> None:
        _remove_tree(self.workdir)


class ReconstructionLogic:
    """Runs ``medrecon`` on volume nodes, without any GUI.

    Args:
        command: The command that runs medrecon, without subcommand; default
            ``[sys.executable, "-m", "medrecon"]`` (the Slicer module passes ``PythonSlicer``).
            Tests pass a stand-in script here.
        env: Environment of the process; ``None`` inherits this one. Default ``None``.
        temp_root: Parent directory of the per-run temporary directories; ``None`` uses the
            system temporary directory. Default ``None``.
        terminate_timeout: Seconds a cancelled process gets to exit before it is killed.
            Default 5.0.
    """

    def __init__(
        self,
        *,
        command: Optional[Sequence[str]] = None,
        env: Optional[Dict[str, str]] = None,
        temp_root: Optional[str] = None,
        terminate_timeout: float = 5.0,
    ) -> None:
        self.command: List[str] = list(command) if command is not None else python_module_command()
        self.env = env
        self.temp_root = temp_root
        self.terminate_timeout = terminate_timeout

    def start(
        self,
        input_volume: Any,
        parameters: Optional[ReconstructionParameters] = None,
        *,
        mask: Any = None,
        output_name: Optional[str] = None,
    ) -> ReconstructionRun:
        """Export the input, start medrecon, return the running job (non-blocking).

        Args:
            input_volume: ``vtkMRMLScalarVolumeNode`` in a scene.
            parameters: What to run; default ``ReconstructionParameters()`` (SR x4, IAGAN).
            mask: Labelmap or segmentation marking the voxels to fill in (inpainting only).
            output_name: Base name of the result node; default ``<input>_<task>_<method>`` with
                the method as the CLI reports it ran (e.g. ``iagan-bp``).

        Returns:
            The running :class:`ReconstructionRun`; poll it or wait for it.

        Raises:
            MedreconInputError: Bad input volume, parameters or mask, or medrecon cannot be
                started. Nothing is left behind.
        """
        parameters = parameters if parameters is not None else ReconstructionParameters()
        if not isinstance(parameters, ReconstructionParameters):
            raise MedreconInputError(
                f"parameters must be a ReconstructionParameters, got {type(parameters).__name__}; "
                "build one with ReconstructionParameters(task=..., ...)."
            )
        parameters.validate()
        mrml_io.check_input_volume(input_volume)
        parameters.check_mask(has_mask=mask is not None)
        workdir = Path(tempfile.mkdtemp(prefix="medrecon-slicer-", dir=self.temp_root))
        try:
            input_path = workdir / "input.nii"
            output_path = workdir / "output.nii"
            mrml_io.write_volume(input_volume, str(input_path))
            mask_path = None
            if mask is not None:
                mask_path = workdir / "mask.nii"
                mrml_io.write_mask(mask, input_volume, str(mask_path))
            args = parameters.cli_arguments(
                str(input_path), str(output_path),
                mask_path=None if mask_path is None else str(mask_path),
            )
            process = CliProcess(self.command + args, env=self.env, cwd=str(workdir))
            process.start()
        except BaseException:
            _remove_tree(workdir)
            raise
        name = output_name or f"{input_volume.GetName()}_{parameters.task}_{parameters.method or 'default'}"
        return ReconstructionRun(
            process=process, workdir=workdir, output_path=output_path, input_volume=input_volume,
            output_name=name, parameters=parameters, on_volume_imported=self.on_volume_imported,
            terminate_timeout=self.terminate_timeout, name_from_method=output_name is None,
        )

    def process(
        self,
        input_volume: Any,
        parameters: Optional[ReconstructionParameters] = None,
        *,
        mask: Any = None,
        output_name: Optional[str] = None,
        timeout: Optional[float] = None,
        progress_callback: Optional[ProgressCallback] = None,
        log_callback: Optional[LogCallback] = None,
    ) -> ReconstructionResult:
        """Run a reconstruction to the end (blocking) and return the new nodes.

        Arguments as in :meth:`start` and :meth:`ReconstructionRun.wait`.

        Raises:
            MedreconInputError: Bad input (checked here, or reported by medrecon).
            ReconstructionError: medrecon failed.
            TimeoutError: ``timeout`` elapsed (the run is cancelled, nothing is created).
        """
        run = self.start(input_volume, parameters, mask=mask, output_name=output_name)
        try:
            return run.wait(timeout=timeout, progress_callback=progress_callback,
                            log_callback=log_callback)
        except BaseException:
            run.cancel()  # e.g. KeyboardInterrupt: never leave a process or temp files behind
            raise

    def on_volume_imported(self, node: Any, role: str) -> None:
        """Hook called for each new node (``role`` ``"reconstruction"`` or ``"uncertainty"``).

        The base logic does nothing; the Slicer module creates display nodes here.
        """


def _std_path(output: Path) -> Path:
    name = output.name
    for suffix in (".nii.gz", ".nrrd", ".nii", ".mha", ".nhdr"):
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)] + "_std" + suffix)
    return output.with_name(output.stem + "_std" + output.suffix)


def _remove_tree(path: Path) -> None:
    # Windows may hold a file a moment after the child exits: retry briefly.
    for attempt in range(5):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 4:
                shutil.rmtree(path, ignore_errors=True)
                return
            time.sleep(0.1 * (attempt + 1))
