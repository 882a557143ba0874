"""Write a confirmation image list: held-out images used neither for the report nor for tuning.

The defaults are chosen on validation images (``scripts/tune_defaults.py``: ``--n`` evenly
spaced held-out images that are not among the report's test images). A larger set of other
held-out images then checks a close result without touching either. Usage::

    python scripts/confirm_set.py --held-out docs/results/chest_xray_fold0_held_out.txt \\
        --n 40 --exclude-validation 6,16 --out docs/results/chest_xray_sr4_confirm/images.txt
    medrecon eval --prior chest_xray --task sr --scale 4 --methods lanczos,lanczos-bp,iagan-bp \\
        --images DATA/chest_xray_kermany --folds docs/results/chest_xray_sr4_confirm/images.txt \\
        --fold 0 --seed 0 --device cpu --out docs/results/chest_xray_sr4_confirm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_defaults import evenly_spaced, validation_split  # noqa: E402


def confirmation_set(held_out: list[str], *, n: int, test_limit: int,
                     validation_sizes: list[int]) -> list[str]:
    """``n`` evenly spaced held-out ids outside the test set and every validation set."""
    test, _ = validation_split(held_out, test_limit=test_limit, n=0)
    used = set(test)
    for k in validation_sizes:
        used |= set(validation_split(held_out, test_limit=test_limit, n=k)[1])
    rest = [x for x in sorted(held_out) if x not in used]
    if n > len(rest):
        raise SystemExit(f"--n {n} is more than the {len(rest)} unused held-out images.")
    return evenly_spaced(rest, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-out", required=True, type=Path, help="text list of held-out image paths")
    ap.add_argument("--n", type=int, default=40, help="images [40]")
    ap.add_argument("--test-limit", type=int, default=8, help="images the report uses [8]")
    ap.add_argument("--exclude-validation", default="6,16",
                    help="sizes of the validation sets used for tuning [6,16]")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    if a.out.resolve() == a.held_out.resolve():
        ap.error(f"--out {a.out} is the --held-out list; choose another file.")
    if a.out.exists() and not a.out.read_text(errors="replace").startswith("# confirmation images:"):
        ap.error(f"--out {a.out} exists and this script did not write it; choose another file.")
    held = [ln.split("#", 1)[0].strip() for ln in a.held_out.read_text().splitlines()]
    held = [h for h in held if h]
    sizes = [int(v) for v in a.exclude_validation.split(",") if v.strip()]
    ids = confirmation_set(held, n=a.n, test_limit=a.test_limit, validation_sizes=sizes)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(f"# confirmation images: {len(ids)} of {a.held_out.name}, disjoint from the "
                     f"{a.test_limit} test images and the validation sets of size {sizes}\n"
                     + "".join(f"{v}\n" for v in ids))
    print(f"wrote {a.out} ({len(ids)} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
