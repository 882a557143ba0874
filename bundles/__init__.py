"""MONAI bundles of the shipped priors (installed as package data ``medrecon.bundles``)."""
