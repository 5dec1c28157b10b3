"""Instance-aware self-supervised nuclei segmentation: library code of the MONAI bundle."""
