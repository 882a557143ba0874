"""Move volumes between MRML nodes and NIfTI files, geometry included.

Written against the MRML API only (``vtkMRMLScene``, ``vtkMRMLScalarVolumeNode``,
``vtkMRMLVolumeArchetypeStorageNode``, ``vtkSlicerSegmentationsModuleLogic``), so the same code
runs inside 3D Slicer and with the ``slicer-core`` wheel from PyPI. Reading and writing go through
Slicer's own ITK-based archetype storage node, which maps the node's IJK->RAS matrix to the NIfTI
qform/sform (voxel -> RAS+ mm, the convention medrecon and nibabel use), so spacing, origin and a
rotated direction survive the round trip.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import contextlib

import numpy as np
import vtk
from vtkmodules.util import numpy_support

import slicer

from .errors import MedreconInputError

#: How closely two grids must agree (mm / direction cosines) to count as the same grid.
GEOMETRY_ATOL = 1e-4


def ijk_to_ras(node: Any) -> np.ndarray:
    """The node's 4x4 IJK->RAS matrix as a float64 array (parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def dimensions(node: Any) -> tuple:
    """Voxel dimensions ``(I, J, K)`` of a volume node, ``()`` when it holds no image."""
    image = node.GetImageData()
    return () if image is None else tuple(image.GetDimensions())


def same_grid(a: Any, b: Any, *, atol: float = GEOMETRY_ATOL) -> bool:
    """Whether two volume nodes share dimensions and IJK->RAS matrix (within ``atol``)."""
    return dimensions(a) == dimensions(b) and np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=atol)


def check_input_volume(node: Any) -> None:
    """Refuse what medrecon cannot reconstruct, with a message saying how to fix it.

    Args:
        node: The candidate input.

    Raises:
        MedreconInputError: ``None``, not a scalar volume, a labelmap, not in a scene, no image
            data, several components (RGB/vector), or an empty grid.
    """
    if node is None:
        raise MedreconInputError(
            "No input volume: got None; expected a vtkMRMLScalarVolumeNode holding an image. "
            "Load a scan and select it as Input volume."
        )
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise MedreconInputError(
            f"Input {node.GetName()!r} is a {node.GetClassName()}; expected a scalar (grayscale) "
            "volume, not a labelmap, vector or tensor volume. Select the scan itself."
        )
    if node.GetScene() is None:
        raise MedreconInputError(
            f"Input {node.GetName()!r} is not in an MRML scene; add it to the scene first "
            "(scene.AddNode(node)) so the result can be added beside it."
        )
    image = node.GetImageData()
    if image is None:
        raise MedreconInputError(
            f"Input {node.GetName()!r} holds no image data; expected a loaded volume. "
            "Load the scan again or pick another volume."
        )
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise MedreconInputError(
            f"Input {node.GetName()!r} has {components} components per voxel; expected 1 "
            "(grayscale). Convert it first (e.g. Vector to Scalar Volume module)."
        )
    if min(image.GetDimensions()) < 1 or image.GetNumberOfPoints() == 0:
        raise MedreconInputError(
            f"Input {node.GetName()!r} has dimensions {image.GetDimensions()}; expected a "
            "non-empty grid."
        )


def write_volume(node: Any, path: str) -> None:
    """Write a volume node (image + IJK->RAS geometry) to a NIfTI/NRRD file.

    Args:
        node: Scalar or labelmap volume node.
        path: Target file; the format comes from the suffix (``.nii``, ``.nii.gz``, ``.nrrd``).

    Raises:
        OSError: The storage node could not write the file.
    """
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(str(path).endswith(".gz"))
    if not storage.WriteData(node):
        raise OSError(f"Slicer could not write {node.GetName()!r} to {path}")


def read_volume(scene: Any, path: str, name: str, *, hidden: bool = False) -> Any:
    """Read an image file into a new ``vtkMRMLScalarVolumeNode`` added to ``scene``.

    The storage node used for reading is dropped afterwards: the file is temporary, and a
    node without storage node makes Slicer ask where to save it.

    Args:
        scene: Scene that receives the node.
        path: File to read (anything Slicer's archetype reader handles, e.g. NIfTI).
        name: Base name of the node; made unique within the scene.
        hidden: Hide the node from node selectors and the data tree. Default False.

    Returns:
        The new node, with image data and geometry from the file.

    Raises:
        OSError: The file could not be read (no node is left in the scene).
    """
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    # Read a single file, never a numbered series that happens to lie beside it.
    storage.SetSingleFile(1)
    ok = storage.ReadData(node)
    if not ok or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise OSError(f"Slicer could not read the medrecon output {path}")
    node.SetHideFromEditors(bool(hidden))
    return node


def directions(node: Any) -> np.ndarray:
    """The node's 3x3 IJK->RAS direction matrix (unit columns)."""
    out = np.zeros((3, 3))
    node.GetIJKToRASDirections(out)
    return out


def match_orientation(node: Any, reference: Any, *, atol: float = 1e-3) -> bool:
    """Re-index ``node`` so that its axes point the way ``reference``'s do, if they are flipped.

    Slicer's archetype reader flips the K axis of a NIfTI file whose direction matrix is
    left-handed (common for scanner data). The physical image is unchanged, but the voxel order
    then differs from the input's. This undoes such flips: each axis whose direction is the
    negative of the reference's is reversed in the image, and the origin moved to the other
    end, so that every voxel keeps its physical position.

    Args:
        node: Volume read from the medrecon output.
        reference: The input volume.
        atol: Tolerance on the direction cosines.

    Returns:
        Whether any axis was flipped (``False`` also when the directions differ otherwise,
        e.g. by a permutation, which is left as read).
    """
    d_node, d_ref = directions(node), directions(reference)
    signs = np.sign(np.einsum("ij,ij->j", d_node, d_ref))
    if np.any(signs == 0) or not np.allclose(d_node * signs, d_ref, atol=atol) or np.all(signs > 0):
        return False
    image = node.GetImageData()
    dims = np.array(image.GetDimensions())  # (I, J, K)
    spacing = np.array(node.GetSpacing())
    scalars = image.GetPointData().GetScalars()
    array = numpy_support.vtk_to_numpy(scalars).reshape(
        dims[2], dims[1], dims[0], scalars.GetNumberOfComponents()
    )
    origin = np.array(node.GetOrigin())
    for axis in np.flatnonzero(signs < 0):  # axis 0 = I, stored as the last array axis
        array = np.flip(array, axis=2 - axis)
        origin = origin + d_node[:, axis] * spacing[axis] * (dims[axis] - 1)
    flipped = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(array).reshape(-1, array.shape[-1]), deep=True,
        array_type=scalars.GetDataType(),
    )
    flipped.SetName(scalars.GetName())
    new_image = vtk.vtkImageData()
    new_image.SetDimensions(*dims)
    new_image.GetPointData().SetScalars(flipped)
    node.SetAndObserveImageData(new_image)
    node.SetIJKToRASDirections(d_node * signs)
    node.SetOrigin(*origin)
    return True


@contextlib.contextmanager
def _temporary_node(scene: Any, class_name: str) -> Iterator[Any]:
    """A hidden node that is removed from the scene however the block ends."""
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName("MedReconTemporary"))
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)
    try:
        yield node
    finally:
        display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(node)


def mask_array(mask: Any, reference: Any) -> np.ndarray:
    """A binary mask on the reference grid, as a ``(K, J, I)`` uint8 array (1 = voxel to fill).

    Args:
        mask: ``vtkMRMLLabelMapVolumeNode`` (nonzero voxels mark the region) or
            ``vtkMRMLSegmentationNode`` (the union of all its segments marks the region). A
            labelmap on another grid, and every segmentation, is resampled onto the
            reference grid by Slicer's segmentation logic (nearest neighbour); so is a
            labelmap on the reference's grid under another parent transform (it marks other
            places in the world).
        reference: The input volume whose grid the mask must share.

    Returns:
        uint8 array in NumPy (slice, row, column) = (K, J, I) order.

    Raises:
        MedreconInputError: Unsupported node type, an empty segmentation, or a mask without
            any marked voxel on the reference grid.
    """
    if mask is None or not (
        mask.IsA("vtkMRMLLabelMapVolumeNode") or mask.IsA("vtkMRMLSegmentationNode")
    ):
        got = "None" if mask is None else mask.GetClassName()
        raise MedreconInputError(
            f"Invalid mask: got {got}; expected a labelmap volume or a segmentation marking the "
            "voxels to fill in. Paint them in the Segment Editor and select that segmentation."
        )
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    scene = reference.GetScene()
    if (mask.IsA("vtkMRMLLabelMapVolumeNode") and same_grid(mask, reference)
            and mask.GetTransformNodeID() == reference.GetTransformNodeID()):
        labels = _array_kji(mask)  # voxel for voxel: the same grid in the same place
    elif mask.IsA("vtkMRMLLabelMapVolumeNode"):
        with _temporary_node(scene, "vtkMRMLSegmentationNode") as segmentation, \
                _temporary_node(scene, "vtkMRMLLabelMapVolumeNode") as resampled:
            if not logic.ImportLabelmapToSegmentationNode(mask, segmentation):
                raise MedreconInputError(f"Cannot convert labelmap {mask.GetName()!r} to segments.")
            labels = _export_segments(logic, segmentation, resampled, reference, mask.GetName())
    else:
        with _temporary_node(scene, "vtkMRMLLabelMapVolumeNode") as resampled:
            labels = _export_segments(logic, mask, resampled, reference, mask.GetName())
    binary = (labels != 0).astype(np.uint8)
    if not binary.any():
        raise MedreconInputError(
            f"Mask {mask.GetName()!r} marks no voxel inside input {reference.GetName()!r}; "
            "expected at least one voxel to fill in. Paint the region to inpaint on this volume."
        )
    return binary


def _export_segments(logic: Any, segmentation: Any, labelmap: Any, reference: Any, name: str) -> np.ndarray:
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    if ids.GetNumberOfValues() == 0:
        raise MedreconInputError(
            f"Mask {name!r} has no segment (or no nonzero voxel); expected at least one painted "
            "region. Paint the region to inpaint in the Segment Editor."
        )
    if not logic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, reference):
        raise MedreconInputError(
            f"Cannot resample mask {name!r} onto the grid of {reference.GetName()!r}."
        )
    if not same_grid(labelmap, reference):
        raise MedreconInputError(
            f"Mask {name!r} could not be brought onto the grid of {reference.GetName()!r} "
            f"(got dimensions {dimensions(labelmap)}, expected {dimensions(reference)})."
        )
    return _array_kji(labelmap)


def _array_kji(node: Any) -> np.ndarray:
    image = node.GetImageData()
    i, j, k = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.asarray(flat).reshape(k, j, i)


def write_mask(mask: Any, reference: Any, path: str) -> None:
    """Write the binary mask of ``mask`` on the grid of ``reference`` to ``path``.

    The file is a uint8 labelmap with 1 on the voxels to fill in and the reference's geometry,
    which is what ``medrecon inpaint --mask`` expects (nonzero = missing).

    Args:
        mask: Labelmap or segmentation node (see :func:`mask_array`).
        reference: The input volume.
        path: Target NIfTI file.
    """
    binary = mask_array(mask, reference)
    k, j, i = binary.shape
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    scalars = numpy_support.numpy_to_vtk(binary.reshape(-1), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetAndObserveImageData(image)
    node.CopyOrientation(reference)  # spacing, origin and directions of the input
    write_volume(node, path)


def copy_parent_transform(source: Any, target: Any) -> None:
    """Put ``target`` under the same parent transform as ``source`` (if any)."""
    transform_id: Optional[str] = source.GetTransformNodeID()
    if transform_id:
        target.SetAndObserveTransformNodeID(transform_id)
