"""medrecon as a MONAI plugin: MetaTensors in and out, transforms, an Inferer.

* :class:`Reconstruct` / :class:`Reconstructd`: the reconstruction (the same pipeline as the
  CLI) as an array / dictionary transform for a ``Compose``.
* :class:`SimulateDegradation` / :class:`SimulateDegradationd`: seeded degradations at the
  image's native resolution (k-space with ``monai.apps.reconstruction``'s keys).
* :class:`IntensityWindowd`: the generator-space intensity window, invertible (``Invertd``).
* :class:`ReconstructionInferer`: the solver as the inferer of a ``SupervisedEvaluator``.
* :class:`Reconstructor`: the same as an ``nn.Module`` (degraded scans ``(B, 1, H, W)`` ->
  reconstructions), a bundle's ``reconstructor`` id for ``verify_net_in_out``.
* :class:`MedreconReader`: medrecon's readers (DICOM series selection, MONOCHROME1,
  multi-frame, size bounds) for ``LoadImage(reader=...)``.
* :class:`MedreconDicomWriter`: the derived-DICOM writer for ``SaveImage(output_ext=".dcm")``
  (registered for ``.dcm`` on import); :class:`MedreconNiftiWriter`,
  :class:`MedreconRasterWriter` (PNG / TIFF), :class:`MedreconNumpyWriter`: ``SaveImage``
  writers with medrecon's format rules (what ``reconstruct_file`` writes with).
* :func:`bundle_datalist`, :func:`bundle_writer`, :func:`report_input_errors`: what the
  shipped bundles' configs call (inputs read and outputs checked before any work, results
  written complete and never over another program's file, bad input as one line, exit 2).
* :func:`to_medical_image`: MetaTensor / MedicalImage / array conversion.

See ``docs/monai.md``.
"""

from medrecon.monai.bundle import (
    bundle_datalist,
    bundle_flag,
    bundle_device,
    bundle_writer,
    report_input_errors,
)
from medrecon.monai.convert import record_operation, to_medical_image
from medrecon.monai.inferer import ReconstructionInferer
from medrecon.monai.network import Reconstructor
from medrecon.monai.reader import MedreconReader
from medrecon.monai.writer import (
    MedreconDicomWriter,
    MedreconNiftiWriter,
    MedreconNumpyWriter,
    MedreconRasterWriter,
)
from medrecon.monai.transforms import (
    IntensityWindowd,
    Reconstruct,
    Reconstructd,
    SimulateDegradation,
    SimulateDegradationd,
)

__all__ = [
    "IntensityWindowd",
    "MedreconDicomWriter",
    "MedreconNiftiWriter",
    "MedreconNumpyWriter",
    "MedreconRasterWriter",
    "MedreconReader",
    "Reconstruct",
    "Reconstructd",
    "ReconstructionInferer",
    "Reconstructor",
    "SimulateDegradation",
    "SimulateDegradationd",
    "bundle_datalist",
    "bundle_flag",
    "bundle_device",
    "bundle_writer",
    "record_operation",
    "report_input_errors",
    "to_medical_image",
]


def _register_dicom_writer() -> None:
    """Make ``SaveImage(output_ext=".dcm")`` use :class:`MedreconDicomWriter` first."""
    from monai.data import image_writer
    from monai.data.image_writer import SUPPORTED_WRITERS, register_writer

    if not SUPPORTED_WRITERS:  # MONAI fills its table lazily: fill it first, then add ours
        image_writer.init()
    current = tuple(w for w in SUPPORTED_WRITERS.get("dcm", ()) if w is not MedreconDicomWriter)
    register_writer("dcm", MedreconDicomWriter, *current)


_register_dicom_writer()
