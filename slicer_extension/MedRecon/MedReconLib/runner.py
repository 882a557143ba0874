"""Run the ``medrecon`` command line as a child process and follow its JSON progress stream.

Nothing here knows about MRML or Qt: this module builds the command line from a
:class:`ReconstructionParameters`, starts the process in its own process group, reads its
stdout/stderr on two daemon threads, and hands parsed :class:`Event` objects to whoever calls
:meth:`CliProcess.poll` (in Slicer: a ``QTimer`` on the main thread, so that MRML is only ever
touched from the main thread). Cancelling terminates the whole process group, so workers that
the CLI may spawn die with it.

The event protocol is the one ``medrecon <task> ... --log-format json`` writes to stderr, one JSON
object per line::

    {"event": "progress", "fraction": 0.37, "message": "slice 3/10, step 120/300"}
    {"event": "done", "output": "/tmp/.../output.nii", "std": null, "seconds": 12.5}
    {"event": "error", "message": "...", "exit_code": 2}
    {"event": "warning", "message": "scan.png is a colour image; it was converted to grey ..."}

Every other line (warnings, the CLI's one-line ``Error: ...`` message, a traceback) is passed on
as a ``log`` event and the last lines are kept for error reports.
"""

from __future__ import annotations

import collections
import json
import math
import numbers
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from .errors import MedreconInputError

#: Task names understood by ``medrecon`` (its subcommands), in the order the panel lists them.
TASKS: Tuple[str, ...] = ("sr", "inpaint", "mri", "deblur", "denoise")

#: Human-readable task labels for user interfaces.
TASK_LABELS: Dict[str, str] = {
    "sr": "Super-resolution",
    "inpaint": "Inpainting (mask or segmentation)",
    "mri": "MRI undersampling (simulated)",
    "deblur": "Deblurring",
    "denoise": "Denoising",
}

#: Methods offered in the panel: the generative solvers first, then the classical baselines.
#: The CLI is the authority on what it accepts; other names are passed through unchanged.
METHODS: Tuple[str, ...] = (
    "iagan", "brgm", "csgm", "bicubic", "zero_filled", "tv", "biharmonic", "wiener",
)

#: Methods that draw posterior samples (``samples > 0``; ``brgm`` runs as its variational
#: form, as in the CLI).
SAMPLING_METHODS: Tuple[str, ...] = ("brgm", "brgm_variational")

#: The CLI's bound of ``--noise-sigma`` (``medrecon.limits.MAX_NOISE_SIGMA``; a test keeps
#: the two equal): generator units, the whole intensity window.
MAX_NOISE_SIGMA = 2.0

#: Values of ``medrecon --device``.
DEVICES: Tuple[str, ...] = ("auto", "cuda", "cpu")

#: Priors shipped with medrecon (a prior may also be given as a path to a prior directory/file).
SHIPPED_PRIORS: Tuple[str, ...] = ("brain_mri", "chest_xray")

#: The prior each task uses when none is chosen: the CLI's own defaults (``medrecon.cli``'s
#: ``DEFAULT_PRIOR``; a test keeps the two equal), so the module runs what ``medrecon TASK``
#: runs.
DEFAULT_PRIOR: Dict[str, str] = {"sr": "chest_xray", "inpaint": "chest_xray",
                                 "deblur": "chest_xray", "denoise": "chest_xray",
                                 "mri": "brain_mri"}


#: CLI options the module sets itself and ``extra_args`` may not: the output (a temporary
#: file the module loads; ``-o`` there would write, with the module's ``--overwrite``, over a
#: file of the user's), the overwrite flag, the log format its progress parser reads, the mask.
MODULE_OWNED_OPTIONS = ("-o", "--output", "--overwrite", "--log-format", "--mask", "-q",
                        "--quiet")


@dataclass(frozen=True)
class ReconstructionParameters:
    """Everything the ``medrecon`` CLI needs besides the file paths.

    Field names follow :func:`medrecon.pipeline.reconstruct`; each maps to one CLI option.

    Attributes:
        task: One of :data:`TASKS` (the CLI subcommand). Default ``"sr"``.
        prior: Name of a shipped prior (``"brain_mri"``, ``"chest_xray"``) or a path to a prior
            saved by ``medrecon.priors.save_prior``; ``None``: the CLI's prior for the task
            (:data:`DEFAULT_PRIOR`). Default ``None``.
        method: Solver or baseline name, e.g. ``"iagan"``, ``"brgm"``, ``"csgm"``, ``"bicubic"``;
            ``None`` lets medrecon choose the prior's default for the task, as the CLI does
            without ``--method``. Default ``None``.
        steps: Optimisation steps per slice; ``None`` keeps the method's default. Default ``None``.
        ensemble: IAGAN: independent runs per slice whose images are averaged (``--ensemble``;
            1 is the fastest); ``None`` keeps the per-task default (an SR volume of thin
            slices: one run per slice, made coherent across slices). Default ``None``.
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``. Default ``"auto"``.
        seed: Seed of every random choice (latent restarts, simulated masks, noise). Default 0.
        samples: Posterior samples to draw for an uncertainty (std) map; 0 draws none. Default 0.
        scale: Super-resolution factor (task ``"sr"`` only). Default 4.
        acceleration: MRI undersampling factor (task ``"mri"`` only). Default 4.
        center_fraction: Fraction of fully sampled central k-space lines (``"mri"``). Default 0.08.
        noise_sigma: Standard deviation of the measurement noise, in generator units ([-1, 1]
            images); 0 assumes noiseless measurements. Default 0.0.
        extra_args: Further CLI arguments appended verbatim (e.g. ``("--no-bp", "--plane",
            "axial")``). Default ``()``.
    """

    task: str = "sr"
    prior: Optional[str] = None
    method: Optional[str] = None
    steps: Optional[int] = None
    ensemble: Optional[int] = None
    device: str = "auto"
    seed: int = 0
    samples: int = 0
    scale: int = 4
    acceleration: int = 4
    center_fraction: float = 0.08
    noise_sigma: float = 0.0
    extra_args: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def prior_name(self) -> str:
        """The prior that runs: :attr:`prior`, else the task's (:data:`DEFAULT_PRIOR`)."""
        return self.prior if self.prior is not None else DEFAULT_PRIOR.get(self.task, "")

    def validate(self) -> None:
        """Check every field; raise :class:`MedreconInputError` naming the bad one.

        Raises:
            MedreconInputError: A field has the wrong type or is out of range.
        """
        if self.task not in TASKS:
            raise MedreconInputError(
                f"Unknown task {self.task!r}; expected one of {', '.join(TASKS)}. "
                "Pick the task in the Task selector (or pass task='sr', ...)."
            )
        if self.prior is not None:
            _check_word("prior", self.prior,
                        "a shipped prior name such as 'brain_mri', a path, or None for the task's")
        if self.method is not None:
            _check_word("method", self.method, f"one of {', '.join(METHODS)} or None")
        if self.steps is not None:
            _check_int("steps", self.steps, minimum=1, hint="use None for the method's default")
        if self.ensemble is not None:
            _check_int("ensemble", self.ensemble, minimum=1,
                       hint="use None for the task's default, 1 for one run")
        if self.device not in DEVICES:
            raise MedreconInputError(
                f"Unknown device {self.device!r}; expected one of {', '.join(DEVICES)}. "
                "Use 'auto' to take the GPU when one is available."
            )
        # the CLI's ranges, checked here before the volume is exported and the CLI started
        _check_int("seed", self.seed, minimum=0, maximum=2**63 - 1, hint="0 to 2**63 - 1")
        _check_int("samples", self.samples, minimum=0, hint="0 disables the uncertainty map")
        _check_int("scale", self.scale, minimum=2, maximum=32, hint="e.g. 2, 4 or 8")
        _check_int("acceleration", self.acceleration, minimum=1, maximum=64, hint="e.g. 4 or 8")
        # the CLI refuses --samples with a default that draws none (the shipped priors' IAGAN):
        # name the sampling method here, before the volume is exported
        if self.samples > 0 and self.method not in SAMPLING_METHODS:
            which = "the default method" if self.method is None else f"method {self.method!r}"
            raise MedreconInputError(
                f"Invalid samples: got {self.samples} with {which}, which gives a single "
                f"estimate; expected a sampling method ({', '.join(SAMPLING_METHODS)}) for an "
                "uncertainty map, or samples 0.")
        _check_float("center_fraction", self.center_fraction, low=0.0, high=1.0, open_low=True,
                     open_high=False, hint="e.g. 0.08 for 8% of the k-space lines")
        _check_float("noise_sigma", self.noise_sigma, low=0.0, high=MAX_NOISE_SIGMA,
                     open_low=False, open_high=False,
                     hint="0 for noiseless measurements, at most the whole window")
        if isinstance(self.extra_args, (str, bytes)) or not all(
            isinstance(a, str) for a in self.extra_args
        ):
            raise MedreconInputError(
                f"Invalid extra_args: got {self.extra_args!r}; expected a sequence of strings. "
                "Split a command-line string with shlex.split first."
            )
        owned = sorted({name for a in self.extra_args for name in _owned(a)})
        if owned:
            raise MedreconInputError(
                f"Invalid extra_args: {', '.join(owned)} are set by the module (the output goes "
                "to a new volume node, never to a file of yours; progress needs --log-format "
                "json; the mask comes from the Mask selector). Remove them.")

    def check_mask(self, *, has_mask: bool) -> None:
        """Check that a mask is given exactly when the task needs one.

        Args:
            has_mask: Whether a mask accompanies the run.

        Raises:
            MedreconInputError: Inpainting without a mask, or a mask for another task.
        """
        if self.task == "inpaint" and not has_mask:
            raise MedreconInputError(
                "Inpainting needs a mask: got none; expected a labelmap or segmentation marking "
                "the voxels to fill in. Select one in the Mask selector."
            )
        if self.task != "inpaint" and has_mask:
            raise MedreconInputError(
                f"A mask was given for task {self.task!r}; masks are only used by 'inpaint'. "
                "Clear the mask or choose the inpainting task."
            )

    def cli_arguments(
        self, input_path: str, output_path: str, *, mask_path: Optional[str] = None
    ) -> List[str]:
        """Arguments after ``medrecon`` for one run (validated first).

        Args:
            input_path: The NIfTI written from the input volume.
            output_path: Where the CLI writes the reconstruction.
            mask_path: Mask marking the missing voxels (task ``"inpaint"`` only).

        Returns:
            ``[task, input, "-o", output, options...]``, always with ``--log-format json`` and
            ``--overwrite`` (the output lives in a fresh temporary directory).

        Raises:
            MedreconInputError: Invalid parameters, a missing mask for inpainting or a mask
                given to another task.
        """
        self.validate()
        self.check_mask(has_mask=mask_path is not None)
        args = [self.task, str(input_path), "-o", str(output_path), "--prior", self.prior_name]
        if self.method is not None:
            args += ["--method", self.method]
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        if self.ensemble is not None:
            args += ["--ensemble", str(self.ensemble)]
        args += ["--device", self.device, "--seed", str(self.seed)]
        if self.samples > 0:
            args += ["--samples", str(self.samples)]
        if self.task == "sr":
            args += ["--scale", str(self.scale)]
        elif self.task == "mri":
            # The Slicer volume is an image: undersample it retrospectively.
            args += ["--simulate", "--acceleration", str(self.acceleration),
                     "--center-fraction", repr(float(self.center_fraction))]
        elif self.task == "inpaint":
            args += ["--mask", str(mask_path)]
        if self.noise_sigma > 0:
            args += ["--noise-sigma", repr(float(self.noise_sigma))]
        args += ["--log-format", "json", "--overwrite"]
        args += list(self.extra_args)
        return args


def _owned(arg: str) -> List[str]:
    """The module-owned options ``arg`` sets: ``--name`` / ``--name=value``, and a short
    option alone, with its value attached (``-oPATH``) or in a cluster (``-qo``), as click
    reads them (a bare check of ``-o`` let ``-o/path`` through, and with it the module's
    ``--overwrite`` onto a file of the user's)."""
    if arg.startswith("--"):
        name = arg.split("=", 1)[0]
        return [name] if name in MODULE_OWNED_OPTIONS else []
    if len(arg) < 2 or not arg.startswith("-") or arg[1].isdigit() or arg[1] == ".":
        return []  # a value (a negative number), not an option
    short = {o[1] for o in MODULE_OWNED_OPTIONS if len(o) == 2}
    return [f"-{c}" for c in arg[1:] if c in short][:1] or []


def _check_word(name: str, value: Any, expected: str) -> None:
    if not isinstance(value, str) or not value.strip() or value.startswith("-"):
        raise MedreconInputError(
            f"Invalid {name}: got {value!r}; expected {expected} (a non-empty string that does "
            f"not start with '-')."
        )


def _check_int(name: str, value: Any, *, minimum: int, hint: str,
               maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise MedreconInputError(
            f"Invalid {name}: got {value!r}; expected an integer {bound} ({hint})."
        )


def _check_float(name: str, value: Any, *, low: float, high: float, open_low: bool,
                 open_high: bool, hint: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise MedreconInputError(
            f"Invalid {name}: got {value!r}; expected a finite number in {lo}{low}, {high}{hi} ({hint})."
        )


@dataclass(frozen=True)
class Event:
    """One thing the child process said.

    Attributes:
        kind: ``"progress"``, ``"done"``, ``"error"`` (parsed from JSON lines on stderr) or
            ``"log"`` (any other line, from stdout or stderr).
        message: Progress or error message, or the log line (without its newline).
        fraction: Progress in [0, 1] for ``"progress"`` events, else ``None``.
        data: The parsed JSON object for ``"progress"``/``"done"``/``"error"`` events, else ``{}``.
        stream: ``"stdout"`` or ``"stderr"``.
    """

    kind: str
    message: str
    fraction: Optional[float] = None
    data: Dict[str, Any] = field(default_factory=dict)
    stream: str = "stderr"


def parse_line(line: str, *, stream: str = "stderr") -> Event:
    """Turn one output line into an :class:`Event`.

    JSON objects with ``"event"`` ``"progress"``, ``"done"`` or ``"error"`` become those events (a progress
    fraction outside [0, 1] is clipped; a missing or non-numeric one gives ``None``); a
    ``"warning"`` object becomes a ``"log"`` event ``"Warning: <message>"``; anything else,
    including malformed JSON, is a ``"log"`` event carrying the line unchanged.

    Args:
        line: One line of the child's output, with or without the trailing newline.
        stream: Which pipe it came from.

    Returns:
        The event.
    """
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("event") in ("progress", "done", "error"):
            kind = data["event"]
            fraction = data.get("fraction")
            if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and math.isfinite(fraction):
                fraction = min(1.0, max(0.0, float(fraction)))
            else:
                fraction = 1.0 if kind == "done" else None
            message = "done" if kind == "done" else str(data.get("message", ""))
            return Event(kind=kind, message=message, fraction=fraction, data=data, stream=stream)
        if isinstance(data, dict) and data.get("event") == "warning":
            return Event(kind="log", message=f"Warning: {data.get('message', '')}", data=data,
                         stream=stream)
    return Event(kind="log", message=text, stream=stream)


class CliProcess:
    """A ``medrecon`` child process whose output is read on background threads.

    Call :meth:`poll` regularly (it never blocks) to receive the events seen since the last
    call; :attr:`finished` turns true once the process has exited and both pipes are drained.

    Args:
        command: Full argument vector, e.g. ``[python, "-m", "medrecon", "sr", ...]``.
        env: Environment of the child; ``None`` inherits ours. ``PYTHONUNBUFFERED=1`` is
            always set so that progress arrives as it happens.
        cwd: Working directory of the child; ``None`` keeps ours.
        tail_lines: How many non-JSON lines to keep for error reports. Default 40.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        tail_lines: int = 40,
    ) -> None:
        if not command or not all(isinstance(c, str) for c in command):
            raise MedreconInputError(
                f"Invalid command: got {command!r}; expected a non-empty list of strings such as "
                "[sys.executable, '-m', 'medrecon']."
            )
        self.command: List[str] = list(command)
        self._env = dict(os.environ if env is None else env)
        self._env["PYTHONUNBUFFERED"] = "1"
        self._env.setdefault("PYTHONIOENCODING", "utf-8")
        self._cwd = cwd
        self._queue: "queue.Queue[Tuple[str, Optional[str]]]" = queue.Queue()
        self._open_streams = 0
        self._threads: List[threading.Thread] = []
        self._proc: Optional[subprocess.Popen] = None
        self.tail: Deque[str] = collections.deque(maxlen=tail_lines)
        self.done: Optional[Dict[str, Any]] = None
        self.error: Optional[Dict[str, Any]] = None
        self._exited_at: Optional[float] = None
        self.cancelled = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child in a new process group/session.

        Raises:
            MedreconInputError: The executable does not exist or cannot be run.
            RuntimeError: :meth:`start` was already called.
        """
        if self._proc is not None:
            raise RuntimeError("CliProcess.start() called twice")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (
                subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            )
        else:
            kwargs["start_new_session"] = True
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **kwargs,
            )
        except OSError as exc:
            raise MedreconInputError(
                f"Cannot start {self.command[0]!r}: {exc}. Expected a Python interpreter with "
                "medrecon installed (in Slicer: PythonSlicer); install medrecon or set the command."
            ) from exc
        for name, pipe in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            thread = threading.Thread(
                target=self._pump, args=(name, pipe), name=f"medrecon-{name}", daemon=True
            )
            self._open_streams += 1
            thread.start()
            self._threads.append(thread)

    def _pump(self, name: str, pipe: Any) -> None:
        try:
            for line in iter(pipe.readline, ""):
                self._queue.put((name, line))
        except (OSError, ValueError):  # pipe closed under us by a cancel
            pass
        finally:
            self._queue.put((name, None))

    @property
    def pid(self) -> Optional[int]:
        """Process id of the child, ``None`` before :meth:`start`."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        """Exit status once the child has exited, else ``None``."""
        return None if self._proc is None else self._proc.poll()

    #: Seconds to keep reading after the child exited while a leftover process of its group
    #: still holds the pipes open; then that group is killed and the run counts as finished.
    PIPE_GRACE_SECONDS = 2.0

    @property
    def finished(self) -> bool:
        """True once the child has exited and its output has been read.

        Never blocks. If a process the child left behind keeps the pipes open, the run counts as
        finished :attr:`PIPE_GRACE_SECONDS` after the child's exit (see :meth:`poll`).
        """
        if self._proc is None or self._proc.poll() is None:
            return False
        if self._open_streams == 0 and self._queue.empty():
            return True
        return self._exited_at is not None and (
            time.monotonic() - self._exited_at > self.PIPE_GRACE_SECONDS and self._queue.empty()
        )

    def poll(self) -> List[Event]:
        """Events seen since the last call; never blocks.

        Returns:
            Parsed events in arrival order (stdout and stderr interleaved as read).
        """
        events: List[Event] = []
        while True:
            try:
                stream, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open_streams -= 1
                continue
            event = parse_line(line, stream=stream)
            if event.kind == "done":
                self.done = event.data
            elif event.kind == "error":
                self.error = event.data
            elif event.kind == "log" and event.message.strip():
                self.tail.append(event.message)
            events.append(event)
        if self._proc is not None and self._exited_at is None and self._proc.poll() is not None:
            self._exited_at = time.monotonic()
        if (self._open_streams > 0 and self._exited_at is not None
                and time.monotonic() - self._exited_at > self.PIPE_GRACE_SECONDS):
            self._signal_group(graceful=False)  # orphans of the child hold the pipes: end them
        return events

    def terminate(self, *, timeout: float = 5.0) -> None:
        """Stop the child and everything in its process group.

        Sends SIGTERM to the group, waits up to ``timeout`` seconds, then sends SIGKILL
        (Windows: ``taskkill /F /T`` on the process tree). Safe to call on a finished process.

        Args:
            timeout: Seconds to wait for a graceful exit before killing. Default 5.0.
        """
        self.cancelled = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(graceful=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(graceful=False)
                proc.wait(timeout=timeout)
        elif os.name != "nt":
            # The leader is gone; grandchildren it left behind in the group go too.
            self._signal_group(graceful=False)
        for thread in self._threads:
            thread.join(timeout=timeout)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def _signal_group(self, *, graceful: bool) -> None:
        assert self._proc is not None
        pid = self._proc.pid
        if os.name == "nt":
            # Console processes ignore a polite taskkill: end the tree at once.
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            return
        try:
            os.killpg(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, *, timeout: Optional[float] = None, interval: float = 0.05) -> List[Event]:
        """Block until the child finishes; return all events read meanwhile.

        Args:
            timeout: Seconds before giving up (the child is then terminated and
                :class:`TimeoutError` raised); ``None`` waits forever. Default ``None``.
            interval: Polling interval in seconds. Default 0.05.

        Raises:
            TimeoutError: The child ran longer than ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        events: List[Event] = []
        while not self.finished:
            events += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.terminate()
                raise TimeoutError(f"{self.command[0]} did not finish within {timeout} s")
            time.sleep(interval)
        return events + self.poll()


def python_module_command(python: Optional[str] = None) -> List[str]:
    """``[python, "-m", "medrecon"]`` for an interpreter (default: this one).

    Args:
        python: Path of the Python executable; ``None`` uses :data:`sys.executable`.
    """
    return [python or sys.executable, "-m", "medrecon"]
