"""Build shim: ships the repository's top-level ``bundles/`` as package data ``medrecon.bundles``.

Everything else lives in pyproject.toml. The MONAI bundles stay at the repository's top level
(the project layout is fixed) and are found by name after a normal ``pip install`` through
``importlib.resources.files("medrecon.bundles")``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["medrecon", "medrecon.*"]) + ["medrecon.bundles"],
    package_dir={"medrecon.bundles": "bundles"},
    package_data={"medrecon": ["data/*", "data/**/*"], "medrecon.bundles": ["**/*"]},
    include_package_data=False,
    # Outputs of `monai.bundle run` left inside a bundle folder must not end up in a wheel.
    exclude_package_data={"medrecon.bundles": ["*/eval/*", "*/eval/**/*"]},
)
