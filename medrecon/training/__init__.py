"""StyleGAN2 training, patient-wise cross-validation folds and export of priors into bundles.

* :mod:`medrecon.training.folds`   ``make_folds`` / ``xray_folds`` / ``brain_folds``,
  ``save_folds`` / ``load_folds``, ``ImageFolderDataset``, ``read_training_image``,
  ``pack_dataset`` (training-resolution copy of a data folder, same names and folds).
* :mod:`medrecon.training.augment` ``diff_augment`` (DiffAugment for grayscale images).
* :mod:`medrecon.training.loop`    ``TrainConfig``, ``Trainer`` (non-saturating loss, lazy R1,
  EMA, fp16 blocks on CUDA, DDP through ``torch.distributed``, resumable checkpoints, graceful
  stop on SIGINT/SIGTERM), ``read_checkpoint``, ``slim_checkpoint`` (portable fp16 copy).
* :mod:`medrecon.training.runner`  ``train_run`` (folds -> dataset -> trainer; torchrun aware).
* :mod:`medrecon.training.export`  ``export_checkpoint`` (EMA generator -> prior in ``models/``).
* :mod:`medrecon.training.cli`     the ``medrecon train run|folds|export|slim|pack`` click group.
"""

from medrecon.training.augment import diff_augment
from medrecon.training.export import export_checkpoint
from medrecon.training.folds import (
    FoldAssignment,
    ImageFolderDataset,
    brain_folds,
    load_folds,
    make_folds,
    pack_dataset,
    read_training_image,
    save_folds,
    xray_folds,
)
from medrecon.training.loop import TrainConfig, Trainer, read_checkpoint, slim_checkpoint
from medrecon.training.runner import train_run

__all__ = [
    "FoldAssignment",
    "ImageFolderDataset",
    "TrainConfig",
    "Trainer",
    "brain_folds",
    "diff_augment",
    "export_checkpoint",
    "load_folds",
    "make_folds",
    "pack_dataset",
    "read_checkpoint",
    "read_training_image",
    "save_folds",
    "slim_checkpoint",
    "train_run",
    "xray_folds",
]
