"""Losses of ColorMedGAN as small functions returning scalars or named terms.

adversarial.py (least squares), cycle.py, gray_edge.py (luma and Laplacian edge losses), perceptual.py (VGG
identity loss from a local weights file), objective.py (the cycle's images and both objectives, assembled once);
segmentation.py: S's pretraining loss (Dice + cross-entropy) and its hard-Dice counts.
"""
